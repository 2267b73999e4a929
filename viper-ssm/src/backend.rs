//! The backend extension trait through which the model runs its hot ops: the selective scan, the causal
//! conv, RMS norms and the Linear products of the decode step.
//!
//! Every method has a tensor-op default body (the [`reference`](crate::reference), or Burn's `linear`
//! for [`SsmBackend::projection`]); CubeCL backends
//! (`CubeBackend<R, F, I, BT>` and its `Fusion` wrapper, i.e. Burn's `Cuda` and `Wgpu` with or without the
//! `fusion` feature) override them with the hand-written kernels of [`kernels`](crate::kernels).

use burn::prelude::*;

/// Inputs of a selective scan over `l` steps (`l = 1` for a decode step).
#[derive(Debug, Clone)]
pub struct ScanInput<B: Backend> {
    /// Conv output `u`, `[b, l, i]`.
    pub u: Tensor<B, 3>,
    /// `dt_proj(dt)` without its bias, `[b, l, i]`.
    pub delta: Tensor<B, 3>,
    /// `dt_proj.bias`, `[i]`, added before the softplus.
    pub delta_bias: Tensor<B, 1>,
    /// `A_log`, `[i, n]`; A = −exp(A_log).
    pub a_log: Tensor<B, 2>,
    /// B, `[b, l, n]`.
    pub b: Tensor<B, 3>,
    /// C, `[b, l, n]`.
    pub c: Tensor<B, 3>,
    /// D skip, `[i]`.
    pub d: Tensor<B, 1>,
    /// Gate z, `[b, l, i]`.
    pub z: Tensor<B, 3>,
    /// State before the first step, `[b, i, n]`.
    pub state: Tensor<B, 3>,
}

/// Outputs of a selective scan.
#[derive(Debug, Clone)]
pub struct ScanOutput<B: Backend> {
    /// Gated output `y ⊙ silu(z)`, `[b, l, i]`, in `u`'s dtype.
    pub y: Tensor<B, 3>,
    /// State after the last step, `[b, i, n]`, in the input state's dtype.
    pub state: Tensor<B, 3>,
}

/// Inputs of a FalconMamba decode step taken straight from x_proj's output (see
/// [`SsmBackend::selective_state_update_dbc`]).
#[derive(Debug, Clone)]
pub struct StepInput<B: Backend> {
    /// Conv output `u`, `[b, l, i]`.
    pub u: Tensor<B, 3>,
    /// x_proj's output `[dt | B | C]`, `[b, l, R + 2N]`, before FalconMamba's weightless norms.
    pub dbc: Tensor<B, 3>,
    /// Epsilon of those norms.
    pub eps: f64,
    /// dt_proj's weight as the loader lays it out, `[R, i]` (no bias).
    pub dt_proj: Tensor<B, 2>,
    /// `dt_proj.bias`, `[i]`, added before the softplus.
    pub delta_bias: Tensor<B, 1>,
    /// `A_log`, `[i, n]`.
    pub a_log: Tensor<B, 2>,
    /// D skip, `[i]`.
    pub d: Tensor<B, 1>,
    /// Gate z, `[b, l, i]`.
    pub z: Tensor<B, 3>,
    /// State before the step, `[b, i, n]`.
    pub state: Tensor<B, 3>,
}

/// Inputs of the causal depthwise conv.
#[derive(Debug, Clone)]
pub struct ConvInput<B: Backend> {
    /// New inputs (`x` branch of `in_proj`), `[b, l, i]`.
    pub x: Tensor<B, 3>,
    /// The last `k` inputs before `x`, `[b, k, i]` (zeros at the start of a sequence).
    pub window: Tensor<B, 3>,
    /// Conv taps, `[i, k]` (PyTorch's `[i, 1, k]` squeezed); tap `k − 1` multiplies the current input.
    pub weight: Tensor<B, 2>,
    /// Conv bias, `[i]`.
    pub bias: Option<Tensor<B, 1>>,
}

/// Inputs of an RMS norm over the last dim (see [`reference::rms_norm`](crate::reference::rms_norm)).
#[derive(Debug, Clone)]
pub struct RmsNormInput<B: Backend> {
    /// Rows to normalise, `[b, l, d]`, any float dtype.
    pub x: Tensor<B, 3>,
    /// Per-column scale `[d]`, if any.
    pub weight: Option<Tensor<B, 1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
    /// `x` is first rounded to this dtype (the model normalises its f32 residual stream in the weight
    /// dtype); the normalised value is rounded to it again before the weight multiplies.
    pub dtype: burn::tensor::DType,
    /// Segment bounds `[s1, s2]`: columns `[0, s1)`, `[s1, s2)` and `[s2, d)` are normalised
    /// separately (`[d, d]` for one segment).
    pub segments: [usize; 2],
}

/// The tensor-op body of [`SsmBackend::add_rms_norm`]: cast both to `stream`, add, then
/// [`SsmBackend::rms_norm`]. Also the kernels' fallback where [`fused_add_norm_applies`] is false.
fn add_then_norm<B: SsmBackend>(
    input: RmsNormInput<B>,
    y: Tensor<B, 3>,
    stream: burn::tensor::DType,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let stream = burn::tensor::FloatDType::from(stream);
    let s = input.x.clone().cast(stream) + y.cast(stream);
    let out = B::rms_norm(RmsNormInput { x: s.clone(), ..input });
    (s, out)
}

/// The tensor-op body of [`SsmBackend::selective_state_update_dbc`], also the kernels' fallback.
fn step_from_dbc<B: SsmBackend>(x: StepInput<B>) -> ScanOutput<B> {
    let n = x.a_log.dims()[1];
    let width = x.dbc.dims()[2];
    let r = width.saturating_sub(2 * n);
    let dtype = x.dbc.dtype();
    let [dt, b, c] =
        B::rms_norm_split(RmsNormInput { x: x.dbc, weight: None, eps: x.eps, dtype, segments: [r, r + n] });
    let dt = dt.cast(burn::tensor::FloatDType::from(x.dt_proj.dtype()));
    let scan =
        ScanInput { u: x.u, delta: dt, delta_bias: x.delta_bias, a_log: x.a_log, b, c, d: x.d, z: x.z, state: x.state };
    B::selective_state_update_projected(scan, x.dt_proj)
}

/// Whether the one-launch residual + norm kernel covers this call: one segment, `y` shaped like `x`.
#[cfg(feature = "cube")]
fn fused_add_norm_applies<B: Backend>(input: &RmsNormInput<B>, y: &Tensor<B, 3>) -> bool {
    let d = input.x.dims()[2];
    input.segments == [d, d] && y.dims() == input.x.dims()
}

impl<B: Backend> RmsNormInput<B> {
    /// The output dtype: `dtype`, or f32 when a weight of another dtype multiplies (PyTorch's promotion).
    pub fn out_dtype(&self) -> burn::tensor::DType {
        match &self.weight {
            Some(w) if w.dtype() != self.dtype => burn::tensor::DType::F32,
            _ => self.dtype,
        }
    }
}

/// A Linear layer through [`SsmBackend::projection`]: Burn's product, or one matrix–vector launch for the
/// decode step on the CubeCL backends.
pub fn linear<B: SsmBackend>(layer: &burn::nn::Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    B::projection(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// A backend that can run the Mamba mixer's sequence ops.
pub trait SsmBackend: Backend {
    /// Selective scan over a sequence, state in and out.
    fn selective_scan(input: ScanInput<Self>) -> ScanOutput<Self> {
        crate::reference::selective_scan(input)
    }

    /// One decode step of the scan (`l = 1`).
    fn selective_state_update(input: ScanInput<Self>) -> ScanOutput<Self> {
        crate::reference::selective_scan(input)
    }

    /// [`selective_state_update`](Self::selective_state_update) with dt_proj folded in: `input.delta` is
    /// the low-rank dt `[b, l, R]` and Δ = `dt · dt_proj` (`[R, I]`, no bias; `delta_bias` is added
    /// inside as usual). CubeCL backends form each channel's Δ inside the scan kernel: one launch less
    /// per layer and decode step.
    fn selective_state_update_projected(input: ScanInput<Self>, dt_proj: Tensor<Self, 2>) -> ScanOutput<Self> {
        let delta = Self::projection(input.delta.clone(), dt_proj, None);
        Self::selective_state_update(ScanInput { delta, ..input })
    }

    /// A FalconMamba decode step from x_proj's output: the weightless RMS norms of dt, B and C
    /// (rounded to `dbc`'s dtype), dt_proj, and the scan step, i.e.
    /// [`rms_norm_split`](Self::rms_norm_split) then
    /// [`selective_state_update_projected`](Self::selective_state_update_projected). CubeCL backends run
    /// it as one launch.
    fn selective_state_update_dbc(input: StepInput<Self>) -> ScanOutput<Self> {
        step_from_dbc(input)
    }

    /// Causal conv + SiLU over a sequence; returns the output and the new window.
    fn causal_conv1d(input: ConvInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        crate::reference::causal_conv1d(input)
    }

    /// Causal conv + SiLU for one token (`l = 1`).
    fn causal_conv1d_update(input: ConvInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        crate::reference::causal_conv1d(input)
    }

    /// A Linear layer, `x · weight (+ bias)` with `weight` `[d_in, d_out]`. CubeCL backends run a
    /// matrix–vector kernel when `x` has at most 8 rows (the decode step) and the weight is laid out as
    /// the loader builds it; on CUDA, inputs of at least 16 rows go through cuBLAS (the `cublas`
    /// module, feature `cuda`, where the library loads), else a split-K product for few output columns
    /// over a long `k` (prefill x_proj); otherwise, and on other backends, Burn's `linear`.
    fn projection(x: Tensor<Self, 3>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, 3> {
        burn::tensor::module::linear(x, weight, bias)
    }

    /// RMS norm of each row (segment-wise), in f32, as transformers computes it. Output dtype: `dtype`,
    /// or f32 when a weight of another dtype multiplies (PyTorch's promotion).
    fn rms_norm(input: RmsNormInput<Self>) -> Tensor<Self, 3> {
        crate::reference::rms_norm(input)
    }

    /// [`rms_norm`](Self::rms_norm) returning its three segments as separate tensors (FalconMamba's dt,
    /// B and C; each segment must be non-empty). CubeCL backends write them as contiguous views of one
    /// buffer, so no slice copies follow.
    fn rms_norm_split(input: RmsNormInput<Self>) -> [Tensor<Self, 3>; 3] {
        let [s1, s2] = input.segments;
        let d = input.x.dims()[2];
        let y = Self::rms_norm(input);
        [y.clone().narrow(2, 0, s1), y.clone().narrow(2, s1, s2 - s1), y.narrow(2, s2, d - s2)]
    }

    /// The residual add fused with the next norm: `s = x + y` in the `stream` dtype (both cast to it),
    /// then [`rms_norm`](Self::rms_norm) of `s` with `input`'s weight, eps, dtype and segments.
    /// Returns `(s, norm(s))`; `input.x` is the stream `h`, `y` the mixer output.
    fn add_rms_norm(
        input: RmsNormInput<Self>,
        y: Tensor<Self, 3>,
        stream: burn::tensor::DType,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        add_then_norm(input, y, stream)
    }
}

#[cfg(feature = "ndarray")]
mod ndarray_impl {
    use burn::backend::ndarray::{FloatNdArrayElement, IntNdArrayElement, NdArrayTensor, QuantElement, SharedArray};
    use burn::backend::NdArray;

    impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> super::SsmBackend for NdArray<E, I, Q>
    where
        NdArrayTensor: From<SharedArray<E>>,
        NdArrayTensor: From<SharedArray<I>>,
    {
    }
}

#[cfg(feature = "cube")]
mod cube_impl {
    //! `SsmBackend` on a CubeCL backend: normalise dtypes where the kernels need pairs to match (a no-op
    //! for a model in one dtype), then launch [`crate::kernels`].
    use burn::prelude::*;
    use burn::tensor::{DType, FloatDType, TensorPrimitive};
    use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

    use super::{ConvInput, RmsNormInput, ScanInput, ScanOutput, SsmBackend, StepInput};
    use crate::kernels;

    /// The conv's (output, new window).
    type Pair<B> = (Tensor<B, 3>, Tensor<B, 3>);

    fn like<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
        if t.dtype() == dtype {
            t
        } else {
            t.cast(FloatDType::from(dtype))
        }
    }

    fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> B::FloatTensorPrimitive {
        t.into_primitive().tensor()
    }

    fn wrap<B: Backend, const D: usize>(p: B::FloatTensorPrimitive) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(p))
    }

    fn scan<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        x: ScanInput<CubeBackend<R, F, I, BT>>,
    ) -> ScanOutput<CubeBackend<R, F, I, BT>> {
        scan_projected(x, None)
    }

    fn scan_projected<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        x: ScanInput<CubeBackend<R, F, I, BT>>,
        dt_w: Option<Tensor<CubeBackend<R, F, I, BT>, 2>>,
    ) -> ScanOutput<CubeBackend<R, F, I, BT>> {
        let (act, par, wt) = (x.u.dtype(), x.b.dtype(), x.a_log.dtype());
        let t = kernels::ScanTensors {
            u: prim(x.u),
            delta: prim(like(x.delta, act)),
            delta_bias: prim(like(x.delta_bias, wt)),
            a_log: prim(x.a_log),
            b: prim(x.b),
            c: prim(like(x.c, par)),
            d: prim(like(x.d, wt)),
            z: prim(like(x.z, act)),
            state: prim(x.state),
        };
        let (y, state) = kernels::selective_scan_projected(t, dt_w.map(prim));
        ScanOutput { y: wrap(y), state: wrap(state) }
    }

    fn conv<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        x: ConvInput<CubeBackend<R, F, I, BT>>,
    ) -> Pair<CubeBackend<R, F, I, BT>> {
        let (act, wt) = (x.x.dtype(), x.weight.dtype());
        let (y, window) = kernels::causal_conv1d(
            prim(x.x),
            prim(like(x.window, act)),
            prim(x.weight),
            x.bias.map(|b| prim(like(b, wt))),
        );
        (wrap(y), wrap(window))
    }

    fn norm<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        x: RmsNormInput<CubeBackend<R, F, I, BT>>,
    ) -> Tensor<CubeBackend<R, F, I, BT>, 3> {
        let out_dtype = x.out_dtype();
        let mut out = kernels::rms_norm(prim(x.x), x.weight.map(prim), x.eps, x.dtype, out_dtype, x.segments, false);
        wrap(out.remove(0))
    }

    /// `x · weight` through cuBLAS where the runtime is CUDA and the shapes are a prefill's.
    #[allow(unused_variables)]
    fn cublas_projection<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        x: &Tensor<CubeBackend<R, F, I, BT>, 3>,
        weight: &Tensor<CubeBackend<R, F, I, BT>, 2>,
    ) -> Option<Tensor<CubeBackend<R, F, I, BT>, 3>> {
        #[cfg(feature = "cuda")]
        {
            let [b, l, _] = x.dims();
            if b * l < crate::kernels::CUBLAS_MIN_ROWS {
                return None;
            }
            crate::cublas::linear(&prim(x.clone()), &prim(weight.clone())).map(wrap)
        }
        #[cfg(not(feature = "cuda"))]
        None
    }

    impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> SsmBackend for CubeBackend<R, F, I, BT> {
        fn rms_norm(input: RmsNormInput<Self>) -> Tensor<Self, 3> {
            norm(input)
        }

        fn rms_norm_split(x: RmsNormInput<Self>) -> [Tensor<Self, 3>; 3] {
            let out_dtype = x.out_dtype();
            let out = kernels::rms_norm(prim(x.x), x.weight.map(prim), x.eps, x.dtype, out_dtype, x.segments, true);
            let [a, b, c]: [_; 3] = out.try_into().expect("three segments");
            [wrap(a), wrap(b), wrap(c)]
        }

        fn add_rms_norm(x: RmsNormInput<Self>, y: Tensor<Self, 3>, stream: DType) -> Pair<Self> {
            if !super::fused_add_norm_applies(&x, &y) {
                return super::add_then_norm(x, y, stream);
            }
            let out_dtype = x.out_dtype();
            let (s, out) =
                kernels::add_rms_norm(prim(x.x), prim(y), x.weight.map(prim), x.eps, stream, x.dtype, out_dtype);
            (wrap(s), wrap(out))
        }

        fn projection(x: Tensor<Self, 3>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, 3> {
            let (xp, wp) = (prim(x.clone()), prim(weight.clone()));
            let [b, l, k] = x.dims();
            let n = weight.dims()[1];
            if kernels::gemv_applies(&xp, &wp) {
                let bias = bias.map(|b| prim(like(b, weight.dtype())));
                wrap(kernels::gemv(xp, wp, bias))
            } else if let Some(y) = cublas_projection(&x, &weight) {
                match bias {
                    Some(bias) => y + like(bias, weight.dtype()).reshape([1, 1, n]),
                    None => y,
                }
            } else if let Some(s) = kernels::split_k(b * l, k, n) {
                // Split-K: [s, m, k/s] · [s, k/s, n] with f32 partials, summed over s, one rounding.
                use burn_cubecl::kernel::{into_contiguous, matmul};
                let dtype = x.dtype();
                let xs = x.reshape([b * l, s, k / s]).swap_dims(0, 1);
                let ws = wrap::<Self, 2>(into_contiguous(wp)).reshape([s, k / s, n]);
                let parts = matmul::matmul(
                    into_contiguous(prim(xs)),
                    prim(ws),
                    None,
                    matmul::MatmulStrategy::default(),
                    DType::F32,
                )
                .expect("split-K product of checked shapes");
                let mut y = wrap::<Self, 3>(parts).sum_dim(0).reshape([b, l, n]);
                if let Some(bias) = bias {
                    y = y + bias.cast(FloatDType::F32).reshape([1, 1, n]);
                }
                y.cast(FloatDType::from(dtype))
            } else {
                burn::tensor::module::linear(x, weight, bias)
            }
        }

        fn selective_scan(input: ScanInput<Self>) -> ScanOutput<Self> {
            scan(input)
        }

        fn selective_state_update(input: ScanInput<Self>) -> ScanOutput<Self> {
            scan(input)
        }

        fn selective_state_update_projected(input: ScanInput<Self>, dt_proj: Tensor<Self, 2>) -> ScanOutput<Self> {
            let (u, dt, w) = (prim(input.u.clone()), prim(input.delta.clone()), prim(dt_proj.clone()));
            if kernels::scan_projects(&u, &dt, &w) {
                scan_projected(input, Some(dt_proj))
            } else {
                let delta = Self::projection(input.delta.clone(), dt_proj, None);
                scan(ScanInput { delta, ..input })
            }
        }

        fn selective_state_update_dbc(x: StepInput<Self>) -> ScanOutput<Self> {
            let n_state = x.a_log.dims()[1];
            let (u, dbc, w) = (prim(x.u.clone()), prim(x.dbc.clone()), prim(x.dt_proj.clone()));
            let z = prim(like(x.z.clone(), x.u.dtype()));
            if !kernels::step_dbc_applies(&u, &z, &dbc, &w, n_state) {
                return super::step_from_dbc(x);
            }
            let wt = x.a_log.dtype();
            let t = kernels::StepTensors {
                u,
                dbc,
                dt_w: w,
                delta_bias: prim(like(x.delta_bias, wt)),
                a_log: prim(x.a_log),
                d: prim(like(x.d, wt)),
                z,
                state: prim(x.state),
            };
            let (y, state) = kernels::scan_step_dbc(t, x.eps);
            ScanOutput { y: wrap(y), state: wrap(state) }
        }

        fn causal_conv1d(input: ConvInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
            conv(input)
        }

        fn causal_conv1d_update(input: ConvInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
            conv(input)
        }
    }
}

#[cfg(feature = "cube")]
mod fusion_impl {
    //! `SsmBackend` on `Fusion<B>`: each op is registered on the fusion stream as a custom operation
    //! (never fused with neighbours) whose execution calls `B`'s implementation on the real tensors.
    use core::marker::PhantomData;

    use burn::prelude::*;
    use burn::tensor::{DType, Shape, TensorPrimitive};
    use burn_fusion::stream::{Operation, OperationStreams};
    use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
    use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

    use super::{ConvInput, RmsNormInput, ScanInput, ScanOutput, SsmBackend, StepInput};

    type Handles<B> = HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

    fn ft<B: FusionBackend, const D: usize>(t: Tensor<Fusion<B>, D>) -> FusionTensor<B::FusionRuntime> {
        t.into_primitive().tensor()
    }

    fn get<B: FusionBackend, const D: usize>(h: &mut Handles<B>, ir: &TensorIr) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(h.get_float_tensor::<B>(ir)))
    }

    fn put<B: FusionBackend, const D: usize>(h: &mut Handles<B>, ir: &TensorIr, t: Tensor<B, D>) {
        h.register_float_tensor::<B>(&ir.id, t.into_primitive().tensor());
    }

    /// Registers a custom op on the fusion stream (never fused with its neighbours): `outs` are the shapes
    /// and dtypes of its outputs, `make` builds the op from its description. Returns the outputs.
    fn register<B: FusionBackend, O: Operation<B::FusionRuntime> + 'static, const N: usize>(
        name: &'static str,
        ins: Vec<FusionTensor<B::FusionRuntime>>,
        outs: [(Shape, DType); N],
        make: impl FnOnce(CustomOpIr) -> O,
    ) -> [Tensor<Fusion<B>, 3>; N] {
        let client = ins[0].client.clone();
        let outs = outs.map(|(shape, dtype)| TensorIr::uninit(client.create_empty_handle(), shape, dtype));
        let streams = OperationStreams::with_inputs(ins.iter());
        let irs: Vec<TensorIr> = ins.into_iter().map(|t| t.into_ir()).collect();
        let desc = CustomOpIr::new(name, &irs, &outs);
        let op = make(desc.clone());
        let outs: [FusionTensor<B::FusionRuntime>; N] =
            client.register(streams, OperationIr::Custom(desc), op).try_into().expect("one tensor per declared output");
        outs.map(|t| Tensor::from_primitive(TensorPrimitive::Float(t)))
    }

    #[derive(Debug)]
    struct ScanOp<B> {
        desc: CustomOpIr,
        single: bool,
        _b: PhantomData<B>,
    }

    impl<B: FusionBackend + SsmBackend> Operation<B::FusionRuntime> for ScanOp<B> {
        fn execute(&self, h: &mut Handles<B>) {
            let ins = &self.desc.inputs;
            let ([u, delta, delta_bias, a_log, b, c, d, z, state], [y_out, state_out]) =
                (core::array::from_fn(|i| &ins[i]), [&self.desc.outputs[0], &self.desc.outputs[1]]);
            let input = ScanInput::<B> {
                u: get(h, u),
                delta: get(h, delta),
                delta_bias: get(h, delta_bias),
                a_log: get(h, a_log),
                b: get(h, b),
                c: get(h, c),
                d: get(h, d),
                z: get(h, z),
                state: get(h, state),
            };
            let out = match (ins.get(9), self.single) {
                (Some(w), _) => B::selective_state_update_projected(input, get(h, w)),
                (None, true) => B::selective_state_update(input),
                (None, false) => B::selective_scan(input),
            };
            put(h, y_out, out.y);
            put(h, state_out, out.state);
        }
    }

    #[derive(Debug)]
    struct StepOp<B> {
        desc: CustomOpIr,
        eps: f64,
        _b: PhantomData<B>,
    }

    impl<B: FusionBackend + SsmBackend> Operation<B::FusionRuntime> for StepOp<B> {
        fn execute(&self, h: &mut Handles<B>) {
            let ins = &self.desc.inputs;
            let input = StepInput::<B> {
                u: get(h, &ins[0]),
                dbc: get(h, &ins[1]),
                eps: self.eps,
                dt_proj: get(h, &ins[2]),
                delta_bias: get(h, &ins[3]),
                a_log: get(h, &ins[4]),
                d: get(h, &ins[5]),
                z: get(h, &ins[6]),
                state: get(h, &ins[7]),
            };
            let out = B::selective_state_update_dbc(input);
            put(h, &self.desc.outputs[0], out.y);
            put(h, &self.desc.outputs[1], out.state);
        }
    }

    #[derive(Debug)]
    struct ConvOp<B> {
        desc: CustomOpIr,
        single: bool,
        _b: PhantomData<B>,
    }

    impl<B: FusionBackend + SsmBackend> Operation<B::FusionRuntime> for ConvOp<B> {
        fn execute(&self, h: &mut Handles<B>) {
            let ins = &self.desc.inputs;
            let (y_out, window_out) = (&self.desc.outputs[0], &self.desc.outputs[1]);
            let input = ConvInput::<B> {
                x: get(h, &ins[0]),
                window: get(h, &ins[1]),
                weight: get(h, &ins[2]),
                bias: ins.get(3).map(|b| get(h, b)),
            };
            let (y, window) = if self.single { B::causal_conv1d_update(input) } else { B::causal_conv1d(input) };
            put(h, y_out, y);
            put(h, window_out, window);
        }
    }

    /// `rms_norm`, or with `split` `rms_norm_split` (three outputs).
    #[derive(Debug)]
    struct NormOp<B> {
        desc: CustomOpIr,
        eps: f64,
        dtype: burn::tensor::DType,
        segments: [usize; 2],
        split: bool,
        _b: PhantomData<B>,
    }

    impl<B: FusionBackend + SsmBackend> Operation<B::FusionRuntime> for NormOp<B> {
        fn execute(&self, h: &mut Handles<B>) {
            let ins = &self.desc.inputs;
            let input = RmsNormInput::<B> {
                x: get(h, &ins[0]),
                weight: ins.get(1).map(|w| get(h, w)),
                eps: self.eps,
                dtype: self.dtype,
                segments: self.segments,
            };
            if self.split {
                for (ir, t) in self.desc.outputs.iter().zip(B::rms_norm_split(input)) {
                    put(h, ir, t);
                }
            } else {
                put(h, &self.desc.outputs[0], B::rms_norm(input));
            }
        }
    }

    #[derive(Debug)]
    struct AddNormOp<B> {
        desc: CustomOpIr,
        eps: f64,
        dtype: burn::tensor::DType,
        stream: burn::tensor::DType,
        _b: PhantomData<B>,
    }

    impl<B: FusionBackend + SsmBackend> Operation<B::FusionRuntime> for AddNormOp<B> {
        fn execute(&self, h: &mut Handles<B>) {
            let ins = &self.desc.inputs;
            let d = ins[0].shape[2];
            let input = RmsNormInput::<B> {
                x: get(h, &ins[0]),
                weight: ins.get(2).map(|w| get(h, w)),
                eps: self.eps,
                dtype: self.dtype,
                segments: [d, d],
            };
            let (s, out) = B::add_rms_norm(input, get(h, &ins[1]), self.stream);
            put(h, &self.desc.outputs[0], s);
            put(h, &self.desc.outputs[1], out);
        }
    }

    #[derive(Debug)]
    struct LinearOp<B> {
        desc: CustomOpIr,
        _b: PhantomData<B>,
    }

    impl<B: FusionBackend + SsmBackend> Operation<B::FusionRuntime> for LinearOp<B> {
        fn execute(&self, h: &mut Handles<B>) {
            let ins = &self.desc.inputs;
            let y = B::projection(get(h, &ins[0]), get(h, &ins[1]), ins.get(2).map(|b| get(h, b)));
            put(h, &self.desc.outputs[0], y);
        }
    }

    /// Registers the decode-sized, split-K and (on CUDA) cuBLAS products as a custom op (the layout
    /// check that picks the kernel needs the real tensors, which only the op's execution sees); the
    /// rest go to Burn's `linear`.
    fn linear<B: FusionBackend + SsmBackend>(
        x: Tensor<Fusion<B>, 3>,
        weight: Tensor<Fusion<B>, 2>,
        bias: Option<Tensor<Fusion<B>, 1>>,
    ) -> Tensor<Fusion<B>, 3> {
        let [b, l, k] = x.dims();
        let n = weight.dims()[1];
        let custom = b * l <= crate::kernels::gemv::GEMV_MAX_ROWS
            || crate::kernels::split_k(b * l, k, n).is_some()
            || (cfg!(feature = "cuda") && b * l >= crate::kernels::CUBLAS_MIN_ROWS);
        if !custom || x.dtype() != weight.dtype() {
            return burn::tensor::module::linear(x, weight, bias);
        }
        let out = (Shape::new([b, l, weight.dims()[1]]), x.dtype());
        let mut ins = vec![ft(x), ft(weight)];
        ins.extend(bias.map(ft));
        let [y] = register::<B, _, 1>("viper_linear", ins, [out], |desc| LinearOp::<B> { desc, _b: PhantomData });
        y
    }

    fn norm<B: FusionBackend + SsmBackend>(x: RmsNormInput<Fusion<B>>) -> Tensor<Fusion<B>, 3> {
        let out = (x.x.shape(), x.out_dtype());
        let (eps, dtype, segments) = (x.eps, x.dtype, x.segments);
        let mut ins = vec![ft(x.x)];
        ins.extend(x.weight.map(ft));
        let [y] = register::<B, _, 1>("viper_rms_norm", ins, [out], |desc| NormOp::<B> {
            desc,
            eps,
            dtype,
            segments,
            split: false,
            _b: PhantomData,
        });
        y
    }

    fn norm_split<B: FusionBackend + SsmBackend>(x: RmsNormInput<Fusion<B>>) -> [Tensor<Fusion<B>, 3>; 3] {
        let [b, l, d] = x.x.dims();
        let [s1, s2] = [x.segments[0].min(d), x.segments[1].clamp(x.segments[0].min(d), d)];
        let dt = x.out_dtype();
        let outs = [s1, s2 - s1, d - s2].map(|w| (Shape::new([b, l, w]), dt));
        let (eps, dtype) = (x.eps, x.dtype);
        let mut ins = vec![ft(x.x)];
        ins.extend(x.weight.map(ft));
        register::<B, _, 3>("viper_rms_norm_split", ins, outs, |desc| NormOp::<B> {
            desc,
            eps,
            dtype,
            segments: [s1, s2],
            split: true,
            _b: PhantomData,
        })
    }

    fn add_norm<B: FusionBackend + SsmBackend>(
        x: RmsNormInput<Fusion<B>>,
        y: Tensor<Fusion<B>, 3>,
        stream: burn::tensor::DType,
    ) -> (Tensor<Fusion<B>, 3>, Tensor<Fusion<B>, 3>) {
        if !super::fused_add_norm_applies(&x, &y) {
            return super::add_then_norm(x, y, stream);
        }
        let outs = [(x.x.shape(), stream), (x.x.shape(), x.out_dtype())];
        let (eps, dtype) = (x.eps, x.dtype);
        let mut ins = vec![ft(x.x), ft(y)];
        ins.extend(x.weight.map(ft));
        let [s, out] = register::<B, _, 2>("viper_add_rms_norm", ins, outs, |desc| AddNormOp::<B> {
            desc,
            eps,
            dtype,
            stream,
            _b: PhantomData,
        });
        (s, out)
    }

    /// `dt_w`: dt_proj folded into a decode step (a tenth input).
    fn scan<B: FusionBackend + SsmBackend>(
        x: ScanInput<Fusion<B>>,
        single: bool,
        dt_w: Option<Tensor<Fusion<B>, 2>>,
    ) -> ScanOutput<Fusion<B>> {
        let outs = [(x.u.shape(), x.u.dtype()), (x.state.shape(), x.state.dtype())];
        let mut ins =
            vec![ft(x.u), ft(x.delta), ft(x.delta_bias), ft(x.a_log), ft(x.b), ft(x.c), ft(x.d), ft(x.z), ft(x.state)];
        ins.extend(dt_w.map(ft));
        let [y, state] = register::<B, _, 2>("viper_selective_scan", ins, outs, |desc| ScanOp::<B> {
            desc,
            single,
            _b: PhantomData,
        });
        ScanOutput { y, state }
    }

    fn conv<B: FusionBackend + SsmBackend>(
        x: ConvInput<Fusion<B>>,
        single: bool,
    ) -> (Tensor<Fusion<B>, 3>, Tensor<Fusion<B>, 3>) {
        // The new window has the window's shape and the input's dtype.
        let outs = [(x.x.shape(), x.x.dtype()), (x.window.shape(), x.x.dtype())];
        let mut ins = vec![ft(x.x), ft(x.window), ft(x.weight)];
        ins.extend(x.bias.map(ft));
        let [y, window] =
            register::<B, _, 2>("viper_causal_conv1d", ins, outs, |desc| ConvOp::<B> { desc, single, _b: PhantomData });
        (y, window)
    }

    impl<B: FusionBackend + SsmBackend> SsmBackend for Fusion<B> {
        fn rms_norm(input: RmsNormInput<Self>) -> Tensor<Self, 3> {
            norm(input)
        }

        fn rms_norm_split(input: RmsNormInput<Self>) -> [Tensor<Self, 3>; 3] {
            norm_split(input)
        }

        fn add_rms_norm(
            input: RmsNormInput<Self>,
            y: Tensor<Self, 3>,
            stream: burn::tensor::DType,
        ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
            add_norm(input, y, stream)
        }

        fn projection(x: Tensor<Self, 3>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, 3> {
            linear(x, weight, bias)
        }

        fn selective_scan(input: ScanInput<Self>) -> ScanOutput<Self> {
            scan(input, false, None)
        }

        fn selective_state_update(input: ScanInput<Self>) -> ScanOutput<Self> {
            scan(input, true, None)
        }

        fn selective_state_update_projected(input: ScanInput<Self>, dt_proj: Tensor<Self, 2>) -> ScanOutput<Self> {
            scan(input, true, Some(dt_proj))
        }

        fn selective_state_update_dbc(x: StepInput<Self>) -> ScanOutput<Self> {
            let outs = [(x.u.shape(), x.u.dtype()), (x.state.shape(), x.state.dtype())];
            let eps = x.eps;
            let ins =
                vec![ft(x.u), ft(x.dbc), ft(x.dt_proj), ft(x.delta_bias), ft(x.a_log), ft(x.d), ft(x.z), ft(x.state)];
            let [y, state] = register::<B, _, 2>("viper_scan_step_dbc", ins, outs, |desc| StepOp::<B> {
                desc,
                eps,
                _b: PhantomData,
            });
            ScanOutput { y, state }
        }

        fn causal_conv1d(input: ConvInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
            conv(input, false)
        }

        fn causal_conv1d_update(input: ConvInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
            conv(input, true)
        }
    }
}

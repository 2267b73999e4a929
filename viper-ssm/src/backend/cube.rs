//! `SsmBackend` on a CubeCL backend: normalise dtypes where the kernels need pairs to match (a no-op
//! for a model in one dtype), then launch [`crate::kernels`].

use burn::prelude::*;
use burn::tensor::{DType, FloatDType, TensorPrimitive};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::{AttentionInput, ConvInput, RmsNormInput, ScanInput, ScanOutput, SsmBackend, StepInput};
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
    let t = kernels::scan::ScanTensors {
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
    let (y, state) = kernels::scan::selective_scan_projected(t, dt_w.map(prim));
    ScanOutput { y: wrap(y), state: wrap(state) }
}

fn conv<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: ConvInput<CubeBackend<R, F, I, BT>>,
) -> Pair<CubeBackend<R, F, I, BT>> {
    let (act, wt) = (x.x.dtype(), x.weight.dtype());
    let (y, window) = kernels::conv::causal_conv1d(
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
    let mut out = kernels::norm::rms_norm(prim(x.x), x.weight.map(prim), x.eps, x.dtype, out_dtype, x.segments, false);
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

/// Most bytes of f32 scores one block of queries of [`cublas_attention`] holds.
#[cfg(feature = "cuda")]
const SCORES_BYTES: usize = 1 << 30;

/// [`SsmBackend::grouped_attention`] as two cuBLAS batched GEMMs (each key/value head's query group as the
/// rows of one product) around a masked f32 softmax, the queries in blocks whose scores stay within
/// [`SCORES_BYTES`]. Neither product is tuned or compiled per shape (Burn's attention on CUDA either
/// cannot launch these shapes with its flash kernels or autotunes its matmul for each: 10–67 s per new
/// shape in a fresh process, BENCHMARKS.md session 10). `None` where cuBLAS does not take the tensors.
#[allow(unused_variables)]
fn cublas_attention<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    input: &AttentionInput<CubeBackend<R, F, I, BT>>,
) -> Option<Tensor<CubeBackend<R, F, I, BT>, 3>> {
    #[cfg(feature = "cuda")]
    {
        use crate::cublas::batched_matmul;
        use burn::tensor::activation::softmax;
        use burn_cubecl::kernel::into_contiguous;
        type Cb<R, F, I, BT> = CubeBackend<R, F, I, BT>;
        let AttentionInput { q, k, v, causal } = input.clone();
        let ([n, lq, d], [nk, lk, _], [nv, lv, dv]) = (q.dims(), k.dims(), v.dims());
        let dtype = q.dtype();
        let shapes_fit = nk > 0 && n.is_multiple_of(nk) && lq > 0 && lk > 0 && (nv, lv) == (nk, lk);
        if !shapes_fit || (causal && lq > lk) || k.dtype() != dtype || v.dtype() != dtype {
            return None;
        }
        let g = n / nk;
        let device = q.device();
        let scale = (d as f32).powf(-0.5);
        let block = (SCORES_BYTES / (4 * n * lk)).clamp(1, lq);
        let (kp, vp) = (prim(k), prim(v));
        let mut outs = Vec::new();
        for start in (0..lq).step_by(block) {
            let len = block.min(lq - start);
            let qb = wrap::<Cb<R, F, I, BT>, 3>(into_contiguous(prim(q.clone().narrow(1, start, len))));
            let s = batched_matmul(&prim(qb.reshape([nk, g * len, d])), &kp, true, scale, DType::F32)?;
            let mut s = wrap::<Cb<R, F, I, BT>, 3>(s).reshape([n, len, lk]);
            // Query `start + i` of `lq` sees keys up to `start + i + lk − lq`: nothing to hide when the
            // block's first query sees every key (a decode step), so no mask is built per token.
            let offset = lk - lq + start;
            if causal && offset + 1 < lk {
                let offset = offset as i64;
                let i = Tensor::<Cb<R, F, I, BT>, 1, Int>::arange(0..len as i64, &device);
                let j = Tensor::<Cb<R, F, I, BT>, 1, Int>::arange(0..lk as i64, &device);
                let i = (i + offset).reshape([1, len, 1]).expand([n, len, lk]);
                let j = j.reshape([1, 1, lk]).expand([n, len, lk]);
                s = s.mask_fill(j.greater(i), f32::NEG_INFINITY);
            }
            let p = like(softmax(s, 2), dtype).reshape([nk, g * len, lk]);
            let o = batched_matmul(&prim(p), &vp, false, 1.0, dtype)?;
            outs.push(wrap::<Cb<R, F, I, BT>, 3>(o).reshape([n, len, dv]));
        }
        Some(if outs.len() == 1 { outs.pop()? } else { Tensor::cat(outs, 1) })
    }
    #[cfg(not(feature = "cuda"))]
    None
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> SsmBackend for CubeBackend<R, F, I, BT> {
    fn grouped_attention(input: AttentionInput<Self>) -> Tensor<Self, 3> {
        cublas_attention(&input).unwrap_or_else(|| super::attention_tensor_ops(input))
    }

    fn device_memory_reserved(device: &Self::Device) -> Option<u64> {
        R::client(device).memory_usage().ok().map(|usage| usage.bytes_reserved)
    }

    fn rms_norm(input: RmsNormInput<Self>) -> Tensor<Self, 3> {
        norm(input)
    }

    fn rms_norm_split(x: RmsNormInput<Self>) -> [Tensor<Self, 3>; 3] {
        let out_dtype = x.out_dtype();
        let out = kernels::norm::rms_norm(prim(x.x), x.weight.map(prim), x.eps, x.dtype, out_dtype, x.segments, true);
        let [a, b, c]: [_; 3] = out.try_into().expect("three segments");
        [wrap(a), wrap(b), wrap(c)]
    }

    fn add_rms_norm(x: RmsNormInput<Self>, y: Tensor<Self, 3>, stream: DType) -> Pair<Self> {
        if !super::fused_add_norm_applies(&x, &y) {
            return super::add_then_norm(x, y, stream);
        }
        let out_dtype = x.out_dtype();
        let (s, out) =
            kernels::norm::add_rms_norm(prim(x.x), prim(y), x.weight.map(prim), x.eps, stream, x.dtype, out_dtype);
        (wrap(s), wrap(out))
    }

    fn projection(x: Tensor<Self, 3>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, 3> {
        let (xp, wp) = (prim(x.clone()), prim(weight.clone()));
        let [b, l, k] = x.dims();
        let n = weight.dims()[1];
        if kernels::gemv::gemv_applies(&xp, &wp) {
            let bias = bias.map(|b| prim(like(b, weight.dtype())));
            wrap(kernels::gemv::gemv(xp, wp, bias))
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

    fn selective_state_update_projected(input: ScanInput<Self>, dt_proj: Tensor<Self, 2>) -> ScanOutput<Self> {
        let (u, dt, w) = (prim(input.u.clone()), prim(input.delta.clone()), prim(dt_proj.clone()));
        if kernels::scan::scan_projects(&u, &dt, &w) {
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
        if !kernels::scan::step_dbc_applies(&u, &z, &dbc, &w, n_state) {
            return super::step_from_dbc(x);
        }
        let wt = x.a_log.dtype();
        let t = kernels::scan::StepTensors {
            u,
            dbc,
            dt_w: w,
            delta_bias: prim(like(x.delta_bias, wt)),
            a_log: prim(x.a_log),
            d: prim(like(x.d, wt)),
            z,
            state: prim(x.state),
        };
        let (y, state) = kernels::scan::step_dbc(t, x.eps);
        ScanOutput { y: wrap(y), state: wrap(state) }
    }

    fn causal_conv1d(input: ConvInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        conv(input)
    }
}

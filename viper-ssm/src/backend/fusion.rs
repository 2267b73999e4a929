//! `SsmBackend` on `Fusion<B>`: each op is registered on the fusion stream as a custom operation
//! (never fused with neighbours) whose execution calls `B`'s implementation on the real tensors.

use core::marker::PhantomData;

use burn::prelude::*;
use burn::tensor::{DType, Shape, TensorPrimitive};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::{AttentionInput, ConvInput, RmsNormInput, ScanInput, ScanOutput, SsmBackend, StepInput};

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

/// `selective_scan`, or with a tenth input (dt_proj's weight) `selective_state_update_projected`.
#[derive(Debug)]
struct ScanOp<B> {
    desc: CustomOpIr,
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
        let out = match ins.get(9) {
            Some(w) => B::selective_state_update_projected(input, get(h, w)),
            None => B::selective_scan(input),
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
        let (y, window) = B::causal_conv1d(input);
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

#[derive(Debug)]
struct AttentionOp<B> {
    desc: CustomOpIr,
    causal: bool,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + SsmBackend> Operation<B::FusionRuntime> for AttentionOp<B> {
    fn execute(&self, h: &mut Handles<B>) {
        let [q, k, v] = [0, 1, 2].map(|i| &self.desc.inputs[i]);
        let input = AttentionInput::<B> { q: get(h, q), k: get(h, k), v: get(h, v), causal: self.causal };
        put(h, &self.desc.outputs[0], B::grouped_attention(input));
    }
}

/// On CUDA a custom op (whether cuBLAS takes the tensors depends on their layout, which only the op's
/// execution sees); elsewhere the tensor-op body, which fusion sees through.
fn attention<B: FusionBackend + SsmBackend>(x: AttentionInput<Fusion<B>>) -> Tensor<Fusion<B>, 3> {
    let dtype = x.q.dtype();
    if !cfg!(feature = "cuda") || x.k.dtype() != dtype || x.v.dtype() != dtype {
        return super::attention_tensor_ops(x);
    }
    let ([n, lq, _], dv) = (x.q.dims(), x.v.dims()[2]);
    let causal = x.causal;
    let out = (Shape::new([n, lq, dv]), dtype);
    let ins = vec![ft(x.q), ft(x.k), ft(x.v)];
    let [y] =
        register::<B, _, 1>("viper_attention", ins, [out], |desc| AttentionOp::<B> { desc, causal, _b: PhantomData });
    y
}

/// `dt_w`: dt_proj folded into a decode step (a tenth input).
fn scan<B: FusionBackend + SsmBackend>(
    x: ScanInput<Fusion<B>>,
    dt_w: Option<Tensor<Fusion<B>, 2>>,
) -> ScanOutput<Fusion<B>> {
    let outs = [(x.u.shape(), x.u.dtype()), (x.state.shape(), x.state.dtype())];
    let mut ins =
        vec![ft(x.u), ft(x.delta), ft(x.delta_bias), ft(x.a_log), ft(x.b), ft(x.c), ft(x.d), ft(x.z), ft(x.state)];
    ins.extend(dt_w.map(ft));
    let [y, state] =
        register::<B, _, 2>("viper_selective_scan", ins, outs, |desc| ScanOp::<B> { desc, _b: PhantomData });
    ScanOutput { y, state }
}

fn conv<B: FusionBackend + SsmBackend>(x: ConvInput<Fusion<B>>) -> (Tensor<Fusion<B>, 3>, Tensor<Fusion<B>, 3>) {
    // The new window has the window's shape and the input's dtype.
    let outs = [(x.x.shape(), x.x.dtype()), (x.window.shape(), x.x.dtype())];
    let mut ins = vec![ft(x.x), ft(x.window), ft(x.weight)];
    ins.extend(x.bias.map(ft));
    let [y, window] =
        register::<B, _, 2>("viper_causal_conv1d", ins, outs, |desc| ConvOp::<B> { desc, _b: PhantomData });
    (y, window)
}

impl<B: FusionBackend + SsmBackend> SsmBackend for Fusion<B> {
    fn grouped_attention(input: AttentionInput<Self>) -> Tensor<Self, 3> {
        attention(input)
    }

    fn device_memory_reserved(device: &Self::Device) -> Option<u64> {
        B::device_memory_reserved(device)
    }

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
        scan(input, None)
    }

    fn selective_state_update_projected(input: ScanInput<Self>, dt_proj: Tensor<Self, 2>) -> ScanOutput<Self> {
        scan(input, Some(dt_proj))
    }

    fn selective_state_update_dbc(x: StepInput<Self>) -> ScanOutput<Self> {
        let outs = [(x.u.shape(), x.u.dtype()), (x.state.shape(), x.state.dtype())];
        let eps = x.eps;
        let ins = vec![ft(x.u), ft(x.dbc), ft(x.dt_proj), ft(x.delta_bias), ft(x.a_log), ft(x.d), ft(x.z), ft(x.state)];
        let [y, state] =
            register::<B, _, 2>("viper_scan_step_dbc", ins, outs, |desc| StepOp::<B> { desc, eps, _b: PhantomData });
        ScanOutput { y, state }
    }

    fn causal_conv1d(input: ConvInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        conv(input)
    }
}

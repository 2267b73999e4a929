//! The backend extension trait through which the models run their hot ops: the selective scan, the
//! causal conv, RMS norms, the Linear products and attention.
//!
//! Every method has a tensor-op default body (the [`reference`](crate::reference), or Burn's `linear`
//! for [`SsmBackend::projection`]); CubeCL backends
//! (`CubeBackend<R, F, I, BT>` and its `Fusion` wrapper, i.e. Burn's `Cuda` and `Wgpu` with or without the
//! `fusion` feature) override them with the hand-written kernels of [`kernels`](crate::kernels).
//!
//! Laid out as Burn's custom-kernel example: the trait, its default bodies and the op structs (defined
//! in `ops`, re-exported here) in this file, then one file per backend: `ndarray`, `cube` (launches the
//! kernels) and `fusion` (registers each op on the fusion stream, then runs `cube`'s impl).

#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "cube")]
mod fusion;
#[cfg(feature = "ndarray")]
mod ndarray;

use burn::prelude::*;

pub use crate::ops::{AttentionInput, ConvInput, RmsNormInput, ScanInput, ScanOutput, StepInput};

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

/// A Linear layer through [`SsmBackend::projection`]: Burn's product, or one matrix–vector launch for the
/// decode step on the CubeCL backends.
pub fn linear<B: SsmBackend>(layer: &burn::nn::Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    B::projection(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// `t` copied into a new row-major tensor (a reshape keeps a view where it can, so the copy is explicit).
fn row_major<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    let dims = t.dims();
    Tensor::empty(dims, (&t.device(), t.dtype())).slice_assign(dims.map(|d| 0..d), t)
}

/// The tensor-op body of [`SsmBackend::grouped_attention`]: Burn's `attention` on row-major heads.
/// - One query position sees every key: it runs unmasked with each key/value head's query group as
///   its rows (no repeated K/V).
/// - Otherwise K/V are repeated to the query heads. CubeCL's flash kernels (cubek-attention 0.2, behind
///   Burn's `attention` on Wgpu and Cuda) read a `swap_dims` view wrongly, hence the row-major copies
///   ([`row_major`]), and mask from the first key (a key is hidden when its index exceeds the
///   query's); a chunk after cached positions needs the mask aligned to the last key, as Burn's unfused
///   path does, which a set scale selects (`bench_models check-attention`, BENCHMARKS.md session 9).
fn attention_tensor_ops<B: Backend>(input: AttentionInput<B>) -> Tensor<B, 3> {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    let AttentionInput { q, k, v, causal } = input;
    let [n, lq, d] = q.dims();
    let [nk, lk, _] = k.dims();
    let dv = v.dims()[2];
    let g = n / nk.max(1);
    if lq == 1 {
        let q = q.reshape([1, nk, g, d]);
        let (k, v) = (row_major(k).reshape([1, nk, lk, d]), row_major(v).reshape([1, nk, lk, dv]));
        return attention(q, k, v, None, None, AttentionModuleOptions::default()).reshape([n, 1, dv]);
    }
    // The reshape of the expanded view copies, so the repeated K/V are row-major.
    let repeat = |t: Tensor<B, 3>, w: usize| {
        if g == 1 {
            row_major(t).reshape([1, n, lk, w])
        } else {
            t.unsqueeze_dim::<4>(1).expand([nk, g, lk, w]).reshape([1, n, lk, w])
        }
    };
    let scale = (causal && lq < lk).then(|| 1.0 / (d as f64).sqrt());
    let options = AttentionModuleOptions { is_causal: causal, scale, ..Default::default() };
    attention(row_major(q).reshape([1, n, lq, d]), repeat(k, d), repeat(v, dv), None, None, options)
        .reshape([n, lq, dv])
}

/// Scaled dot-product attention through [`SsmBackend::grouped_attention`]; see [`AttentionInput`].
pub fn attention<B: SsmBackend>(input: AttentionInput<B>) -> Tensor<B, 3> {
    B::grouped_attention(input)
}

/// A backend that can run the Mamba mixer's sequence ops.
pub trait SsmBackend: Backend {
    /// Selective scan over a sequence, state in and out; also the decode step (`l = 1`), as the kernels
    /// pick the sequential scan by length rather than by caller.
    fn selective_scan(input: ScanInput<Self>) -> ScanOutput<Self> {
        crate::reference::selective_scan(input)
    }

    /// A decode step of [`selective_scan`](Self::selective_scan) with dt_proj folded in: `input.delta` is
    /// the low-rank dt `[b, l, R]` and Δ = `dt · dt_proj` (`[R, I]`, no bias; `delta_bias` is added
    /// inside as usual). CubeCL backends form each channel's Δ inside the scan kernel: one launch less
    /// per layer and decode step.
    fn selective_state_update_projected(input: ScanInput<Self>, dt_proj: Tensor<Self, 2>) -> ScanOutput<Self> {
        let delta = Self::projection(input.delta.clone(), dt_proj, None);
        Self::selective_scan(ScanInput { delta, ..input })
    }

    /// A FalconMamba decode step from x_proj's output: the weightless RMS norms of dt, B and C
    /// (rounded to `dbc`'s dtype), dt_proj, and the scan step, i.e.
    /// [`rms_norm_split`](Self::rms_norm_split) then
    /// [`selective_state_update_projected`](Self::selective_state_update_projected). CubeCL backends run
    /// it as one launch.
    fn selective_state_update_dbc(input: StepInput<Self>) -> ScanOutput<Self> {
        step_from_dbc(input)
    }

    /// Causal conv + SiLU over a sequence or one token (`l = 1`, one kernel for both); returns the
    /// output and the new window.
    fn causal_conv1d(input: ConvInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
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

    /// Scaled dot-product attention, softmax in f32 ([`AttentionInput`]): Burn's `attention`; on CUDA,
    /// the two products as cuBLAS batched GEMMs with f32 scores (no tuning or compilation per shape),
    /// the queries in blocks that keep the scores within 1 GiB.
    fn grouped_attention(input: AttentionInput<Self>) -> Tensor<Self, 3> {
        attention_tensor_ops(input)
    }

    /// Device memory the backend holds reserved on `device` (its pools, in use or free), in bytes, for
    /// the product path's stats; `None` where the backend does not say (the CPU backends).
    fn device_memory_reserved(device: &Self::Device) -> Option<u64> {
        let _ = device;
        None
    }
}

//! The inputs and outputs of the [`SsmBackend`](crate::SsmBackend) ops. They sit below both the
//! [`reference`](crate::reference) (which defines each op on them) and the backend trait (whose default
//! bodies call the reference), so that neither of those two imports the other's module.

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
/// [`SsmBackend::selective_state_update_dbc`](crate::SsmBackend::selective_state_update_dbc)).
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

impl<B: Backend> RmsNormInput<B> {
    /// The output dtype: `dtype`, or f32 when a weight of another dtype multiplies (PyTorch's promotion).
    pub fn out_dtype(&self) -> burn::tensor::DType {
        match &self.weight {
            Some(w) if w.dtype() != self.dtype => burn::tensor::DType::F32,
            _ => self.dtype,
        }
    }
}

/// Inputs of scaled dot-product attention (scale `1/√d`) with grouped-query heads: `n` query heads
/// over `n / g` key/value heads, query head `i` reading key/value head `i / g` (transformers'
/// `repeat_kv`; batches folded into the head index, batch-major).
#[derive(Debug, Clone)]
pub struct AttentionInput<B: Backend> {
    /// Queries `[n, lq, d]`.
    pub q: Tensor<B, 3>,
    /// Keys `[n / g, lk, d]`.
    pub k: Tensor<B, 3>,
    /// Values `[n / g, lk, dv]`.
    pub v: Tensor<B, 3>,
    /// Query `i` sees keys `0 ..= i + lk − lq` (the mask aligned to the last key, as after cached
    /// positions); otherwise every key.
    pub causal: bool,
}

//! The backend extension trait through which the mixer runs its scan and conv.
//!
//! Every method has the tensor-op [`reference`](crate::reference) as its default body; CubeCL backends
//! override them with hand-written kernels.

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

    /// Causal conv + SiLU over a sequence; returns the output and the new window.
    fn causal_conv1d(input: ConvInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        crate::reference::causal_conv1d(input)
    }

    /// Causal conv + SiLU for one token (`l = 1`).
    fn causal_conv1d_update(input: ConvInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        crate::reference::causal_conv1d(input)
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

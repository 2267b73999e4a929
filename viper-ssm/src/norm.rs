//! RMS normalisation as transformers computes it: in f32, cast back to the input dtype, then scaled by
//! the (optional) learned weight.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use viper_checkpoint::{Result, Weights};

use crate::backend::{RmsNormInput, SsmBackend};
// The weightless norm lives in the reference, whose RMS norm is built on it; re-exported so that
// `norm::rms` keeps its path.
pub use crate::reference::rms;

/// RMSNorm with a learned weight (`{name}.weight`), eps from the config.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel scale, shape `[d]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square before the square root.
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Loads `{prefix}weight` of shape `[d]`.
    pub fn load(w: &Weights, d: usize, eps: f64, device: &B::Device) -> Result<Self> {
        Ok(Self { weight: Param::from_tensor(w.tensor("weight", [d], device)?), eps })
    }
}

impl<B: SsmBackend> RmsNorm<B> {
    /// `weight * rms(x)`; the product is in the wider of the two dtypes, as PyTorch promotes.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        self.forward_as(x, dtype)
    }

    /// [`forward`](Self::forward) of `x.cast(dtype)`, without materialising the cast (the model
    /// normalises its f32 residual stream in the weight dtype). One [`SsmBackend::rms_norm`] launch.
    pub fn forward_as<const D: usize>(&self, x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
        let dims = x.dims();
        B::rms_norm(self.input(x, dtype)).reshape(dims)
    }

    /// One norm of the rows of `x` (all leading dims flattened) in `dtype`.
    fn input<const D: usize>(&self, x: Tensor<B, D>, dtype: DType) -> RmsNormInput<B> {
        let dims = x.dims();
        let d = dims[D - 1];
        let rows: usize = dims[..D - 1].iter().product();
        RmsNormInput {
            x: x.reshape([1, rows, d]),
            weight: Some(self.weight.val()),
            eps: self.eps,
            dtype,
            segments: [d, d],
        }
    }

    /// The residual add fused with this norm: `s = h + y` in the `stream` dtype, then
    /// [`forward_as`](Self::forward_as)`(s, dtype)`. Returns `(s, norm)`; one
    /// [`SsmBackend::add_rms_norm`] launch.
    pub fn forward_add<const D: usize>(
        &self,
        h: Tensor<B, D>,
        y: Tensor<B, D>,
        stream: DType,
        dtype: DType,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        let dims = h.dims();
        let input = self.input(h, dtype);
        let y = y.reshape(input.x.dims());
        let (s, out) = B::add_rms_norm(input, y, stream);
        (s.reshape(dims), out.reshape(dims))
    }
}

//! Helpers shared by the integration tests: fixture paths, reading expected tensors, the error metric.
#![allow(dead_code)] // each test module uses a subset

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::prelude::*;
use viper_checkpoint::Checkpoint;

pub type B = NdArray;

/// `tests/fixtures/vision/<name>` of the workspace.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vision").join(name)
}

/// A stored tensor of any float dtype as an f32 tensor of rank `D`.
pub fn read<const D: usize>(ckpt: &Checkpoint, key: &str) -> Tensor<B, D> {
    let (values, shape) = ckpt.read_f32(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// `max|a − b| / max|b|`, with shapes compared first.
pub fn rel_err<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape");
    let den = b.clone().abs().max().into_scalar();
    let num = (a - b).abs().max().into_scalar();
    assert!(den > 0.0 && num.is_finite(), "degenerate comparison ({num} / {den})");
    num / den
}

/// Asserts `rel_err(a, b) < 1e-4` (the reference's feature tolerance).
pub fn assert_close<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, what: &str) {
    let err = rel_err(a, b);
    assert!(err < 1e-4, "{what}: rel err {err:.3e}");
}

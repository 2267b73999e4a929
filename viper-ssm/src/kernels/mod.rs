//! Hand-written CubeCL kernels behind [`SsmBackend`](crate::SsmBackend) on the CubeCL backends (CUDA,
//! wgpu): the selective scan ([`scan`]: a block scan for prefill, a sequential one for the decode
//! step, one fused FalconMamba step), the causal depthwise conv ([`conv`]), the RMS norms ([`norm`])
//! and the decode-step matrix–vector product ([`gemv`]). Each file holds its `#[cube]` kernels and, below
//! them, their host side (picks the kernel and launch shape, allocates outputs, launches); this
//! module, the helpers those launchers share and which product the backends pick.
//!
//! The decode-step kernels take arrays plus scalar sizes and strides instead of tensors: CubeCL 0.10
//! passes scalars in the launch's parameter block but uploads every tensor argument's shape and strides
//! to the device per launch, and at batch 1 that host work, not the GPU, bounded decode.

pub mod conv;
pub mod gemv;
pub mod norm;
pub mod scan;

use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

/// Rows from which the CUDA runtime's projections go through cuBLAS (the `cublas` module): the GEMV
/// covers up to `GEMV_MAX_ROWS`; in between, Burn's product. Each cuBLAS call costs two host
/// synchronisations, worth it once the product is a prefill's.
pub const CUBLAS_MIN_ROWS: usize = 16;

/// A Burn dtype as the storage type a kernel is specialised on.
fn st(dtype: DType) -> StorageType {
    dtype.into()
}

/// K segments for a prefill product with few output columns and a long `k` (FalconMamba's x_proj:
/// 8192 → 288), or `None`. Burn's matmul tiles only the `m × n` output, so at `n = 288` a 2048-row
/// product gets a few dozen cubes and runs at ~20 TFLOP/s on the H100; batching over 8 slices of `k`
/// gives it 8× the cubes (3× faster at m = 2048 in BENCHMARKS.md). At m ≥ 8192 the plain product has
/// enough cubes and splitting no longer pays.
pub fn split_k(rows: usize, k: usize, n: usize) -> Option<usize> {
    const SEGMENTS: usize = 8;
    let skinny = n <= 512 && k >= 2048 && k.is_multiple_of(SEGMENTS);
    (skinny && rows > gemv::GEMV_MAX_ROWS && rows <= 4096).then_some(SEGMENTS)
}

/// `t` itself if its last dim is unit-stride, else a copy that is.
fn unit_last<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.meta.strides().last() == Some(&1) {
        t
    } else {
        into_contiguous(t)
    }
}

/// The sizes of a 3-D tensor.
fn dims3<R: CubeRuntime>(t: &CubeTensor<R>) -> [usize; 3] {
    let s = t.shape();
    [s[0], s[1], s[2]]
}

//! Hand-written CubeCL kernels behind [`SsmBackend`](crate::SsmBackend) on the CubeCL backends (CUDA,
//! wgpu): the chunked selective scan ([`scan`]) and the causal depthwise conv ([`conv`]). This module
//! is the host side: it picks the launch shape, allocates outputs and launches.

pub mod conv;
pub mod scan;

use std::sync::OnceLock;

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::{ops::numeric::empty_device_dtype, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

/// Channels handled by one cube of the scan (threads of a cube are consecutive channels). 128 keeps a
/// cube's `u`/Δ/`z` row reads at 256 B (bf16) to 512 B (f32) and leaves room for several cubes per SM.
pub const SCAN_CHANNELS_PER_CUBE: u32 = 128;

/// Threads the chunked scan aims to launch: an H100 keeps 132 SMs × 2048 = 270k threads resident;
/// four times that leaves no SM idle at the tail while the per-chunk scratch stays small.
pub const SCAN_TARGET_THREADS: usize = 1 << 20;

/// Shortest chunk worth splitting off: below it, pass 1 + the combine cost more than the parallelism
/// gains (each chunk adds an `N`-float scratch write and read per channel).
pub const SCAN_MIN_CHUNK: usize = 32;

/// Threads per cube of the element-wise launches (conv, combine).
const ELEMWISE_CUBE: u32 = 256;

/// Cubes along grid y at most (CUDA's limit); the conv strides longer sequences over it.
const MAX_GRID_Y: u32 = 65_535;

/// Chunk length forced by `VIPER_SCAN_CHUNK` (for benchmarking), read once.
fn chunk_override() -> Option<usize> {
    static OVERRIDE: OnceLock<Option<usize>> = OnceLock::new();
    *OVERRIDE.get_or_init(|| std::env::var("VIPER_SCAN_CHUNK").ok().and_then(|v| v.parse().ok()).filter(|&v| v > 0))
}

/// Chunk length of the scan over `len` steps for `lanes = batch · d_inner` independent channels: as
/// many chunks as fill [`SCAN_TARGET_THREADS`], none shorter than [`SCAN_MIN_CHUNK`].
pub fn scan_chunk_len(len: usize, lanes: usize) -> usize {
    if let Some(c) = chunk_override() {
        return c.min(len.max(1));
    }
    let want = (SCAN_TARGET_THREADS / lanes.max(1)).max(1);
    let most = (len / SCAN_MIN_CHUNK).max(1);
    len.max(1).div_ceil(want.min(most))
}

/// The scan's inputs as CubeCL tensors (see [`ScanInput`](crate::ScanInput) for shapes). `delta` and
/// `z` must have `u`'s dtype, `c` `b`'s, and `d`/`delta_bias` `a_log`'s; strides are free.
pub struct ScanTensors<R: CubeRuntime> {
    pub u: CubeTensor<R>,
    pub delta: CubeTensor<R>,
    pub delta_bias: CubeTensor<R>,
    pub a_log: CubeTensor<R>,
    pub b: CubeTensor<R>,
    pub c: CubeTensor<R>,
    pub d: CubeTensor<R>,
    pub z: CubeTensor<R>,
    pub state: CubeTensor<R>,
}

fn st(dtype: DType) -> StorageType {
    dtype.into()
}

/// Runs the selective scan; returns `(o [b, l, i] in u's dtype, final state [b, i, n] in state's dtype)`.
pub fn selective_scan<R: CubeRuntime>(x: ScanTensors<R>) -> (CubeTensor<R>, CubeTensor<R>) {
    let [bsz, len, di] = dims3(&x.u);
    let n_state = x.a_log.shape()[1];
    assert!(len >= 1, "selective scan over an empty sequence");
    assert_eq!(x.delta.dtype, x.u.dtype, "delta must have u's dtype");
    assert_eq!(x.z.dtype, x.u.dtype, "z must have u's dtype");
    assert_eq!(x.c.dtype, x.b.dtype, "C must have B's dtype");
    assert!(x.d.dtype == x.a_log.dtype && x.delta_bias.dtype == x.a_log.dtype, "D and bias must have A_log's dtype");

    let client = x.u.client.clone();
    let device = x.u.device.clone();
    let out = empty_device_dtype(client.clone(), device.clone(), x.u.shape(), x.u.dtype);
    let state_out = empty_device_dtype(client.clone(), device.clone(), x.state.shape(), x.state.dtype);

    let chunk_len = scan_chunk_len(len, bsz * di);
    let n_chunks = len.div_ceil(chunk_len);
    let chunked = n_chunks > 1;
    let cube_dim = CubeDim::new_1d(SCAN_CHANNELS_PER_CUBE);
    let cube_count = CubeCount::Static((di as u32).div_ceil(SCAN_CHANNELS_PER_CUBE), n_chunks as u32, bsz as u32);
    let (tf, tp, tw, ts) = (st(x.u.dtype), st(x.b.dtype), st(x.a_log.dtype), st(x.state.dtype));

    let h_start = if chunked {
        let h_loc =
            empty_device_dtype(client.clone(), device.clone(), Shape::new([bsz, n_chunks, n_state, di]), DType::F32);
        let dt_sum = empty_device_dtype(client.clone(), device.clone(), Shape::new([bsz, n_chunks, di]), DType::F32);
        // SAFETY: the kernel guards every index it forms by the shapes it reads (channel bound, chunk and
        // sequence ends), so the unchecked launch reads and writes only inside its tensors.
        unsafe {
            scan::scan_chunk_state::launch_unchecked(
                &client,
                cube_count.clone(),
                cube_dim,
                x.u.clone().into_tensor_arg(),
                x.delta.clone().into_tensor_arg(),
                x.delta_bias.clone().into_tensor_arg(),
                x.a_log.clone().into_tensor_arg(),
                x.b.clone().into_tensor_arg(),
                h_loc.clone().into_tensor_arg(),
                dt_sum.clone().into_tensor_arg(),
                chunk_len,
                n_state,
                [tf, tp, tw],
            )
        };
        let lanes = bsz * n_state * di;
        // SAFETY: the kernel guards every index it forms by the shapes it reads (channel bound, chunk and
        // sequence ends), so the unchecked launch reads and writes only inside its tensors.
        unsafe {
            scan::scan_chunk_combine::launch_unchecked(
                &client,
                elemwise_count(lanes),
                CubeDim::new_1d(ELEMWISE_CUBE),
                x.a_log.clone().into_tensor_arg(),
                x.state.clone().into_tensor_arg(),
                h_loc.clone().into_tensor_arg(),
                dt_sum.into_tensor_arg(),
                n_state,
                [tw, ts],
            )
        };
        h_loc
    } else {
        // Not read when unchunked; any f32 tensor will do as the argument.
        empty_device_dtype(client.clone(), device.clone(), Shape::new([1, 1, 1, 1]), DType::F32)
    };

    // SAFETY: the kernel guards every index it forms by the shapes it reads (channel bound, chunk and
    // sequence ends), so the unchecked launch reads and writes only inside its tensors.
    unsafe {
        scan::scan_chunk_output::launch_unchecked(
            &client,
            cube_count,
            cube_dim,
            x.u.into_tensor_arg(),
            x.delta.into_tensor_arg(),
            x.delta_bias.into_tensor_arg(),
            x.a_log.into_tensor_arg(),
            x.b.into_tensor_arg(),
            x.c.into_tensor_arg(),
            x.d.into_tensor_arg(),
            x.z.into_tensor_arg(),
            x.state.into_tensor_arg(),
            h_start.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            state_out.clone().into_tensor_arg(),
            chunk_len,
            n_state,
            chunked,
            [tf, tp, tw, ts],
        )
    };
    (out, state_out)
}

/// Runs the causal conv + SiLU; returns `(out [b, l, i], new window [b, k, i])`, both in `x`'s dtype.
/// `window` must have `x`'s dtype and `bias` (if any) `weight`'s.
pub fn causal_conv1d<R: CubeRuntime>(
    x: CubeTensor<R>,
    window: CubeTensor<R>,
    weight: CubeTensor<R>,
    bias: Option<CubeTensor<R>>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let [bsz, len, di] = dims3(&x);
    let k = weight.shape()[1];
    assert_eq!(window.dtype, x.dtype, "conv window must have x's dtype");
    assert_eq!(window.shape()[1], k, "conv window must hold K inputs");
    let client = x.client.clone();
    let device = x.device.clone();
    let out = empty_device_dtype(client.clone(), device.clone(), x.shape(), x.dtype);
    let window_out = empty_device_dtype(client.clone(), device, window.shape(), x.dtype);
    let has_bias = bias.is_some();
    let (tf, tw) = (st(x.dtype), st(weight.dtype));
    let bias = bias.unwrap_or_else(|| weight.clone());
    let positions = (len.max(k) as u32).min(MAX_GRID_Y);
    // SAFETY: the kernel guards every index it forms by the shapes it reads (channel bound, chunk and
    // sequence ends), so the unchecked launch reads and writes only inside its tensors.
    unsafe {
        conv::causal_conv1d_kernel::launch_unchecked(
            &client,
            CubeCount::Static((di as u32).div_ceil(ELEMWISE_CUBE), positions, bsz as u32),
            CubeDim::new_1d(ELEMWISE_CUBE),
            x.into_tensor_arg(),
            window.into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            window_out.clone().into_tensor_arg(),
            k,
            has_bias,
            [tf, tw],
        )
    };
    (out, window_out)
}

fn dims3<R: CubeRuntime>(t: &CubeTensor<R>) -> [usize; 3] {
    let s = t.shape();
    [s[0], s[1], s[2]]
}

/// A 1-D launch of `lanes` threads in cubes of [`ELEMWISE_CUBE`], spread over x and y so that no
/// dimension exceeds the 65535-cube limit of some APIs.
fn elemwise_count(lanes: usize) -> CubeCount {
    let cubes = lanes.div_ceil(ELEMWISE_CUBE as usize) as u32;
    CubeCount::Static(cubes.min(65_535), cubes.div_ceil(65_535), 1)
}

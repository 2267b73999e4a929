//! Causal depthwise conv1d + SiLU (docs/spec.md §6.3 step 3, §6.4 step 2) as one CubeCL kernel, for a sequence
//! and for the one-token update alike.
//!
//! ```text
//! full      = window ++ x                      (window: the last K inputs before x, [b, K, I])
//! out_t[d]  = silu(bias[d] + Σ_{j<K} w[d, j] · full[t + 1 + j][d])     (tap K−1 is the current input)
//! window'   = full[L .. L + K]                 (the last K inputs, for the next call)
//! ```
//!
//! One thread per (batch, run of [`CONV_RUN`] positions, channel): grid x = channel tiles (coalesced),
//! y = runs, z = batch. A thread keeps the K taps and a sliding window of K inputs in registers, so
//! each input is read once. The threads of run 0 also copy the new window (K slots), so a decode step
//! (`L = 1`) is a single launch. Arithmetic in f32; `x`, `window` and the outputs share the storage
//! dtype `F`, the taps and bias have dtype `W`.
//!
//! Below the kernel, its launcher [`causal_conv1d`].

// `#[cube]` and the `CubeType`/`CubeLaunch` derives emit public items (kernel modules, `*Launch`) no doc reaches.
#![allow(missing_docs)]

use burn::tensor::TensorMetadata;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{ops::numeric::empty_device_dtype, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

use super::{dims3, st, unit_last};

/// Positions per thread: each input is loaded once into the sliding window and reused K times; 16
/// keeps the unrolled run short while cutting the per-thread setup (taps, strides) to 1/16 per output.
pub const CONV_RUN: usize = 16;

/// Threads per cube of the element-wise launches (conv).
const ELEMWISE_CUBE: u32 = 256;

/// Cubes along grid y at most (CUDA's limit); the conv strides longer sequences over it.
const MAX_GRID_Y: u32 = 65_535;

/// Sizes and strides (in elements) of a [`causal_conv1d_kernel`](fn@causal_conv1d_kernel) launch; every operand is unit-stride
/// over channels except the taps, whose channel stride is `t_d` (the bias is contiguous).
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct ConvDims {
    /// Positions (`L`).
    pub len: usize,
    /// Channels (`I`).
    pub d_inner: usize,
    /// `x` stride over `b`.
    pub x_b: usize,
    /// `x` stride over positions.
    pub x_l: usize,
    /// Window stride over `b`.
    pub w_b: usize,
    /// Window stride over its K slots.
    pub w_k: usize,
    /// Taps stride over channels.
    pub t_d: usize,
    /// Taps stride over the K taps.
    pub t_k: usize,
    /// `out` stride over `b`.
    pub o_b: usize,
    /// `out` stride over positions.
    pub o_l: usize,
    /// New window stride over `b`.
    pub n_b: usize,
    /// New window stride over its K slots.
    pub n_k: usize,
}

/// `full[p]` for `p` in `0 .. K + L` of one (batch, channel): the window first, then `x`.
#[cube]
fn full_at<F: Float>(
    x: &Array<F>,
    window: &Array<F>,
    dims: &ConvDims,
    base_x: usize,
    base_w: usize,
    p: usize,
    k: usize,
) -> f32 {
    if p < k {
        f32::cast_from(window[base_w + p * dims.w_k])
    } else {
        f32::cast_from(x[base_x + (p - k) * dims.x_l])
    }
}

/// Arrays and scalar strides rather than tensors: see [`gemv_kernel`](fn@super::gemv::gemv_kernel).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_kernel<F: Float, W: Float>(
    x: &Array<F>,
    window: &Array<F>,
    weight: &Array<W>,
    bias: &Array<W>,
    out: &mut Array<F>,
    window_out: &mut Array<F>,
    dims: ConvDims,
    #[comptime] k: usize,
    #[comptime] has_bias: bool,
    #[define(F, W)] _dtypes: [StorageType; 2],
) {
    let n_inner = dims.d_inner;
    let len = dims.len;
    let d = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let bi = CUBE_POS_Z as usize;
    if d >= n_inner {
        terminate!();
    }
    let base_x = bi * dims.x_b + d;
    let base_w = bi * dims.w_b + d;
    let base_o = bi * dims.o_b + d;
    let so = dims.o_l;

    let mut taps = Array::<f32>::new(k);
    #[unroll]
    for j in 0..k {
        taps[j] = f32::cast_from(weight[d * dims.t_d + j * dims.t_k]);
    }
    let mut b0 = 0.0f32;
    if has_bias {
        b0 = f32::cast_from(bias[d]);
    }

    // The new window: the last K entries of `full`.
    if CUBE_POS_Y == 0 {
        #[unroll]
        for j in 0..k {
            window_out[bi * dims.n_b + j * dims.n_k + d] =
                F::cast_from(full_at::<F>(x, window, &dims, base_x, base_w, len + j, k));
        }
    }

    // Runs are strided over grid y (at most 65535 cubes on CUDA).
    let mut run = CUBE_POS_Y as usize;
    loop {
        let t0 = run * CONV_RUN;
        if t0 >= len {
            break;
        }
        // win[j] = full[t + 1 + j] for the current t; starts at t = t0.
        let mut win = Array::<f32>::new(k);
        #[unroll]
        for j in 0..k - 1 {
            win[j + 1] = full_at::<F>(x, window, &dims, base_x, base_w, t0 + 1 + j, k);
        }
        #[unroll]
        for r in 0..CONV_RUN {
            let t = t0 + r;
            if t < len {
                #[unroll]
                for j in 0..k - 1 {
                    win[j] = win[j + 1];
                }
                // full[t + K] is x[t].
                win[k - 1] = f32::cast_from(x[base_x + t * dims.x_l]);
                let mut acc = b0;
                #[unroll]
                for j in 0..k {
                    acc += taps[j] * win[j];
                }
                let silu = acc / (1.0 + f32::exp(-acc));
                out[base_o + t * so] = F::cast_from(silu);
            }
        }
        run += CUBE_COUNT_Y as usize;
    }
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
    let bias = bias.map(into_contiguous).unwrap_or_else(|| weight.clone());
    let runs = (len.div_ceil(CONV_RUN) as u32).clamp(1, MAX_GRID_Y);
    let (x, window) = (unit_last(x), unit_last(window));
    let (xs, ws, ts) = (x.meta.strides(), window.meta.strides(), weight.meta.strides());
    let (os, ns) = (out.meta.strides(), window_out.meta.strides());
    let dims = ConvDimsLaunch::new(len, di, xs[0], xs[1], ws[0], ws[1], ts[0], ts[1], os[0], os[1], ns[0], ns[1]);
    // SAFETY: the kernel guards every index it forms by the sizes passed (channel bound, chunk and
    // sequence ends) and addresses each operand through its strides (unit over channels: made so
    // above or fresh), so the unchecked launch reads and writes only inside its tensors.
    unsafe {
        causal_conv1d_kernel::launch_unchecked(
            &client,
            CubeCount::Static((di as u32).div_ceil(ELEMWISE_CUBE), runs, bsz as u32),
            CubeDim::new_1d(ELEMWISE_CUBE),
            x.into_array_arg(),
            window.into_array_arg(),
            weight.into_array_arg(),
            bias.into_array_arg(),
            out.clone().into_array_arg(),
            window_out.clone().into_array_arg(),
            dims,
            k,
            has_bias,
            [tf, tw],
        )
    };
    (out, window_out)
}

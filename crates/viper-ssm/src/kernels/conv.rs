//! Causal depthwise conv1d + SiLU (spec §6.3 step 3, §6.4 step 2) as one CubeCL kernel, for a sequence
//! and for the one-token update alike.
//!
//! ```text
//! full      = window ++ x                      (window: the last K inputs before x, [b, K, I])
//! out_t[d]  = silu(bias[d] + Σ_{j<K} w[d, j] · full[t + 1 + j][d])     (tap K−1 is the current input)
//! window'   = full[L .. L + K]                 (the last K inputs, for the next call)
//! ```
//!
//! One thread per (batch, position, channel): grid x = channel tiles (coalesced), y = positions, z = batch. Positions `t < L` write an
//! output; positions `t < K` also copy one slot of the new window, so the grid covers `max(L, K)`
//! positions and a decode step (`L = 1`) is a single launch. Arithmetic in f32; `x`, `window` and the
//! outputs share the storage dtype `F`, the taps and bias have dtype `W`.

use cubecl::prelude::*;

/// `full[p][d]` for `p` in `0 .. K + L`: the window first, then `x`.
#[cube]
fn full_at<F: Float>(x: &Tensor<F>, window: &Tensor<F>, bi: usize, p: usize, d: usize) -> F {
    let k = window.shape(1);
    if p < k {
        window[bi * window.stride(0) + p * window.stride(1) + d * window.stride(2)]
    } else {
        x[bi * x.stride(0) + (p - k) * x.stride(1) + d * x.stride(2)]
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_kernel<F: Float, W: Float>(
    x: &Tensor<F>,
    window: &Tensor<F>,
    weight: &Tensor<W>,
    bias: &Tensor<W>,
    out: &mut Tensor<F>,
    window_out: &mut Tensor<F>,
    #[comptime] k: usize,
    #[comptime] has_bias: bool,
    #[define(F, W)] _dtypes: [StorageType; 2],
) {
    let n_inner = x.shape(2);
    let len = x.shape(1);
    let positions = usize::max(len, k);
    let d = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let bi = CUBE_POS_Z as usize;
    if d >= n_inner {
        terminate!();
    }
    // Positions are strided over grid y (at most 65535 cubes on CUDA).
    let mut t = CUBE_POS_Y as usize;
    loop {
        if t >= positions {
            break;
        }
        conv_at::<F, W>(x, window, weight, bias, out, window_out, bi, t, d, k, has_bias);
        t += CUBE_COUNT_Y as usize;
    }
}

/// One (batch, position, channel) of [`causal_conv1d_kernel`].
#[cube]
#[allow(clippy::too_many_arguments)]
fn conv_at<F: Float, W: Float>(
    x: &Tensor<F>,
    window: &Tensor<F>,
    weight: &Tensor<W>,
    bias: &Tensor<W>,
    out: &mut Tensor<F>,
    window_out: &mut Tensor<F>,
    bi: usize,
    t: usize,
    d: usize,
    #[comptime] k: usize,
    #[comptime] has_bias: bool,
) {
    let len = x.shape(1);
    if t < len {
        let mut acc = 0.0f32;
        if has_bias {
            acc = f32::cast_from(bias[d * bias.stride(0)]);
        }
        #[unroll]
        for j in 0..k {
            let w = f32::cast_from(weight[d * weight.stride(0) + j * weight.stride(1)]);
            acc += w * f32::cast_from(full_at::<F>(x, window, bi, t + 1 + j, d));
        }
        let silu = acc / (1.0 + f32::exp(-acc));
        out[bi * out.stride(0) + t * out.stride(1) + d * out.stride(2)] = F::cast_from(silu);
    }
    if t < k {
        window_out[bi * window_out.stride(0) + t * window_out.stride(1) + d * window_out.stride(2)] =
            full_at::<F>(x, window, bi, len + t, d);
    }
}

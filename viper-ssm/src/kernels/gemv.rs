//! Matrix–vector products for the decode step (spec §6.4: in_proj, x_proj, dt_proj, out_proj, lm_head
//! at one token per sequence):
//!
//! ```text
//! out[r, n] = Σ_k x[r, k] · W[k, n]  (+ bias[n])      r < rows ≤ GEMV_MAX_ROWS, f32 accumulation
//! ```
//!
//! `W` is a Linear weight `[d_in, d_out]` as the loader builds it: a transposed view of the checkpoint's
//! `[d_out, d_in]` buffer, so each output column `n` is contiguous over `k`. `split` rows of 32 threads (a
//! warp each on CUDA) own one output column: their lanes stride over `k` (each weight load of a row is
//! 64–128 contiguous bytes), keep one partial sum per input row, and reduce through shared memory. A cube
//! holds [`GEMV_THREAD_ROWS`] such rows, i.e. `8 / split` columns; few, long columns (x_proj: 288 × 8192)
//! take a larger split so that enough warps stream the weight. At batch 1 the weight is read exactly
//! once, which is what bounds decode.

use cubecl::prelude::*;

/// Sizes and strides (in elements) of a [`gemv_kernel`](fn@gemv_kernel) launch: `x` is `[b, l, k]`, the weight
/// `[k, n]`, `out` a contiguous `[b, l, n]`, the bias contiguous.
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct GemvDims {
    /// Positions per sequence (`l`).
    pub len: usize,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// `x` stride over `b`.
    pub x_b: usize,
    /// `x` stride over `l`.
    pub x_l: usize,
    /// `x` stride over `k`.
    pub x_k: usize,
    /// Weight stride over `k`.
    pub w_k: usize,
    /// Weight stride over `n`.
    pub w_n: usize,
    /// `out` stride over `b`.
    pub o_b: usize,
    /// `out` stride over `l`.
    pub o_l: usize,
}

/// Input rows (batch × positions) at most: one accumulator per row lives in registers.
pub const GEMV_MAX_ROWS: usize = 8;

/// Lanes per output column: 32 consecutive `k` per load instruction.
pub const GEMV_LANES: u32 = 32;

/// Rows of [`GEMV_LANES`] threads per cube: 8 × 32 = 256 threads.
pub const GEMV_THREAD_ROWS: u32 = 8;

/// Independent weight loads in flight per lane per iteration (memory-level parallelism). On the H100, 8
/// sped up x_proj (few columns) but slowed in_proj/out_proj and the decode step overall (BENCHMARKS.md).
const UNROLL: usize = 4;

/// Grid: x = column tiles of `8 / split`; cube (32, [`GEMV_THREAD_ROWS`]); thread row `y` works on column
/// `y / split` of the tile and on the `k` of its part `y % split`. `x` is `[b, l, k]` with `b · l = rows`,
/// `out` is `[b, l, n]`. `x` and `weight` are read as `N`-wide vectors along `k` (16 bytes when the host
/// finds `k`, the strides and the layout allow it, else 1): a warp's load is then 512 contiguous bytes
/// instead of 64, which is what lets a few thousand warps keep HBM busy.
///
/// Buffers are plain arrays and every size and stride (in elements) a scalar argument (see [`GemvDims`]):
/// CubeCL passes scalars in the launch's parameter block, whereas tensor arguments make it upload their
/// shapes and strides to the device on every launch, which is most of a decode launch's host cost.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn gemv_kernel<F: Float, W: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    weight: &Array<Vector<W, N>>,
    bias: &Array<W>,
    out: &mut Array<F>,
    dims: GemvDims,
    #[comptime] rows: usize,
    #[comptime] split: usize,
    #[comptime] has_bias: bool,
    #[define(F, W)] _dtypes: [StorageType; 2],
) {
    let lanes = comptime!(GEMV_LANES as usize);
    let nv = N::value();
    let lane = UNIT_POS_X as usize;
    let trow = UNIT_POS_Y as usize;
    let col = trow / split;
    let part = trow % split;
    let n_out = dims.n;
    // Vectors per column (the host checked that `N` divides `k`).
    let k_vecs = dims.k / nv;
    let n_raw = CUBE_POS_X as usize * comptime!(GEMV_THREAD_ROWS as usize / split) + col;
    // Columns past the end compute on the last one (no early exit before the barriers) and store nothing.
    let n = usize::min(n_raw, n_out - 1);
    let len = dims.len;
    // Along `k` both are contiguous when `N > 1`; with `N = 1` the strides are honoured.
    let (sw, sx) = (dims.w_k, dims.x_k);
    let base_w = n * dims.w_n / nv;

    let mut base_x = Array::<usize>::new(rows);
    let mut acc = Array::<f32>::new(rows);
    #[unroll]
    for r in 0..rows {
        base_x[r] = ((r / len) * dims.x_b + (r % len) * dims.x_l) / nv;
        acc[r] = 0.0;
    }

    let step = comptime!(split * GEMV_LANES as usize);
    let mut k0 = part * lanes + lane;
    while k0 < k_vecs {
        #[unroll]
        for u in 0..UNROLL {
            let k = k0 + u * step;
            if k < k_vecs {
                let w = weight[base_w + k * sw];
                #[unroll]
                for r in 0..rows {
                    let xv = x[base_x[r] + k * sx];
                    #[unroll]
                    for e in 0..nv {
                        acc[r] += f32::cast_from(w[e]) * f32::cast_from(xv[e]);
                    }
                }
            }
        }
        k0 += UNROLL * step;
    }
    // Sum the lanes of each column: a tree over shared memory, all threads reaching every barrier.
    let mut shared = SharedMemory::<f32>::new(rows * comptime!(GEMV_THREAD_ROWS as usize) * lanes);
    let slot = trow * lanes + lane;
    let stride_r = comptime!(GEMV_THREAD_ROWS as usize) * lanes;
    #[unroll]
    for r in 0..rows {
        shared[r * stride_r + slot] = acc[r];
    }
    sync_cube();
    // A runtime counter: comptime values cannot be updated in a loop.
    let mut half = CUBE_DIM_X as usize / 2;
    while half > 0 {
        if lane < half {
            #[unroll]
            for r in 0..rows {
                shared[r * stride_r + slot] += shared[r * stride_r + slot + half];
            }
        }
        sync_cube();
        half /= 2;
    }

    // Lane 0 of a column's first part adds the parts' sums (in order) and the bias.
    if lane == 0 && part == 0 && n_raw < n_out {
        let mut b0 = 0.0f32;
        if has_bias {
            b0 += f32::cast_from(bias[n]);
        }
        #[unroll]
        for r in 0..rows {
            let mut sum = 0.0f32;
            #[unroll]
            for p in 0..split {
                sum += shared[r * stride_r + (trow + p) * lanes];
            }
            let o = (r / len) * dims.o_b + (r % len) * dims.o_l + n;
            out[o] = F::cast_from(sum + b0);
        }
    }
}

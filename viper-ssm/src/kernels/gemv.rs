//! Matrix–vector products for the decode step (docs/spec.md §6.4: in_proj, x_proj, dt_proj, out_proj, lm_head
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
//!
//! Below the kernel, its launcher [`gemv`](fn@gemv) and the check [`gemv_applies`].

// `#[cube]` and the `CubeType`/`CubeLaunch` derives emit public items (kernel modules, `*Launch`) no doc reaches.
#![allow(missing_docs)]

use burn::tensor::TensorMetadata;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{ops::numeric::empty_device_dtype, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

use super::{dims3, st};

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

/// Whether [`gemv`](fn@gemv) applies: few input rows, a 2-D weight whose columns are contiguous over `d_in`
/// (the loader's transposed view of a checkpoint's `[d_out, d_in]`), and one dtype for x and weight.
pub fn gemv_applies<R: CubeRuntime>(x: &CubeTensor<R>, weight: &CubeTensor<R>) -> bool {
    let [b, l, _] = dims3(x);
    let rows = b * l;
    (1..=GEMV_MAX_ROWS).contains(&rows) && weight.meta.strides()[0] == 1 && x.dtype == weight.dtype
}

/// Warps per output column of [`gemv`](fn@gemv): enough columns × warps to keep ~8k warps streaming the weight
/// (x_proj's 288 columns get 8, out_proj's 4096 get 2, in_proj's 16384 and lm_head 1).
fn gemv_split(n: usize) -> usize {
    const TARGET_WARPS: usize = 8192;
    (TARGET_WARPS / n.max(1)).next_power_of_two().clamp(1, GEMV_THREAD_ROWS as usize)
}

/// `x · W (+ bias)` for `x` `[b, l, d_in]` with `b · l ≤` [`GEMV_MAX_ROWS`]; see [`gemv`](fn@gemv).
/// Check [`gemv_applies`] first.
pub fn gemv<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>, bias: Option<CubeTensor<R>>) -> CubeTensor<R> {
    let [b, l, k] = dims3(&x);
    let n = weight.shape()[1];
    let client = x.client.clone();
    let out = empty_device_dtype(client.clone(), x.device.clone(), burn::tensor::Shape::new([b, l, n]), x.dtype);
    let has_bias = bias.is_some();
    let (tf, tw) = (st(x.dtype), st(weight.dtype));
    // Not read without a bias; any tensor of the weight dtype will do as the argument.
    let bias = bias.map(into_contiguous).unwrap_or_else(|| weight.clone());
    let split = gemv_split(n);
    let columns = GEMV_THREAD_ROWS / split as u32;
    let vector = gemv_vector_size(&x, &weight);
    let (xs, ws, os) = (x.meta.strides(), weight.meta.strides(), out.meta.strides());
    // (The allocator may pitch `out`'s rows: its strides are read, not assumed.)
    let dims = GemvDimsLaunch::new(l, k, n, xs[0], xs[1], xs[2], ws[0], ws[1], os[0], os[1]);
    // SAFETY: columns past n are clamped for loads and store nothing; k stays below d_in; rows below
    // b · l address x and out through the strides passed; shared memory is sized from the same
    // comptime values.
    unsafe {
        gemv_kernel::launch_unchecked(
            &client,
            CubeCount::Static((n as u32).div_ceil(columns), 1, 1),
            CubeDim::new_2d(GEMV_LANES, GEMV_THREAD_ROWS),
            vector,
            x.into_array_arg(),
            weight.into_array_arg(),
            bias.into_array_arg(),
            out.clone().into_array_arg(),
            dims,
            b * l,
            split,
            has_bias,
            [tf, tw],
        )
    };
    out
}

/// Elements per 16-byte load along `k` for [`gemv`](fn@gemv), or 1 where the layout does not allow it: `k` and
/// every stride other than `k`'s must be multiples of it, and `k` contiguous in both operands. (Buffer
/// offsets are aligned: Burn copies slices whose offsets are not.)
fn gemv_vector_size<R: CubeRuntime>(x: &CubeTensor<R>, weight: &CubeTensor<R>) -> usize {
    let v = 16 / x.dtype.size().max(weight.dtype.size());
    let (xs, ws) = (x.meta.strides(), weight.meta.strides());
    let k = weight.shape()[0];
    let ok = v > 1
        && k.is_multiple_of(v)
        && xs[2] == 1
        && ws[0] == 1
        && (xs[0].is_multiple_of(v) || x.shape()[0] == 1)
        && (xs[1].is_multiple_of(v) || x.shape()[1] == 1)
        && ws[1].is_multiple_of(v);
    if ok {
        v
    } else {
        1
    }
}

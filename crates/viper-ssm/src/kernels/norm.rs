//! RMS normalisation as transformers computes it (spec §6.2, §6.3 step 4), fused into one kernel:
//!
//! ```text
//! v_j     = f32(round_R(x_j))                      (the stream rounded to the weight dtype R first)
//! inv_s   = 1 / sqrt(mean_{j ∈ s}(v_j²) + eps)      (per segment s of the row)
//! out_j   = round_O(f32(round_R(v_j · inv_s)) · w_j)   (no weight: out_j = round_R(v_j · inv_s))
//! ```
//!
//! One cube per row (batch, position); its threads stride over the columns, each keeping one partial
//! sum of squares per segment, reduced through shared memory. A row may hold up to three segments
//! normalised separately: FalconMamba's weightless norms of x_proj's `[dt | B | C]` are one launch.
//! Without fusion a norm is ~8 element-wise launches; a decode step is bound by launch count.

use cubecl::prelude::*;

/// Threads per row: a 4096-wide row is 16 loads per thread, issued 4 at a time ([`UNROLL`]); the tree
/// reduction takes log₂ 256 = 8 barriers. (A decode step normalises single rows, so the latency of
/// one cube is what counts.)
pub const NORM_CUBE: u32 = 256;

/// Independent loads in flight per thread.
const UNROLL: usize = 4;

/// Segments a row may be split into (dt, B, C).
const SEGMENTS: usize = 3;

/// Grid: x = position, y = batch; cube: [`NORM_CUBE`] threads. Segment `s` is columns
/// `[bound[s], bound[s + 1])` with bounds `0, seg1, seg2, cols`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_kernel<X: Float, R: Float, Wt: Float, O: Float>(
    x: &Tensor<X>,
    weight: &Tensor<Wt>,
    out: &mut Tensor<O>,
    seg1: usize,
    seg2: usize,
    eps: f32,
    #[comptime] has_weight: bool,
    #[define(X, R, Wt, O)] _dtypes: [StorageType; 4],
) {
    let t = CUBE_POS_X as usize;
    let bi = CUBE_POS_Y as usize;
    let tid = UNIT_POS_X as usize;
    let threads = comptime!(NORM_CUBE as usize);
    let cols = x.shape(2);
    let base_x = bi * x.stride(0) + t * x.stride(1);
    let sx = x.stride(2);

    let mut sums = Array::<f32>::new(SEGMENTS);
    #[unroll]
    for s in 0..SEGMENTS {
        sums[s] = 0.0;
    }
    let mut j0 = tid;
    while j0 < cols {
        #[unroll]
        for u in 0..UNROLL {
            let j = j0 + u * threads;
            if j < cols {
                let v = f32::cast_from(R::cast_from(x[base_x + j * sx]));
                let sq = v * v;
                sums[0] += select(j < seg1, sq, 0.0);
                sums[1] += select(j >= seg1 && j < seg2, sq, 0.0);
                sums[2] += select(j >= seg2, sq, 0.0);
            }
        }
        j0 += UNROLL * threads;
    }

    // Tree reduction of the three partial sums over the cube.
    let mut shared = SharedMemory::<f32>::new(SEGMENTS * threads);
    #[unroll]
    for s in 0..SEGMENTS {
        shared[s * threads + tid] = sums[s];
    }
    sync_cube();
    // A runtime counter (the cube size): comptime values cannot be updated in a loop.
    let mut half = CUBE_DIM_X as usize / 2;
    while half > 0 {
        if tid < half {
            #[unroll]
            for s in 0..SEGMENTS {
                shared[s * threads + tid] += shared[s * threads + tid + half];
            }
        }
        sync_cube();
        half /= 2;
    }
    let n0 = f32::cast_from(usize::max(seg1, 1));
    let n1 = f32::cast_from(usize::max(seg2 - seg1, 1));
    let n2 = f32::cast_from(usize::max(cols - seg2, 1));
    let inv0 = 1.0 / f32::sqrt(shared[0] / n0 + eps);
    let inv1 = 1.0 / f32::sqrt(shared[threads] / n1 + eps);
    let inv2 = 1.0 / f32::sqrt(shared[2 * threads] / n2 + eps);

    let base_o = bi * out.stride(0) + t * out.stride(1);
    let so = out.stride(2);
    let mut j0 = tid;
    while j0 < cols {
        #[unroll]
        for u in 0..UNROLL {
            let j = j0 + u * threads;
            if j < cols {
                let v = f32::cast_from(R::cast_from(x[base_x + j * sx]));
                let scale = select(j < seg1, inv0, select(j < seg2, inv1, inv2));
                let normed = f32::cast_from(R::cast_from(v * scale));
                if has_weight {
                    out[base_o + j * so] = O::cast_from(normed * f32::cast_from(weight[j * weight.stride(0)]));
                } else {
                    out[base_o + j * so] = O::cast_from(normed);
                }
            }
        }
        j0 += UNROLL * threads;
    }
}

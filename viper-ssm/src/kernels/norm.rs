//! RMS normalisation as transformers computes it (docs/spec.md §6.2, §6.3 step 5), fused into one kernel:
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
//!
//! Below the kernels, their launchers [`rms_norm`] and [`add_rms_norm`].

// `#[cube]` and the `CubeType`/`CubeLaunch` derives emit public items (kernel modules, `*Launch`) no doc reaches.
#![allow(missing_docs)]

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{ops::numeric::empty_device_dtype, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

use super::{dims3, st};

/// Threads per row: a 4096-wide row is 16 loads per thread, issued 4 at a time (`UNROLL`); the tree
/// reduction takes log₂ 256 = 8 barriers. (A decode step normalises single rows, so the latency of
/// one cube is what counts.)
pub const NORM_CUBE: u32 = 256;

/// Threads per row of [`add_rms_norm_kernel`](fn@add_rms_norm_kernel) where the device allows cubes this large: a 4096-wide
/// decode row is then one round of `UNROLL` loads per thread and pass, where 256 threads needed four
/// dependent rounds (13 µs per launch on an H200, ~all latency).
pub const ADD_NORM_CUBE_MAX: u32 = 1024;

/// Independent loads in flight per thread.
const UNROLL: usize = 4;

/// Segments a row may be split into (dt, B, C).
const SEGMENTS: usize = 3;

/// Grid: x = position, y = batch; cube: [`NORM_CUBE`] threads. Segment `s` is columns
/// `[bound[s], bound[s + 1])` with bounds `0, seg1, seg2, cols`. With `split`, `out` is one flat buffer
/// holding each segment as its own contiguous `[rows, width]` block, the blocks starting at element 0,
/// `off1` and `off2` (the host aligns them so that each block is a tensor view of its own: dt, B and C
/// reach their consumers without copies); otherwise `out` is `[b, l, cols]`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_kernel<X: Float, R: Float, Wt: Float, O: Float>(
    x: &Tensor<X>,
    weight: &Tensor<Wt>,
    out: &mut Tensor<O>,
    seg1: usize,
    seg2: usize,
    off1: usize,
    off2: usize,
    eps: f32,
    #[comptime] has_weight: bool,
    #[comptime] split: bool,
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
    // Split: this row's start in each segment's block.
    let row = bi * x.shape(1) + t;
    // (Wraps when not split; then unused.)
    let sb0 = row * seg1;
    let sb1 = off1 + row * (seg2 - seg1) - seg1;
    let sb2 = off2 + row * (cols - seg2) - seg2;
    let mut j0 = tid;
    while j0 < cols {
        #[unroll]
        for u in 0..UNROLL {
            let j = j0 + u * threads;
            if j < cols {
                let v = f32::cast_from(R::cast_from(x[base_x + j * sx]));
                let scale = select(j < seg1, inv0, select(j < seg2, inv1, inv2));
                let normed = f32::cast_from(R::cast_from(v * scale));
                let mut o = base_o + j * so;
                if split {
                    o = select(j < seg1, sb0, select(j < seg2, sb1, sb2)) + j;
                }
                if has_weight {
                    out[o] = O::cast_from(normed * f32::cast_from(weight[j * weight.stride(0)]));
                } else {
                    out[o] = O::cast_from(normed);
                }
            }
        }
        j0 += UNROLL * threads;
    }
}

/// The sum of `shared[0 .. CUBE_DIM)` (a power of two), each unit having written `shared[UNIT_POS]`
/// first; every unit of the cube must call it (it synchronises the cube). Halves the live range per
/// barrier, leaving the total in `shared[0]`.
#[cube]
pub fn cube_sum(shared: &mut SharedMemory<f32>) -> f32 {
    let tid = UNIT_POS as usize;
    sync_cube();
    // A runtime counter (the cube size): comptime values cannot be updated in a loop.
    let mut half = CUBE_DIM as usize / 2;
    while half > 0 {
        if tid < half {
            shared[tid] += shared[tid + half];
        }
        sync_cube();
        half /= 2;
    }
    shared[0]
}

/// Sizes and strides (in elements) of an [`add_rms_norm_kernel`](fn@add_rms_norm_kernel) launch over `[b, l, cols]` rows;
/// the outputs are unit-stride over columns, the weight contiguous.
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct AddNormDims {
    /// Columns per row.
    pub cols: usize,
    /// `h` stride over `b`.
    pub h_b: usize,
    /// `h` stride over `l`.
    pub h_l: usize,
    /// `h` stride over columns.
    pub h_c: usize,
    /// `y` stride over `b`.
    pub y_b: usize,
    /// `y` stride over `l`.
    pub y_l: usize,
    /// `y` stride over columns.
    pub y_c: usize,
    /// Stream output stride over `b`.
    pub s_b: usize,
    /// Stream output stride over `l`.
    pub s_l: usize,
    /// Normalised output stride over `b`.
    pub o_b: usize,
    /// Normalised output stride over `l`.
    pub o_l: usize,
}

/// The residual add of the next block fused with its norm (docs/spec.md §6.2: `h = h + mixer(norm(h))`, then the
/// next block's `norm(h)`):
///
/// ```text
/// s_j   = round_S(f32(h_j) + f32(y_j))          (the stream, f32 with residual_in_fp32)
/// out_j = rms_norm(s)_j                          (as rms_norm_kernel, one segment)
/// ```
///
/// Writes both `s` (the new stream) and `out`. Same grid as [`rms_norm_kernel`](fn@rms_norm_kernel), `threads` per cube; one launch
/// instead of the cast, the add and the norm. It runs once per layer and decode step, so it takes
/// arrays and scalar strides (see [`gemv_kernel`](fn@super::gemv::gemv_kernel)).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm_kernel<X: Float, Y: Float, S: Float, R: Float, Wt: Float, O: Float>(
    h: &Array<X>,
    y: &Array<Y>,
    weight: &Array<Wt>,
    sum_out: &mut Array<S>,
    out: &mut Array<O>,
    dims: AddNormDims,
    eps: f32,
    #[comptime] threads: usize,
    #[comptime] has_weight: bool,
    #[define(X, Y, S, R, Wt, O)] _dtypes: [StorageType; 6],
) {
    let t = CUBE_POS_X as usize;
    let bi = CUBE_POS_Y as usize;
    let tid = UNIT_POS_X as usize;
    let cols = dims.cols;
    let (bh, sh) = (bi * dims.h_b + t * dims.h_l, dims.h_c);
    let (by, sy) = (bi * dims.y_b + t * dims.y_l, dims.y_c);
    let bs = bi * dims.s_b + t * dims.s_l;

    let mut sum = 0.0f32;
    let mut j0 = tid;
    while j0 < cols {
        #[unroll]
        for u in 0..UNROLL {
            let j = j0 + u * threads;
            if j < cols {
                let s = S::cast_from(f32::cast_from(h[bh + j * sh]) + f32::cast_from(y[by + j * sy]));
                sum_out[bs + j] = s;
                let v = f32::cast_from(R::cast_from(s));
                sum += v * v;
            }
        }
        j0 += UNROLL * threads;
    }

    let mut shared = SharedMemory::<f32>::new(threads);
    shared[tid] = sum;
    let total = cube_sum(&mut shared);
    let inv = 1.0 / f32::sqrt(total / f32::cast_from(cols) + eps);

    let bo = bi * dims.o_b + t * dims.o_l;
    let mut j0 = tid;
    while j0 < cols {
        #[unroll]
        for u in 0..UNROLL {
            let j = j0 + u * threads;
            if j < cols {
                // Each thread reads back only the stream values it wrote itself.
                let v = f32::cast_from(R::cast_from(sum_out[bs + j]));
                let normed = f32::cast_from(R::cast_from(v * inv));
                if has_weight {
                    out[bo + j] = O::cast_from(normed * f32::cast_from(weight[j]));
                } else {
                    out[bo + j] = O::cast_from(normed);
                }
            }
        }
        j0 += UNROLL * threads;
    }
}

/// RMS norm of each row of `x` (`[b, l, d]`, any strides) in up to three segments (bounds
/// `segments`); see [`rms_norm_kernel`](fn@rms_norm_kernel). `round` is the dtype `x` is rounded to
/// first, `out_dtype` that of the result ([`RmsNormInput::out_dtype`](crate::RmsNormInput::out_dtype)).
/// With `split`, returns the three segments as separate contiguous tensors (views of one buffer), else
/// one tensor.
pub fn rms_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: Option<CubeTensor<R>>,
    eps: f64,
    round: DType,
    out_dtype: DType,
    segments: [usize; 2],
    split: bool,
) -> Vec<CubeTensor<R>> {
    let [bsz, len, d] = dims3(&x);
    let client = x.client.clone();
    let [s1, s2] = [segments[0].min(d), segments[1].clamp(segments[0].min(d), d)];
    let rows = bsz * len;
    // Split: one buffer, each segment's `[rows, width]` block starting at an aligned offset.
    let widths = [s1, s2 - s1, d - s2];
    let align = (client.properties().memory.alignment as usize / out_dtype.size()).max(1);
    let blocks = widths.map(|w| (rows * w).div_ceil(align) * align);
    let out = if split {
        let total = blocks.iter().sum::<usize>().max(1);
        empty_device_dtype(client.clone(), x.device.clone(), Shape::new([total]), out_dtype)
    } else {
        empty_device_dtype(client.clone(), x.device.clone(), x.shape(), out_dtype)
    };
    let has_weight = weight.is_some();
    let (tx, tw) = (st(x.dtype), weight.as_ref().map_or(st(round), |w| st(w.dtype)));
    // Not read without a weight; any tensor will do as the argument.
    let weight = weight.unwrap_or_else(|| x.clone());
    let (off1, off2) = (blocks[0], blocks[0] + blocks[1]);
    // SAFETY: one cube per (position, batch) row, inside the grid; columns stay below d, the weight
    // is read only when present (length d); split blocks lie inside the buffer sized above.
    unsafe {
        rms_norm_kernel::launch_unchecked(
            &client,
            CubeCount::Static(len as u32, bsz as u32, 1),
            CubeDim::new_1d(NORM_CUBE),
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            s1,
            s2,
            off1,
            off2,
            eps as f32,
            has_weight,
            split,
            [tx, st(round), tw, st(out_dtype)],
        )
    };
    if !split {
        return vec![out];
    }
    let size = out_dtype.size() as u64;
    let total = blocks.iter().sum::<usize>() as u64 * size;
    let mut start = 0u64;
    let mut views = Vec::with_capacity(3);
    for (w, block) in widths.into_iter().zip(blocks) {
        let bytes = block as u64 * size;
        let handle = out.handle.clone().offset_start(start).offset_end(total - start - bytes);
        let shape = Shape::new([bsz, len, w]);
        views.push(CubeTensor::new_contiguous(client.clone(), out.device.clone(), shape, handle, out_dtype));
        start += bytes;
    }
    views
}

/// `s = round_stream(h + y)` and its RMS norm (one segment) in one launch; returns `(s, norm(s))`.
/// See [`add_rms_norm_kernel`](fn@add_rms_norm_kernel).
pub fn add_rms_norm<R: CubeRuntime>(
    h: CubeTensor<R>,
    y: CubeTensor<R>,
    weight: Option<CubeTensor<R>>,
    eps: f64,
    stream: DType,
    round: DType,
    out_dtype: DType,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let [bsz, len, _] = dims3(&h);
    let client = h.client.clone();
    let sum = empty_device_dtype(client.clone(), h.device.clone(), h.shape(), stream);
    let out = empty_device_dtype(client.clone(), h.device.clone(), h.shape(), out_dtype);
    let has_weight = weight.is_some();
    let (th, ty, tw) = (st(h.dtype), st(y.dtype), weight.as_ref().map_or(st(round), |w| st(w.dtype)));
    let weight = weight.map(into_contiguous).unwrap_or_else(|| sum.clone());
    let (hs, ys, ss, os) = (h.meta.strides(), y.meta.strides(), sum.meta.strides(), out.meta.strides());
    let threads = if client.properties().hardware.max_units_per_cube >= ADD_NORM_CUBE_MAX {
        ADD_NORM_CUBE_MAX as usize
    } else {
        NORM_CUBE as usize
    };
    let dims =
        AddNormDimsLaunch::new(h.shape()[2], hs[0], hs[1], hs[2], ys[0], ys[1], ys[2], ss[0], ss[1], os[0], os[1]);
    // SAFETY: one cube per (position, batch) row, inside the grid; columns stay below d and every
    // operand is addressed through its strides (outputs fresh, unit-stride over columns); the weight
    // is read only when present (contiguous, length d).
    unsafe {
        add_rms_norm_kernel::launch_unchecked(
            &client,
            CubeCount::Static(len as u32, bsz as u32, 1),
            CubeDim::new_1d(threads as u32),
            h.into_array_arg(),
            y.into_array_arg(),
            weight.into_array_arg(),
            sum.clone().into_array_arg(),
            out.clone().into_array_arg(),
            dims,
            eps as f32,
            threads,
            has_weight,
            [th, ty, st(stream), st(round), tw, st(out_dtype)],
        )
    };
    (sum, out)
}

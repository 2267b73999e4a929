//! Hand-written CubeCL kernels behind [`SsmBackend`](crate::SsmBackend) on the CubeCL backends (CUDA,
//! wgpu): the selective scan ([`scan`]: a block scan for prefill, a sequential one for the decode
//! step) and the causal depthwise conv ([`conv`]). This module is the host side: it picks the kernel
//! and launch shape, allocates outputs and launches.
//!
//! The decode-step kernels take arrays plus scalar sizes and strides instead of tensors: CubeCL 0.10
//! passes scalars in the launch's parameter block but uploads every tensor argument's shape and strides
//! to the device per launch, and at batch 1 that host work, not the GPU, bounded decode.

pub mod conv;
pub mod gemv;
pub mod norm;
pub mod scan;

use std::sync::OnceLock;

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{ops::numeric::empty_device_dtype, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

/// Channels handled by one cube of [`scan::scan_sequential`](fn@scan::scan_sequential) (threads of a cube are consecutive
/// channels): 128 keeps a cube's `u`/Δ/`z` row reads at 256 B (bf16) to 512 B (f32).
pub const SCAN_CHANNELS_PER_CUBE: u32 = 128;

/// Longest sequence run by [`scan::scan_sequential`](fn@scan::scan_sequential); longer ones go to [`scan::scan_block`](fn@scan::scan_block), whose
/// tile (`warps · items` steps) would be mostly padding below this.
pub const SCAN_SEQUENTIAL_MAX_LEN: usize = 16;

/// Rows (time segments) of a [`scan::scan_block`](fn@scan::scan_block) cube: 8 × 32 lanes = 256 threads. With falcon-mamba's
/// d_inner 8192 at batch 1 that is 256 cubes, ~2 per H100 SM (16 warps each), and the per-group fold
/// over the rows before a thread costs on average 3.5 shared-memory pairs per 32 (step, state) elements.
pub const SCAN_BLOCK_WARPS: usize = 8;

/// Steps per thread per tile of [`scan::scan_block`](fn@scan::scan_block): 8 keeps `q` (8 × 4 floats) and the per-step
/// Δ, Δu, y and z (4 × 8) in registers while amortising a group's barrier and fold over 32 elements.
pub const SCAN_BLOCK_ITEMS: usize = 8;

/// Rows from which the CUDA runtime's projections go through cuBLAS (the `cublas` module): the GEMV
/// covers up to `GEMV_MAX_ROWS`; in between, Burn's product. Each cuBLAS call costs two host
/// synchronisations, worth it once the product is a prefill's.
pub const CUBLAS_MIN_ROWS: usize = 16;

/// Threads per cube of the element-wise launches (conv).
const ELEMWISE_CUBE: u32 = 256;

/// Cubes along grid y at most (CUDA's limit); the conv strides longer sequences over it.
const MAX_GRID_Y: u32 = 65_535;

/// `(warps, items)` of the block scan, overridable as `VIPER_SCAN_BLOCK=<warps>x<items>` for
/// benchmark sweeps; read once.
pub fn scan_block_shape() -> (usize, usize) {
    static SHAPE: OnceLock<(usize, usize)> = OnceLock::new();
    *SHAPE.get_or_init(|| {
        std::env::var("VIPER_SCAN_BLOCK")
            .ok()
            .and_then(|v| {
                let (w, i) = v.split_once('x')?;
                Some((w.parse().ok()?, i.parse().ok()?))
            })
            .filter(|&(w, i): &(usize, usize)| (1..=32).contains(&w) && (1..=32).contains(&i))
            .unwrap_or((SCAN_BLOCK_WARPS, SCAN_BLOCK_ITEMS))
    })
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
    selective_scan_projected(x, None)
}

/// Whether [`selective_scan_projected`] can fold dt_proj (weight `dt_w`, `[R, I]`) into the scan of
/// `u` with low-rank `dt` (`[b, l, R]`): a short sequence (the sequential kernel) and one dtype.
pub fn scan_projects<R: CubeRuntime>(u: &CubeTensor<R>, dt: &CubeTensor<R>, dt_w: &CubeTensor<R>) -> bool {
    let [_, len, di] = dims3(u);
    len <= SCAN_SEQUENTIAL_MAX_LEN
        && dt.dtype == u.dtype
        && dt_w.dtype == u.dtype
        && dt_w.shape()[1] == di
        && dt.shape()[2] == dt_w.shape()[0]
}

/// [`selective_scan`], where with `dt_w` (check [`scan_projects`]) `x.delta` is the low-rank dt and
/// the kernel applies dt_proj itself (see [`scan::scan_sequential`](fn@scan::scan_sequential)).
pub fn selective_scan_projected<R: CubeRuntime>(
    x: ScanTensors<R>,
    dt_w: Option<CubeTensor<R>>,
) -> (CubeTensor<R>, CubeTensor<R>) {
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

    let (tf, tp, tw, ts) = (st(x.u.dtype), st(x.b.dtype), st(x.a_log.dtype), st(x.state.dtype));
    if len <= SCAN_SEQUENTIAL_MAX_LEN {
        let project = dt_w.is_some();
        // Not read without projection; any tensor of u's dtype will do as the argument.
        let dt_w = dt_w.unwrap_or_else(|| x.delta.clone());
        // SAFETY: the kernel returns before any access for channels past the last, and every other
        // index it forms is inside the shapes it reads (steps < L, states < N, batch < grid).
        unsafe {
            scan::scan_sequential::launch_unchecked(
                &client,
                CubeCount::Static((di as u32).div_ceil(SCAN_CHANNELS_PER_CUBE), bsz as u32, 1),
                CubeDim::new_1d(SCAN_CHANNELS_PER_CUBE),
                x.u.into_tensor_arg(),
                x.delta.into_tensor_arg(),
                dt_w.into_tensor_arg(),
                x.delta_bias.into_tensor_arg(),
                x.a_log.into_tensor_arg(),
                x.b.into_tensor_arg(),
                x.c.into_tensor_arg(),
                x.d.into_tensor_arg(),
                x.z.into_tensor_arg(),
                x.state.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                state_out.clone().into_tensor_arg(),
                n_state,
                project,
                [tf, tp, tw, ts],
            )
        };
    } else {
        assert!(dt_w.is_none(), "dt_proj folds only into the sequential scan (see scan_projects)");
        let (warps, items) = scan_block_shape();
        // SAFETY: channels past the last are clamped to I − 1 for loads and store nothing; steps are
        // clamped to L − 1 for loads and stored only below L; states ≥ N are never read or written;
        // shared-memory indices stay below the sizes the kernel declares from the same comptime values.
        unsafe {
            scan::scan_block::launch_unchecked(
                &client,
                CubeCount::Static((di as u32).div_ceil(scan::BLOCK_LANES), bsz as u32, 1),
                CubeDim::new_2d(scan::BLOCK_LANES, warps as u32),
                x.u.into_tensor_arg(),
                x.delta.into_tensor_arg(),
                x.delta_bias.into_tensor_arg(),
                x.a_log.into_tensor_arg(),
                x.b.into_tensor_arg(),
                x.c.into_tensor_arg(),
                x.d.into_tensor_arg(),
                x.z.into_tensor_arg(),
                x.state.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                state_out.clone().into_tensor_arg(),
                n_state,
                warps,
                items,
                [tf, tp, tw, ts],
            )
        };
    }
    (out, state_out)
}

/// Whether [`scan_step_dbc`](fn@scan_step_dbc) covers a decode step of `u` (`[b, l, I]`) from the x_proj output `dbc`
/// (`[b, l, R + 2N]`) with dt_proj weight `dt_w` (`[R, I]`): a short sequence, one activation dtype,
/// `N` = `n_state`, a rank that fits shared memory, and the layouts the kernel indexes without
/// strides (u, z and dbc contiguous along their last dim, dt_w along the rank, as the mixer and the
/// loader produce them).
pub fn step_dbc_applies<R: CubeRuntime>(
    u: &CubeTensor<R>,
    z: &CubeTensor<R>,
    dbc: &CubeTensor<R>,
    dt_w: &CubeTensor<R>,
    n_state: usize,
) -> bool {
    /// Largest rank staged in shared memory (falcon-mamba-7b: 256).
    const MAX_RANK: usize = 4096;
    let [b, len, di] = dims3(u);
    let [bd, ld, width] = dims3(dbc);
    let (rank, wi) = (dt_w.shape()[0], dt_w.shape()[1]);
    (1..=SCAN_SEQUENTIAL_MAX_LEN).contains(&len)
        && (bd, ld) == (b, len)
        && dims3(z) == [b, len, di]
        && (1..=MAX_RANK).contains(&rank)
        && width == rank + 2 * n_state
        && wi == di
        && dbc.dtype == u.dtype
        && dt_w.dtype == u.dtype
        && z.dtype == u.dtype
        && u.meta.strides()[2] == 1
        && z.meta.strides()[2] == 1
        && dbc.meta.strides()[2] == 1
        && dt_w.meta.strides()[0] == 1
}

/// The inputs of [`scan_step_dbc`](fn@scan_step_dbc) (shapes and dtypes as [`ScanTensors`], `dbc` x_proj's output,
/// `dt_w` dt_proj's weight `[R, I]`).
pub struct StepTensors<R: CubeRuntime> {
    pub u: CubeTensor<R>,
    pub dbc: CubeTensor<R>,
    pub dt_w: CubeTensor<R>,
    pub delta_bias: CubeTensor<R>,
    pub a_log: CubeTensor<R>,
    pub d: CubeTensor<R>,
    pub z: CubeTensor<R>,
    pub state: CubeTensor<R>,
}

/// A FalconMamba decode step from x_proj's output in one launch (see [`scan::scan_step_dbc`](fn@scan::scan_step_dbc)); check
/// [`step_dbc_applies`] first. Returns `(o [b, l, i], final state)` as [`selective_scan`].
pub fn scan_step_dbc<R: CubeRuntime>(x: StepTensors<R>, eps: f64) -> (CubeTensor<R>, CubeTensor<R>) {
    let [bsz, len, di] = dims3(&x.u);
    let n_state = x.a_log.shape()[1];
    let rank = x.dt_w.shape()[0];
    assert!(x.d.dtype == x.a_log.dtype && x.delta_bias.dtype == x.a_log.dtype, "D and bias must have A_log's dtype");
    let client = x.u.client.clone();
    let device = x.u.device.clone();
    let out = empty_device_dtype(client.clone(), device.clone(), x.u.shape(), x.u.dtype);
    let state_out = empty_device_dtype(client.clone(), device, x.state.shape(), x.state.dtype);
    let types = [st(x.u.dtype), st(x.a_log.dtype), st(x.state.dtype)];
    // Rows of the parameters and states are addressed through their strides (the allocator may pitch
    // rows); the last dim must be unit-stride.
    let (a_log, state) = (unit_last(x.a_log), unit_last(x.state));
    let (us, zs, xs) = (x.u.meta.strides(), x.z.meta.strides(), x.dbc.meta.strides());
    let (os, ss, sos) = (out.meta.strides(), state.meta.strides(), state_out.meta.strides());
    let dims = scan::StepDimsLaunch::new(
        len,
        di,
        us[0],
        us[1],
        zs[0],
        zs[1],
        xs[0],
        xs[1],
        x.dt_w.meta.strides()[1],
        a_log.meta.strides()[0],
        ss[0],
        ss[1],
        os[0],
        os[1],
        sos[0],
        sos[1],
    );
    // SAFETY: channels past the last are clamped to I − 1 for loads and store nothing; rank columns
    // stay below R, dbc columns below R + 2N, steps below L and batches below the grid, through the
    // strides passed (unit last strides checked by `step_dbc_applies` or made so here); shared memory
    // is sized from the same comptime values.
    unsafe {
        scan::scan_step_dbc::launch_unchecked(
            &client,
            CubeCount::Static((di as u32).div_ceil(scan::STEP_LANES), bsz as u32, 1),
            CubeDim::new_2d(scan::STEP_LANES, scan::STEP_ROWS),
            x.u.into_array_arg(),
            x.dbc.into_array_arg(),
            x.dt_w.into_array_arg(),
            into_contiguous(x.delta_bias).into_array_arg(),
            a_log.into_array_arg(),
            into_contiguous(x.d).into_array_arg(),
            x.z.into_array_arg(),
            state.into_array_arg(),
            out.clone().into_array_arg(),
            state_out.clone().into_array_arg(),
            dims,
            eps as f32,
            rank,
            n_state,
            types,
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
    let bias = bias.map(into_contiguous).unwrap_or_else(|| weight.clone());
    let runs = (len.div_ceil(conv::CONV_RUN) as u32).clamp(1, MAX_GRID_Y);
    let (x, window) = (unit_last(x), unit_last(window));
    let (xs, ws, ts) = (x.meta.strides(), window.meta.strides(), weight.meta.strides());
    let (os, ns) = (out.meta.strides(), window_out.meta.strides());
    let dims = conv::ConvDimsLaunch::new(len, di, xs[0], xs[1], ws[0], ws[1], ts[0], ts[1], os[0], os[1], ns[0], ns[1]);
    // SAFETY: the kernel guards every index it forms by the sizes passed (channel bound, chunk and
    // sequence ends) and addresses each operand through its strides (unit over channels: made so
    // above or fresh), so the unchecked launch reads and writes only inside its tensors.
    unsafe {
        conv::causal_conv1d_kernel::launch_unchecked(
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

/// RMS norm of each row of `x` (`[b, l, d]`, any strides) in up to three segments (bounds
/// `segments`); see [`norm`]. `round` is the dtype `x` is rounded to first, `out_dtype` that of the
/// result ([`RmsNormInput::out_dtype`](crate::RmsNormInput::out_dtype)). With `split`, returns the three
/// segments as separate contiguous tensors (views of one buffer), else one tensor.
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
        norm::rms_norm_kernel::launch_unchecked(
            &client,
            CubeCount::Static(len as u32, bsz as u32, 1),
            CubeDim::new_1d(norm::NORM_CUBE),
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
/// See [`norm::add_rms_norm_kernel`](fn@norm::add_rms_norm_kernel).
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
    let threads = if client.properties().hardware.max_units_per_cube >= norm::ADD_NORM_CUBE_MAX {
        norm::ADD_NORM_CUBE_MAX as usize
    } else {
        norm::NORM_CUBE as usize
    };
    let dims = norm::AddNormDimsLaunch::new(
        h.shape()[2],
        hs[0],
        hs[1],
        hs[2],
        ys[0],
        ys[1],
        ys[2],
        ss[0],
        ss[1],
        os[0],
        os[1],
    );
    // SAFETY: one cube per (position, batch) row, inside the grid; columns stay below d and every
    // operand is addressed through its strides (outputs fresh, unit-stride over columns); the weight
    // is read only when present (contiguous, length d).
    unsafe {
        norm::add_rms_norm_kernel::launch_unchecked(
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

/// Whether [`gemv`](fn@gemv) applies: few input rows, a 2-D weight whose columns are contiguous over `d_in`
/// (the loader's transposed view of a checkpoint's `[d_out, d_in]`), and one dtype for x and weight.
pub fn gemv_applies<R: CubeRuntime>(x: &CubeTensor<R>, weight: &CubeTensor<R>) -> bool {
    let [b, l, _] = dims3(x);
    let rows = b * l;
    (1..=gemv::GEMV_MAX_ROWS).contains(&rows) && weight.meta.strides()[0] == 1 && x.dtype == weight.dtype
}

/// Warps per output column of [`gemv`](fn@gemv): enough columns × warps to keep ~8k warps streaming the weight
/// (x_proj's 288 columns get 8, out_proj's 4096 get 2, in_proj's 16384 and lm_head 1).
fn gemv_split(n: usize) -> usize {
    const TARGET_WARPS: usize = 8192;
    (TARGET_WARPS / n.max(1)).next_power_of_two().clamp(1, gemv::GEMV_THREAD_ROWS as usize)
}

/// `x · W (+ bias)` for `x` `[b, l, d_in]` with `b · l ≤` [`gemv::GEMV_MAX_ROWS`]; see [`gemv`](fn@gemv).
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
    let columns = gemv::GEMV_THREAD_ROWS / split as u32;
    let vector = gemv_vector_size(&x, &weight);
    let (xs, ws, os) = (x.meta.strides(), weight.meta.strides(), out.meta.strides());
    // (The allocator may pitch `out`'s rows: its strides are read, not assumed.)
    let dims = gemv::GemvDimsLaunch::new(l, k, n, xs[0], xs[1], xs[2], ws[0], ws[1], os[0], os[1]);
    // SAFETY: columns past n are clamped for loads and store nothing; k stays below d_in; rows below
    // b · l address x and out through the strides passed; shared memory is sized from the same
    // comptime values.
    unsafe {
        gemv::gemv_kernel::launch_unchecked(
            &client,
            CubeCount::Static((n as u32).div_ceil(columns), 1, 1),
            CubeDim::new_2d(gemv::GEMV_LANES, gemv::GEMV_THREAD_ROWS),
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

/// `t` itself if its last dim is unit-stride, else a copy that is.
fn unit_last<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.meta.strides().last() == Some(&1) {
        t
    } else {
        into_contiguous(t)
    }
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

fn dims3<R: CubeRuntime>(t: &CubeTensor<R>) -> [usize; 3] {
    let s = t.shape();
    [s[0], s[1], s[2]]
}

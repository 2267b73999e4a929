//! Selective scan (docs/spec.md §6.3 step 6–8, §6.4 step 4–5) as two CubeCL kernels.
//!
//! ```text
//! Δ_t[d]   = softplus(delta_t[d] + bias[d])                   (softplus(v) = v above 20)
//! A[d,n]   = −exp(A_log[d,n])
//! h_t[d,n] = a_t[d,n] · h_{t−1}[d,n] + b_t[d,n]   with  a_t = exp(Δ_t[d]·A[d,n]),  b_t = Δ_t[d]·u_t[d]·B_t[n]
//! y_t[d]   = Σ_n h_t[d,n]·C_t[n] + D[d]·u_t[d]
//! o_t[d]   = y_t[d] · silu(z_t[d])
//! ```
//!
//! The recurrence is an associative scan over the pairs (a, b): `(a₁, b₁) ∘ (a₂, b₂) = (a₁a₂, a₂b₁ + b₂)`.
//!
//! [`scan_block`](fn@scan_block) (prefill): one cube owns 32 consecutive channels (its lanes, `UNIT_POS_X`) of one
//! sequence and walks the whole sequence in tiles of `warps · items` steps. Within a tile, row
//! `UNIT_POS_Y = w` owns the `items` consecutive steps `t0 + w·items + i` of its lane's channel, so the
//! cube is parallel over time as well as over channels. Per group of 4 states a thread
//! 1. runs its steps from a zero state, keeping the partial output `Σ C·h^loc`, the running decay
//!    product `P_t = Π a` and `q_t = C_t ⊙ P_t` (so the true state's share can be added later);
//! 2. publishes its segment's aggregate `(P, h^loc)` in shared memory; after one barrier it folds the
//!    aggregates of the rows before it onto the tile's carry-in state, which gives its own start
//!    state `h_in`, and adds `q_t · h_in` to each output; the last row writes the tile's carry-out.
//!
//! Every `exp` is computed once per (step, channel, state) and the state never leaves the chip: the
//! kernel reads u, Δ, z, B, C once and writes o and the final state once. B and C of a tile are staged
//! in shared memory as 4-wide vectors (one broadcast load serves a warp and 4 states).
//!
//! [`scan_sequential`](fn@scan_sequential) (decode step and very short sequences): one thread per (batch, channel) runs the
//! steps in order from the input state with the `N` states in registers; a decode step is one launch.
//!
//! [`scan_step_dbc`](fn@scan_step_dbc) (FalconMamba's decode step): the same update taken straight from x_proj's output,
//! with the dt/B/C norms and dt_proj inside (see its docs for who owns what).
//!
//! Loads of u, Δ, z and stores of o are coalesced (lanes are consecutive channels). Inputs are read
//! through their strides (the mixer hands in `narrow`ed views of `in_proj`/`x_proj` outputs). All
//! arithmetic is f32; storage dtypes are runtime-defined: `F` for u/Δ/z/o, `P` for B/C, `W` for the
//! per-channel parameters (A_log, D, bias), `S` for the state.
//!
//! Below the kernels, their host side: [`selective_scan_projected`] runs [`scan_sequential`](fn@scan_sequential)
//! up to [`SCAN_SEQUENTIAL_MAX_LEN`] steps and [`scan_block`](fn@scan_block) beyond; [`step_dbc`] launches
//! [`scan_step_dbc`](fn@scan_step_dbc).

// `#[cube]` and the `CubeType`/`CubeLaunch` derives emit public items (kernel modules, `*Launch`) no doc reaches.
#![allow(missing_docs)]

use std::sync::OnceLock;

use burn::tensor::TensorMetadata;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{ops::numeric::empty_device_dtype, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

use super::norm::cube_sum;
use super::{dims3, st, unit_last};

/// Softplus threshold of PyTorch and mamba-ssm: above it softplus(v) is v in f32.
const SOFTPLUS_THRESHOLD: f32 = 20.0;

/// States handled together by [`scan_block`](fn@scan_block): one 16-byte shared-memory vector of B or C.
pub const STATE_GROUP: usize = 4;

/// Lanes of a [`scan_block`](fn@scan_block) cube: 32 consecutive channels (one warp on CUDA, 64–128 contiguous bytes
/// of each u/Δ/z row).
pub const BLOCK_LANES: u32 = 32;

/// Channels handled by one cube of [`scan_sequential`](fn@scan_sequential) (threads of a cube are consecutive
/// channels): 128 keeps a cube's `u`/Δ/`z` row reads at 256 B (bf16) to 512 B (f32).
pub const SCAN_CHANNELS_PER_CUBE: u32 = 128;

/// Longest sequence run by [`scan_sequential`](fn@scan_sequential); longer ones go to [`scan_block`](fn@scan_block), whose
/// tile (`warps · items` steps) would be mostly padding below this.
pub const SCAN_SEQUENTIAL_MAX_LEN: usize = 16;

/// Rows (time segments) of a [`scan_block`](fn@scan_block) cube: 8 × 32 lanes = 256 threads. With falcon-mamba's
/// d_inner 8192 at batch 1 that is 256 cubes, ~2 per H100 SM (16 warps each), and the per-group fold
/// over the rows before a thread costs on average 3.5 shared-memory pairs per 32 (step, state) elements.
pub const SCAN_BLOCK_WARPS: usize = 8;

/// Steps per thread per tile of [`scan_block`](fn@scan_block): 8 keeps `q` (8 × 4 floats) and the per-step
/// Δ, Δu, y and z (4 × 8) in registers while amortising a group's barrier and fold over 32 elements.
pub const SCAN_BLOCK_ITEMS: usize = 8;

/// [`STATE_GROUP`] f32 states as one vector: B, C, the aggregates and the carry of [`scan_block`](fn@scan_block).
type V4 = Vector<f32, Const<4>>;

/// softplus(v) = log(1 + exp(v)) in f32, and `v` itself above [`SOFTPLUS_THRESHOLD`] (as PyTorch).
#[cube]
fn softplus_f32(v: f32) -> f32 {
    // Clamp before exp so the branch not taken cannot overflow.
    let smooth = f32::log1p(f32::exp(f32::min(v, SOFTPLUS_THRESHOLD)));
    select(v > SOFTPLUS_THRESHOLD, v, smooth)
}

/// silu(z) = z · sigmoid(z); exp(−z) may reach +inf for very negative z, giving −0.
#[cube]
fn silu_f32(z: f32) -> f32 {
    z / (1.0 + f32::exp(-z))
}

/// `A[d, :] = −exp(A_log[d, :])` into registers, zero for the padding states `n ≥ n_state`.
#[cube]
fn load_a<W: Float>(a_log: &Tensor<W>, d: usize, #[comptime] n_state: usize, #[comptime] padded: usize) -> Array<f32> {
    let mut a = Array::<f32>::new(padded);
    #[unroll]
    for n in 0..padded {
        if n < n_state {
            a[n] = -f32::exp(f32::cast_from(a_log[d * a_log.stride(0) + n * a_log.stride(1)]));
        } else {
            a[n] = 0.0;
        }
    }
    a
}

/// Block scan over the whole sequence: see the module docs for who owns what.
///
/// Launch: cube dim (32, `warps`), grid (⌈I / 32⌉, batch). Shared memory: B and C of one tile, the
/// rows' aggregates and the carry, each double-buffered so one barrier per state group suffices.
#[cube(launch_unchecked, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn scan_block<F: Float, P: Float, W: Float, S: Float>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    delta_bias: &Tensor<W>,
    a_log: &Tensor<W>,
    b: &Tensor<P>,
    c_mat: &Tensor<P>,
    d_skip: &Tensor<W>,
    z: &Tensor<F>,
    state: &Tensor<S>,
    out: &mut Tensor<F>,
    state_out: &mut Tensor<S>,
    #[comptime] n_state: usize,
    #[comptime] warps: usize,
    #[comptime] items: usize,
    #[define(F, P, W, S)] _dtypes: [StorageType; 4],
) {
    let groups = comptime!(n_state.div_ceil(STATE_GROUP));
    let padded = comptime!(groups * STATE_GROUP);
    let tile = comptime!(warps * items);
    let lanes = comptime!(BLOCK_LANES as usize);

    let lane = UNIT_POS_X as usize;
    let row = UNIT_POS_Y as usize;
    let tid = row * lanes + lane;
    let bi = CUBE_POS_Y as usize;
    let n_inner = u.shape(2);
    let len = u.shape(1);
    let d_raw = CUBE_POS_X as usize * lanes + lane;
    // Lanes past the last channel compute on channel I − 1 (every load stays in bounds, no early exit
    // before the barriers) and store nothing.
    let live = d_raw < n_inner;
    let d = usize::min(d_raw, n_inner - 1);

    let mut bs = SharedMemory::<V4>::new(tile * groups);
    let mut cs = SharedMemory::<V4>::new(tile * groups);
    let mut agg_p = SharedMemory::<V4>::new(2 * warps * lanes);
    let mut agg_h = SharedMemory::<V4>::new(2 * warps * lanes);
    let mut carry = SharedMemory::<V4>::new(2 * groups * lanes);

    let a = load_a::<W>(a_log, d, n_state, padded);
    let bias = f32::cast_from(delta_bias[d * delta_bias.stride(0)]);
    let skip = f32::cast_from(d_skip[d * d_skip.stride(0)]);

    // Carry-in of tile 0: the input state (zero in the padding states).
    if row == 0 {
        #[unroll]
        for g in 0..groups {
            let mut v = V4::empty();
            #[unroll]
            for k in 0..STATE_GROUP {
                let n = g * STATE_GROUP + k;
                if n < n_state {
                    v[k] = f32::cast_from(state[bi * state.stride(0) + d * state.stride(1) + n * state.stride(2)]);
                } else {
                    v[k] = 0.0;
                }
            }
            carry[g * lanes + lane] = v;
        }
    }

    // Strides hoisted: each `stride()` is a metadata read.
    let (su, sdt, sz, so) = (u.stride(1), delta.stride(1), z.stride(1), out.stride(1));
    let (sb, sbn, sc, scn) = (b.stride(1), b.stride(2), c_mat.stride(1), c_mat.stride(2));
    let base_u = bi * u.stride(0) + d * u.stride(2);
    let base_dt = bi * delta.stride(0) + d * delta.stride(2);
    let base_z = bi * z.stride(0) + d * z.stride(2);
    let base_o = bi * out.stride(0) + d * out.stride(2);
    let base_b = bi * b.stride(0);
    let base_c = bi * c_mat.stride(0);

    let n_tiles = len.div_ceil(tile);
    for ti in 0..n_tiles {
        let t0 = ti * tile;

        // Stage B_t and C_t of the tile, 4 states per vector; zero past the sequence end.
        let mut j = tid;
        while j < tile * groups {
            let t = t0 + j / groups;
            let g = j % groups;
            let mut vb = V4::empty();
            let mut vc = V4::empty();
            #[unroll]
            for k in 0..STATE_GROUP {
                let n = g * STATE_GROUP + k;
                if t < len && n < n_state {
                    vb[k] = f32::cast_from(b[base_b + t * sb + n * sbn]);
                    vc[k] = f32::cast_from(c_mat[base_c + t * sc + n * scn]);
                } else {
                    vb[k] = 0.0;
                    vc[k] = 0.0;
                }
            }
            bs[j] = vb;
            cs[j] = vc;
            j += warps * lanes;
        }

        // This thread's steps: Δ, Δ·u, the D skip. Steps past the end get Δ = 0, i.e. the identity
        // pair (1, 0), so they pass the state through unchanged.
        let mut dt = Array::<f32>::new(items);
        let mut du = Array::<f32>::new(items);
        let mut y = Array::<f32>::new(items);
        let mut gate = Array::<f32>::new(items);
        #[unroll]
        for i in 0..items {
            let t = t0 + row * items + i;
            let tc = usize::min(t, len - 1);
            let x = f32::cast_from(u[base_u + tc * su]);
            let step = softplus_f32(f32::cast_from(delta[base_dt + tc * sdt]) + bias);
            dt[i] = select(t < len, step, 0.0);
            du[i] = dt[i] * x;
            y[i] = skip * x;
            gate[i] = f32::cast_from(z[base_z + tc * sz]);
        }
        sync_cube();

        #[unroll]
        for g in 0..groups {
            // 1. Local run from zero: partial outputs, decay products, q = C ⊙ P.
            let mut h_loc = V4::new(0.0);
            let mut prod = V4::new(1.0);
            let mut q = Array::<V4>::new(items);
            #[unroll]
            for i in 0..items {
                let at = (row * items + i) * groups + g;
                let vb = bs[at];
                let vc = cs[at];
                let mut qi = V4::empty();
                #[unroll]
                for k in 0..STATE_GROUP {
                    let decay = f32::exp(dt[i] * a[g * STATE_GROUP + k]);
                    h_loc[k] = decay * h_loc[k] + du[i] * vb[k];
                    prod[k] *= decay;
                    y[i] += vc[k] * h_loc[k];
                    qi[k] = vc[k] * prod[k];
                }
                q[i] = qi;
            }

            // 2. Publish the segment aggregate, then fold the rows before this one onto the carry-in.
            let buf = ((ti * groups + g) % 2) * warps * lanes;
            agg_p[buf + tid] = prod;
            agg_h[buf + tid] = h_loc;
            sync_cube();
            let mut h_in = carry[((ti % 2) * groups + g) * lanes + lane];
            for r in 0..row {
                h_in = agg_p[buf + r * lanes + lane] * h_in + agg_h[buf + r * lanes + lane];
            }
            if row == warps - 1 {
                carry[(((ti + 1) % 2) * groups + g) * lanes + lane] = prod * h_in + h_loc;
            }
            #[unroll]
            for i in 0..items {
                let qi = q[i];
                #[unroll]
                for k in 0..STATE_GROUP {
                    y[i] += qi[k] * h_in[k];
                }
            }
        }

        #[unroll]
        for i in 0..items {
            let t = t0 + row * items + i;
            if live && t < len {
                out[base_o + t * so] = F::cast_from(y[i] * silu_f32(gate[i]));
            }
        }
    }

    // The final carry (written by the last row of the last tile) is the state after step L − 1.
    sync_cube();
    if row == 0 && live {
        #[unroll]
        for g in 0..groups {
            let v = carry[((n_tiles % 2) * groups + g) * lanes + lane];
            #[unroll]
            for k in 0..STATE_GROUP {
                let n = g * STATE_GROUP + k;
                if n < n_state {
                    state_out[bi * state_out.stride(0) + d * state_out.stride(1) + n * state_out.stride(2)] =
                        S::cast_from(v[k]);
                }
            }
        }
    }
}

/// Sequential scan: one thread per (batch, channel) runs all steps in order from the input state and
/// writes the gated output and the final state. Used for the decode step (one launch per layer) and
/// sequences too short to fill a [`scan_block`](fn@scan_block) tile.
///
/// With `project`, `delta` is the low-rank `dt` (`[b, l, R]`) and each thread first forms its own
/// channel's `delta_t[d] = round_F(Σ_r dt_t[r] · dt_w[r, d])` (dt_proj without its bias, f32
/// accumulation, rounded to the activation dtype as the separate product would be): the decode step
/// then needs no dt_proj launch. `dt_w` is dt_proj's weight `[R, I]` (unused otherwise).
///
/// Grid: x = channel tiles, y = batch.
#[cube(launch_unchecked, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn scan_sequential<F: Float, P: Float, W: Float, S: Float>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    dt_w: &Tensor<F>,
    delta_bias: &Tensor<W>,
    a_log: &Tensor<W>,
    b: &Tensor<P>,
    c_mat: &Tensor<P>,
    d_skip: &Tensor<W>,
    z: &Tensor<F>,
    state: &Tensor<S>,
    out: &mut Tensor<F>,
    state_out: &mut Tensor<S>,
    #[comptime] n_state: usize,
    #[comptime] project: bool,
    #[define(F, P, W, S)] _dtypes: [StorageType; 4],
) {
    let d = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let bi = CUBE_POS_Y as usize;
    let n_inner = u.shape(2);
    let len = u.shape(1);
    if d >= n_inner {
        terminate!();
    }

    let a = load_a::<W>(a_log, d, n_state, n_state);
    let bias = f32::cast_from(delta_bias[d * delta_bias.stride(0)]);
    let skip = f32::cast_from(d_skip[d * d_skip.stride(0)]);
    let mut h = Array::<f32>::new(n_state);
    #[unroll]
    for n in 0..n_state {
        h[n] = f32::cast_from(state[bi * state.stride(0) + d * state.stride(1) + n * state.stride(2)]);
    }

    // Strides hoisted: each `stride()` is a metadata read.
    let (su, sdt, sz, so) = (u.stride(1), delta.stride(1), z.stride(1), out.stride(1));
    let (sb, sbn, sc, scn) = (b.stride(1), b.stride(2), c_mat.stride(1), c_mat.stride(2));
    let base_u = bi * u.stride(0) + d * u.stride(2);
    let base_dt = bi * delta.stride(0) + d * delta.stride(2);
    let base_z = bi * z.stride(0) + d * z.stride(2);
    let base_o = bi * out.stride(0) + d * out.stride(2);
    let base_b = bi * b.stride(0);
    let base_c = bi * c_mat.stride(0);
    // Projection: Δ's row t is `delta[bi, t, :]`, the weight column of channel d is `dt_w[:, d]`.
    let (base_lr, slr, rank) = (bi * delta.stride(0), delta.stride(2), dt_w.shape(0));
    let (base_w, sw) = (d * dt_w.stride(1), dt_w.stride(0));
    for t in 0..len {
        let x = f32::cast_from(u[base_u + t * su]);
        let mut raw = 0.0f32;
        if project {
            let row = base_lr + t * sdt;
            let mut r = 0;
            while r < rank {
                raw += f32::cast_from(delta[row + r * slr]) * f32::cast_from(dt_w[base_w + r * sw]);
                r += 1;
            }
            raw = f32::cast_from(F::cast_from(raw));
        } else {
            raw = f32::cast_from(delta[base_dt + t * sdt]);
        }
        let dt = softplus_f32(raw + bias);
        let du = dt * x;
        let row_b = base_b + t * sb;
        let row_c = base_c + t * sc;
        let mut y = skip * x;
        #[unroll]
        for n in 0..n_state {
            h[n] = f32::exp(dt * a[n]) * h[n] + du * f32::cast_from(b[row_b + n * sbn]);
            y += h[n] * f32::cast_from(c_mat[row_c + n * scn]);
        }
        out[base_o + t * so] = F::cast_from(y * silu_f32(f32::cast_from(z[base_z + t * sz])));
    }

    #[unroll]
    for n in 0..n_state {
        state_out[bi * state_out.stride(0) + d * state_out.stride(1) + n * state_out.stride(2)] = S::cast_from(h[n]);
    }
}

/// Channels (lanes, `UNIT_POS_X`) of a [`scan_step_dbc`](fn@scan_step_dbc) cube.
pub const STEP_LANES: u32 = 32;

/// Rows (`UNIT_POS_Y`) of a [`scan_step_dbc`](fn@scan_step_dbc) cube: 8 warps, each forming the dt_proj products of 4 of
/// the cube's 32 channels. At d_inner 8192 that is 256 cubes of 256 threads (~2 per SM on an H200).
pub const STEP_ROWS: u32 = 8;

/// Sizes and strides (in elements) of a [`scan_step_dbc`](fn@scan_step_dbc) launch. Every operand is unit-stride along
/// its last dim (the dt_proj weight `[R, I]` along the rank); bias and D are contiguous.
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct StepDims {
    /// Steps (`l`).
    pub len: usize,
    /// Channels (`I`).
    pub d_inner: usize,
    /// `u` stride over `b`.
    pub u_b: usize,
    /// `u` stride over `l`.
    pub u_l: usize,
    /// `z` stride over `b`.
    pub z_b: usize,
    /// `z` stride over `l`.
    pub z_l: usize,
    /// `dbc` stride over `b`.
    pub x_b: usize,
    /// `dbc` stride over `l`.
    pub x_l: usize,
    /// dt_proj weight stride over channels (its rank stride is 1).
    pub w_d: usize,
    /// `A_log` stride over channels.
    pub a_d: usize,
    /// Input state stride over `b`.
    pub s_b: usize,
    /// Input state stride over channels.
    pub s_d: usize,
    /// `out` stride over `b`.
    pub o_b: usize,
    /// `out` stride over `l`.
    pub o_l: usize,
    /// Output state stride over `b`.
    pub t_b: usize,
    /// Output state stride over channels.
    pub t_d: usize,
}

/// A FalconMamba decode step straight from x_proj's output (docs/spec.md §6.4 steps 3–5) in one launch:
///
/// ```text
/// dbc_t = [dt | B | C]            (x_proj output, R + 2N wide, activation dtype F)
/// dt'   = round_F(dt · rsqrt(mean(dt²) + eps)),  B', C' likewise over their N columns
/// raw   = round_F(Σ_r dt'_r · dt_w[r, d])         (dt_proj, no bias; f32 accumulation)
/// then the scan step of the module docs with Δ = softplus(raw + bias[d]), B', C'.
/// ```
///
/// Who owns what, per step: a cube is [`STEP_LANES`] consecutive channels × [`STEP_ROWS`] warps. Its 256
/// threads load dt (one column each), reduce Σ dt² through shared memory and leave the normalised dt'
/// there. Warp `w` then forms the dt_proj products of channels `w, w + 8, …` with its lanes over the
/// rank (each weight row is contiguous over the rank: coalesced loads) and leaves per-lane partials in
/// shared memory; warp 0, one lane per channel, adds them, normalises B and C itself and runs the
/// N-state update with the state in registers. The state is read once and written once.
///
/// Arrays and scalar strides rather than tensors: see [`gemv_kernel`](fn@super::gemv::gemv_kernel).
/// Grid: x = ⌈I / lanes⌉, y = batch.
#[cube(launch_unchecked, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn scan_step_dbc<F: Float, W: Float, S: Float>(
    u: &Array<F>,
    dbc: &Array<F>,
    dt_w: &Array<F>,
    delta_bias: &Array<W>,
    a_log: &Array<W>,
    d_skip: &Array<W>,
    z: &Array<F>,
    state: &Array<S>,
    out: &mut Array<F>,
    state_out: &mut Array<S>,
    dims: StepDims,
    eps: f32,
    #[comptime] rank: usize,
    #[comptime] n_state: usize,
    #[define(F, W, S)] _dtypes: [StorageType; 3],
) {
    let lanes = comptime!(STEP_LANES as usize);
    let rows = comptime!(STEP_ROWS as usize);
    let threads = comptime!(STEP_LANES as usize * STEP_ROWS as usize);
    // Channels per warp, and rank columns per lane in the products.
    let per_warp = comptime!(STEP_LANES.div_ceil(STEP_ROWS) as usize);
    let per_lane = comptime!(rank.div_ceil(STEP_LANES as usize));
    let lane = UNIT_POS_X as usize;
    let row = UNIT_POS_Y as usize;
    let tid = row * lanes + lane;
    let bi = CUBE_POS_Y as usize;
    let n_inner = dims.d_inner;
    let tile = CUBE_POS_X as usize * lanes;
    let d_raw = tile + lane;
    // Lanes past the last channel work on channel I − 1 (all threads reach the barriers) and store nothing.
    let live = d_raw < n_inner;
    let d = usize::min(d_raw, n_inner - 1);

    let mut dts = SharedMemory::<f32>::new(rank);
    let mut red = SharedMemory::<f32>::new(threads);
    // One row of 33 per channel: lane j of the final sum reads column j of every row, no bank conflicts.
    let mut part = SharedMemory::<f32>::new(lanes * (lanes + 1));

    // Warp 0 carries the state; the other warps only help with dt.
    let mut a = Array::<f32>::new(n_state);
    let mut h = Array::<f32>::new(n_state);
    #[unroll]
    for n in 0..n_state {
        a[n] = -f32::exp(f32::cast_from(a_log[d * dims.a_d + n]));
        h[n] = f32::cast_from(state[bi * dims.s_b + d * dims.s_d + n]);
    }
    let bias = f32::cast_from(delta_bias[d]);
    let skip = f32::cast_from(d_skip[d]);
    let (rank_f, n_f) = (f32::cast_from(rank), f32::cast_from(n_state));

    for t in 0..dims.len {
        let base = bi * dims.x_b + t * dims.x_l;
        // 1. dt into shared memory and Σ dt² over the cube.
        let mut ss = 0.0f32;
        let mut r = tid;
        while r < rank {
            let v = f32::cast_from(dbc[base + r]);
            dts[r] = v;
            ss += v * v;
            r += threads;
        }
        red[tid] = ss;
        let inv = 1.0 / f32::sqrt(cube_sum(&mut red) / rank_f + eps);
        // Each thread normalises the columns it loaded.
        let mut r = tid;
        while r < rank {
            dts[r] = f32::cast_from(F::cast_from(dts[r] * inv));
            r += threads;
        }
        sync_cube();

        // 2. Warp `row`: channels row, row + rows, …; lanes over the rank.
        #[unroll]
        for j in 0..per_warp {
            let c = row + j * rows;
            let dc = usize::min(tile + c, n_inner - 1);
            let wrow = dc * dims.w_d;
            let mut acc = 0.0f32;
            #[unroll]
            for q in 0..per_lane {
                let rr = q * lanes + lane;
                if rr < rank {
                    acc += dts[rr] * f32::cast_from(dt_w[wrow + rr]);
                }
            }
            if c < lanes {
                part[c * (lanes + 1) + lane] = acc;
            }
        }
        sync_cube();

        // 3. Warp 0, lane = channel: Δ, the B/C norms and the state update.
        if row == 0 {
            let mut raw = 0.0f32;
            #[unroll]
            for j in 0..lanes {
                raw += part[lane * (lanes + 1) + j];
            }
            let dt = softplus_f32(f32::cast_from(F::cast_from(raw)) + bias);
            let (ob, oc) = (base + rank, base + rank + n_state);
            let mut sb = 0.0f32;
            let mut sc = 0.0f32;
            #[unroll]
            for n in 0..n_state {
                let vb = f32::cast_from(dbc[ob + n]);
                let vc = f32::cast_from(dbc[oc + n]);
                sb += vb * vb;
                sc += vc * vc;
            }
            let ib = 1.0 / f32::sqrt(sb / n_f + eps);
            let ic = 1.0 / f32::sqrt(sc / n_f + eps);
            let x = f32::cast_from(u[bi * dims.u_b + t * dims.u_l + d]);
            let du = dt * x;
            let mut y = skip * x;
            #[unroll]
            for n in 0..n_state {
                let bn = f32::cast_from(F::cast_from(f32::cast_from(dbc[ob + n]) * ib));
                let cn = f32::cast_from(F::cast_from(f32::cast_from(dbc[oc + n]) * ic));
                h[n] = f32::exp(dt * a[n]) * h[n] + du * bn;
                y += h[n] * cn;
            }
            if live {
                let g = f32::cast_from(z[bi * dims.z_b + t * dims.z_l + d]);
                out[bi * dims.o_b + t * dims.o_l + d] = F::cast_from(y * silu_f32(g));
            }
        }
        // The next step overwrites the shared buffers.
        sync_cube();
    }

    if row == 0 && live {
        #[unroll]
        for n in 0..n_state {
            state_out[bi * dims.t_b + d * dims.t_d + n] = S::cast_from(h[n]);
        }
    }
}

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
    /// Conv output `u`, `[b, l, i]`, activation dtype `F`.
    pub u: CubeTensor<R>,
    /// `dt_proj(dt)` without its bias, `[b, l, i]` in `F`; the low-rank dt `[b, l, R]` when
    /// [`selective_scan_projected`] is given dt_proj's weight.
    pub delta: CubeTensor<R>,
    /// `dt_proj.bias`, `[i]`, parameter dtype `W`; added before the softplus.
    pub delta_bias: CubeTensor<R>,
    /// `A_log`, `[i, n]` in `W`; A = −exp(A_log).
    pub a_log: CubeTensor<R>,
    /// B, `[b, l, n]`, dtype `P`.
    pub b: CubeTensor<R>,
    /// C, `[b, l, n]`, B's dtype.
    pub c: CubeTensor<R>,
    /// D skip, `[i]` in `W`.
    pub d: CubeTensor<R>,
    /// Gate z, `[b, l, i]` in `F`.
    pub z: CubeTensor<R>,
    /// State before the first step, `[b, i, n]`, state dtype `S` (also that of the returned state).
    pub state: CubeTensor<R>,
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
/// the kernel applies dt_proj itself (see [`scan_sequential`](fn@scan_sequential)).
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
            scan_sequential::launch_unchecked(
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
            scan_block::launch_unchecked(
                &client,
                CubeCount::Static((di as u32).div_ceil(BLOCK_LANES), bsz as u32, 1),
                CubeDim::new_2d(BLOCK_LANES, warps as u32),
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

/// Whether [`step_dbc`] covers a decode step of `u` (`[b, l, I]`) from the x_proj output `dbc`
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

/// The inputs of [`step_dbc`] (shapes and dtypes as [`ScanTensors`], `dbc` x_proj's output,
/// `dt_w` dt_proj's weight `[R, I]`).
pub struct StepTensors<R: CubeRuntime> {
    /// Conv output `u`, `[b, l, i]`, activation dtype `F`, unit-stride over channels.
    pub u: CubeTensor<R>,
    /// x_proj's output `[dt | B | C]`, `[b, l, R + 2N]` in `F`, unit-stride over columns; the kernel
    /// applies the dt/B/C norms itself.
    pub dbc: CubeTensor<R>,
    /// dt_proj's weight `[R, i]` in `F`, unit-stride over the rank (the loader's transposed view).
    pub dt_w: CubeTensor<R>,
    /// `dt_proj.bias`, `[i]`, parameter dtype `W`; added before the softplus.
    pub delta_bias: CubeTensor<R>,
    /// `A_log`, `[i, n]` in `W`; A = −exp(A_log).
    pub a_log: CubeTensor<R>,
    /// D skip, `[i]` in `W`.
    pub d: CubeTensor<R>,
    /// Gate z, `[b, l, i]` in `F`, unit-stride over channels.
    pub z: CubeTensor<R>,
    /// State before the first step, `[b, i, n]`, state dtype `S` (also that of the returned state).
    pub state: CubeTensor<R>,
}

/// A FalconMamba decode step from x_proj's output in one launch (see [`scan_step_dbc`](fn@scan_step_dbc)); check
/// [`step_dbc_applies`] first. Returns `(o [b, l, i], final state)` as [`selective_scan`].
pub fn step_dbc<R: CubeRuntime>(x: StepTensors<R>, eps: f64) -> (CubeTensor<R>, CubeTensor<R>) {
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
    let dims = StepDimsLaunch::new(
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
        scan_step_dbc::launch_unchecked(
            &client,
            CubeCount::Static((di as u32).div_ceil(STEP_LANES), bsz as u32, 1),
            CubeDim::new_2d(STEP_LANES, STEP_ROWS),
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

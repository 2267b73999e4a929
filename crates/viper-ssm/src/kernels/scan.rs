//! Selective scan (spec §6.3 step 6–8, §6.4 step 4–5) as three CubeCL kernels, chunked over time.
//!
//! ```text
//! Δ_t[d]   = softplus(delta_t[d] + bias[d])                   (softplus(v) = v above 20)
//! A[d,n]   = −exp(A_log[d,n])
//! h_t[d,n] = exp(Δ_t[d]·A[d,n]) · h_{t−1}[d,n] + Δ_t[d]·u_t[d]·B_t[n]
//! y_t[d]   = Σ_n h_t[d,n]·C_t[n] + D[d]·u_t[d]
//! o_t[d]   = y_t[d] · silu(z_t[d])
//! ```
//!
//! The recurrence is linear in `h`, so over a chunk of steps `t0..t1` it composes to
//! `h_{t1} = exp(A·ΣΔ) ⊙ h_{t0} + h^loc_{t1}`, where `h^loc` is the chunk run from a zero state and the
//! decay needs only the chunk's sum of Δ. That gives parallelism over time as well as over (batch,
//! channel):
//!
//! 1. [`scan_chunk_state`]: one thread per (batch, chunk, channel) runs its chunk from zero, keeping
//!    its `N` states in registers, and writes `h^loc` (`[b, chunks, N, I]`) and `ΣΔ` (`[b, chunks, I]`).
//! 2. [`scan_chunk_combine`]: one thread per (batch, state, channel) walks the chunks in order and
//!    overwrites each `h^loc` with the true state at that chunk's start (the input state for chunk 0).
//! 3. [`scan_chunk_output`]: one thread per (batch, chunk, channel) re-runs its chunk from the true start
//!    state, contracts with C, adds the D skip, gates with silu(z), writes `o`; the last chunk writes the
//!    final state.
//!
//! With one chunk (short sequences, large batches, the decode step) only kernel 3 runs, straight from
//! the input state: a decode step is one launch per layer.
//!
//! Threads of a cube are consecutive channels, so every load and store of `u`, Δ, `z`, `o` and of the
//! `[…, I]` scratch is coalesced; B_t and C_t are the same for the whole cube (broadcast loads). Inputs
//! are read through their strides (the mixer hands in `narrow`ed views of `in_proj`/`x_proj` outputs).
//! All arithmetic is f32; storage dtypes are runtime-defined: `F` for u/Δ/z/o, `P` for B/C, `W` for the
//! per-channel parameters (A_log, D, bias), `S` for the state.

use cubecl::prelude::*;

/// Softplus threshold of PyTorch and mamba-ssm: above it softplus(v) is v in f32.
const SOFTPLUS_THRESHOLD: f32 = 20.0;

#[cube]
fn softplus_f32(v: f32) -> f32 {
    // Clamp before exp so the branch not taken cannot overflow.
    let smooth = f32::log1p(f32::exp(f32::min(v, SOFTPLUS_THRESHOLD)));
    select(v > SOFTPLUS_THRESHOLD, v, smooth)
}

/// `A[d, :] = −exp(A_log[d, :])` into registers.
#[cube]
fn load_a<W: Float>(a_log: &Tensor<W>, d: usize, #[comptime] n_state: usize) -> Array<f32> {
    let mut a = Array::<f32>::new(n_state);
    #[unroll]
    for n in 0..n_state {
        a[n] = -f32::exp(f32::cast_from(a_log[d * a_log.stride(0) + n * a_log.stride(1)]));
    }
    a
}

/// Pass 1: each thread runs its chunk of one channel from a zero state.
///
/// Grid: x = channel tiles, y = chunk, z = batch. Outputs `h_loc[bi, c, n, d]`, `dt_sum[bi, c, d]`.
#[cube(launch_unchecked, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
pub fn scan_chunk_state<F: Float, P: Float, W: Float>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    delta_bias: &Tensor<W>,
    a_log: &Tensor<W>,
    b: &Tensor<P>,
    h_loc: &mut Tensor<f32>,
    dt_sum: &mut Tensor<f32>,
    chunk_len: usize,
    #[comptime] n_state: usize,
    #[define(F, P, W)] _dtypes: [StorageType; 3],
) {
    let d = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let c = CUBE_POS_Y as usize;
    let bi = CUBE_POS_Z as usize;
    let n_inner = u.shape(2);
    let len = u.shape(1);
    if d >= n_inner {
        terminate!();
    }
    let t0 = c * chunk_len;
    let t1 = usize::min(t0 + chunk_len, len);

    let a = load_a::<W>(a_log, d, n_state);
    let bias = f32::cast_from(delta_bias[d * delta_bias.stride(0)]);
    let mut h = Array::<f32>::new(n_state);
    #[unroll]
    for n in 0..n_state {
        h[n] = 0.0;
    }
    let mut sum = 0.0f32;

    // Strides hoisted: each `stride()` is a metadata read.
    let (su, sdt, sb, sbn) = (u.stride(1), delta.stride(1), b.stride(1), b.stride(2));
    let base_u = bi * u.stride(0) + d * u.stride(2);
    let base_dt = bi * delta.stride(0) + d * delta.stride(2);
    let base_b = bi * b.stride(0);
    for t in t0..t1 {
        let dt = softplus_f32(f32::cast_from(delta[base_dt + t * sdt]) + bias);
        let du = dt * f32::cast_from(u[base_u + t * su]);
        let row_b = base_b + t * sb;
        #[unroll]
        for n in 0..n_state {
            h[n] = f32::exp(dt * a[n]) * h[n] + du * f32::cast_from(b[row_b + n * sbn]);
        }
        sum += dt;
    }

    let n_chunks = h_loc.shape(1);
    #[unroll]
    for n in 0..n_state {
        h_loc[((bi * n_chunks + c) * n_state + n) * n_inner + d] = h[n];
    }
    dt_sum[(bi * n_chunks + c) * n_inner + d] = sum;
}

/// Pass 2: each thread carries one (batch, state, channel) across the chunks and replaces each chunk's
/// `h_loc` with the state at that chunk's start.
///
/// Grid: 1-D over `b · N · I` (channel fastest, so the scratch accesses are coalesced).
#[cube(launch_unchecked, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
pub fn scan_chunk_combine<W: Float, S: Float>(
    a_log: &Tensor<W>,
    state: &Tensor<S>,
    h_loc: &mut Tensor<f32>,
    dt_sum: &Tensor<f32>,
    #[comptime] n_state: usize,
    #[define(W, S)] _dtypes: [StorageType; 2],
) {
    let n_inner = state.shape(1);
    let batch = state.shape(0);
    let pos = ABSOLUTE_POS;
    if pos >= batch * n_state * n_inner {
        terminate!();
    }
    let d = pos % n_inner;
    let n = (pos / n_inner) % n_state;
    let bi = pos / (n_inner * n_state);
    let a = -f32::exp(f32::cast_from(a_log[d * a_log.stride(0) + n * a_log.stride(1)]));

    let mut carry = f32::cast_from(state[bi * state.stride(0) + d * state.stride(1) + n * state.stride(2)]);
    let n_chunks = h_loc.shape(1);
    // Consecutive chunks are `N · I` apart in `h_loc` and `I` apart in `dt_sum`.
    let mut idx = (bi * n_chunks * n_state + n) * n_inner + d;
    let mut idx_dt = bi * n_chunks * n_inner + d;
    for _c in 0..n_chunks {
        let local = h_loc[idx];
        h_loc[idx] = carry;
        carry = f32::exp(a * dt_sum[idx_dt]) * carry + local;
        idx += n_state * n_inner;
        idx_dt += n_inner;
    }
}

/// Pass 3 (and the whole scan when there is one chunk): each thread runs its chunk of one channel from
/// its true start state and writes the gated output; the thread of the last chunk writes the final state.
///
/// Grid: x = channel tiles, y = chunk, z = batch. `h_start` is `h_loc` after pass 2 when `chunked`,
/// otherwise ignored (the start state is `state`).
#[cube(launch_unchecked, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn scan_chunk_output<F: Float, P: Float, W: Float, S: Float>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    delta_bias: &Tensor<W>,
    a_log: &Tensor<W>,
    b: &Tensor<P>,
    c_mat: &Tensor<P>,
    d_skip: &Tensor<W>,
    z: &Tensor<F>,
    state: &Tensor<S>,
    h_start: &Tensor<f32>,
    out: &mut Tensor<F>,
    state_out: &mut Tensor<S>,
    chunk_len: usize,
    #[comptime] n_state: usize,
    #[comptime] chunked: bool,
    #[define(F, P, W, S)] _dtypes: [StorageType; 4],
) {
    let d = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let c = CUBE_POS_Y as usize;
    let bi = CUBE_POS_Z as usize;
    let n_inner = u.shape(2);
    let len = u.shape(1);
    if d >= n_inner {
        terminate!();
    }
    let t0 = c * chunk_len;
    let t1 = usize::min(t0 + chunk_len, len);

    let a = load_a::<W>(a_log, d, n_state);
    let bias = f32::cast_from(delta_bias[d * delta_bias.stride(0)]);
    let skip = f32::cast_from(d_skip[d * d_skip.stride(0)]);
    let mut h = Array::<f32>::new(n_state);
    if chunked {
        let n_chunks = h_start.shape(1);
        #[unroll]
        for n in 0..n_state {
            h[n] = h_start[((bi * n_chunks + c) * n_state + n) * n_inner + d];
        }
    } else {
        #[unroll]
        for n in 0..n_state {
            h[n] = f32::cast_from(state[bi * state.stride(0) + d * state.stride(1) + n * state.stride(2)]);
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
    for t in t0..t1 {
        let x = f32::cast_from(u[base_u + t * su]);
        let dt = softplus_f32(f32::cast_from(delta[base_dt + t * sdt]) + bias);
        let gate = f32::cast_from(z[base_z + t * sz]);
        let du = dt * x;
        let row_b = base_b + t * sb;
        let row_c = base_c + t * sc;
        let mut y = skip * x;
        #[unroll]
        for n in 0..n_state {
            h[n] = f32::exp(dt * a[n]) * h[n] + du * f32::cast_from(b[row_b + n * sbn]);
            y += h[n] * f32::cast_from(c_mat[row_c + n * scn]);
        }
        // silu(z) = z · sigmoid(z); exp(−z) may reach +inf for very negative z, giving −0.
        let silu = gate / (1.0 + f32::exp(-gate));
        out[base_o + t * so] = F::cast_from(y * silu);
    }

    if t1 == len {
        #[unroll]
        for n in 0..n_state {
            state_out[bi * state_out.stride(0) + d * state_out.stride(1) + n * state_out.stride(2)] =
                S::cast_from(h[n]);
        }
    }
}

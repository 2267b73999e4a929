//! Tensor-op reference of the scan, the causal conv and the RMS norms: runs on every backend, defines
//! the semantics the hand-written kernels must reproduce.
//!
//! Glossary (mamba-minimal style): `b` batch, `l` sequence length, `i` inner width (d_inner),
//! `n` state size (d_state), `k` conv width; Δ = `delta`, A = −exp(`a_log`), B/C = `b`/`c`.

use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::{DType, FloatDType};

use crate::ops::{ConvInput, RmsNormInput, ScanInput, ScanOutput};

/// Time steps whose discretised A and B·u are materialised at once (bounds memory to
/// `b · SCAN_CHUNK · i · n` floats while keeping the per-step loop to two element-wise ops).
const SCAN_CHUNK: usize = 64;

/// `x * rsqrt(mean(x², last) + eps)` computed in f32 and returned in `x`'s dtype (no weight).
pub fn rms<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x32 = x.cast(FloatDType::F32);
    let var = x32.clone().square().mean_dim(D - 1);
    (x32 * (var + eps).sqrt().recip()).cast(dtype)
}

/// softplus with PyTorch's and mamba-ssm's threshold: `v` itself above 20.
pub fn softplus<B: Backend, const D: usize>(v: Tensor<B, D>) -> Tensor<B, D> {
    let smooth = v.clone().exp().log1p();
    smooth.mask_where(v.clone().greater_elem(20.0), v)
}

/// Selective scan over a sequence (docs/spec.md §6.3 step 8), all arithmetic in f32:
///
/// ```text
/// Δ_t = softplus(delta_t + delta_bias)
/// h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t        (h: [b, i, n])
/// y_t = (h_t · C_t) + D ⊙ u_t
/// o_t = y_t ⊙ silu(z_t)
/// ```
pub fn selective_scan<B: Backend>(x: ScanInput<B>) -> ScanOutput<B> {
    let out_dtype = x.u.dtype();
    let state_dtype = x.state.dtype();
    let f32 = |t: Tensor<B, 3>| t.cast(FloatDType::F32);
    let [bsz, l, di] = x.u.dims();
    let n = x.a_log.dims()[1];

    let a = x.a_log.cast(FloatDType::F32).exp().neg().reshape([1, 1, di, n]);
    let bias = x.delta_bias.cast(FloatDType::F32).reshape([1, 1, di]);
    let delta = softplus(f32(x.delta) + bias); // (b, l, i)
    let u = f32(x.u);
    let delta_u = delta.clone() * u.clone(); // (b, l, i)
    let (bm, cm) = (f32(x.b), f32(x.c)); // (b, l, n)

    let mut h = f32(x.state); // (b, i, n)
    let mut ys = Vec::with_capacity(l.div_ceil(SCAN_CHUNK));
    for start in (0..l).step_by(SCAN_CHUNK) {
        let t = SCAN_CHUNK.min(l - start);
        let da = (delta.clone().narrow(1, start, t).unsqueeze_dim::<4>(3) * a.clone()).exp(); // (b, t, i, n)
        let dbu = delta_u.clone().narrow(1, start, t).unsqueeze_dim::<4>(3)
            * bm.clone().narrow(1, start, t).unsqueeze_dim::<4>(2); // (b, t, i, n)
        let mut hs = Vec::with_capacity(t);
        for s in 0..t {
            let step = |m: &Tensor<B, 4>| m.clone().narrow(1, s, 1).reshape([bsz, di, n]);
            h = step(&da) * h + step(&dbu);
            hs.push(h.clone());
        }
        let hs = Tensor::stack::<4>(hs, 1); // (b, t, i, n)
        let c = cm.clone().narrow(1, start, t).unsqueeze_dim::<4>(2); // (b, t, 1, n)
        ys.push((hs * c).sum_dim(3).reshape([bsz, t, di]));
    }
    let d = x.d.cast(FloatDType::F32).reshape([1, 1, di]);
    let y = Tensor::cat(ys, 1) + u * d;
    let y = y * silu(f32(x.z));
    ScanOutput { y: y.cast(out_dtype), state: h.cast(state_dtype) }
}

/// Causal depthwise conv1d followed by SiLU, continuing from `window` (docs/spec.md §6.3 step 3):
/// `out_t = silu(bias + Σ_j w[:, j] · x_{t−k+1+j})`, where inputs before the sequence come from the
/// window (the last `k` inputs seen, zeros at the start). Returns the output and the new window.
pub fn causal_conv1d<B: Backend>(x: ConvInput<B>) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let dtype = x.x.dtype();
    let [bsz, l, di] = x.x.dims();
    let k = x.weight.dims()[1];
    let full = Tensor::cat(vec![x.window, x.x], 1); // (b, k + l, i)
    let new_window = full.clone().narrow(1, l, k);
    let full = full.cast(FloatDType::F32);
    let weight = x.weight.cast(FloatDType::F32);
    let mut acc = match x.bias {
        Some(bias) => bias.cast(FloatDType::F32).reshape([1, 1, di]).expand([bsz, l, di]),
        None => Tensor::zeros([bsz, l, di], (&full.device(), DType::F32)),
    };
    // Tap j multiplies the input j − (k − 1) steps back: window slot 1 + j for the first output.
    for j in 0..k {
        let w = weight.clone().narrow(1, j, 1).reshape([1, 1, di]);
        acc = acc + full.clone().narrow(1, 1 + j, l) * w;
    }
    (silu(acc).cast(dtype), new_window)
}

/// RMS norm (docs/spec.md §6.2, §6.3 step 5): `x` rounded to `dtype`, each segment normalised in f32 by
/// [`rms`] and rounded back, then the weight multiplies in the wider of the two dtypes.
pub fn rms_norm<B: Backend>(x: RmsNormInput<B>) -> Tensor<B, 3> {
    let d = x.x.dims()[2];
    let v = if x.x.dtype() == x.dtype { x.x } else { x.x.cast(FloatDType::from(x.dtype)) };
    let [s1, s2] = x.segments;
    let normed = if s1 >= d {
        rms(v, x.eps)
    } else {
        let parts: Vec<Tensor<B, 3>> = [(0, s1), (s1, s2), (s2, d)]
            .into_iter()
            .filter(|&(a, b)| b > a)
            .map(|(a, b)| rms(v.clone().narrow(2, a, b - a), x.eps))
            .collect();
        Tensor::cat(parts, 2)
    };
    match x.weight {
        None => normed,
        Some(w) if w.dtype() == normed.dtype() => normed * w.unsqueeze::<3>(),
        Some(w) => normed.cast(FloatDType::F32) * w.cast(FloatDType::F32).unsqueeze::<3>(),
    }
}

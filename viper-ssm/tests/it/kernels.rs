//! The hand-written CubeCL kernels against the tensor-op reference (run on NdArray in f32).
//!
//! Built only with `--features wgpu` (CI: lavapipe) or `--features cuda` (GPU machine); with both, CUDA
//! is tested. Inputs are fresh random draws each run (the seed is printed), with odd sizes, non-zero
//! initial states, batch > 1, L = 1, L not a multiple of the block scan's tile, and views (`narrow`) as inputs the
//! way the mixer passes them. f32: relative L2 error < 1e-5. bf16/f16: error within twice the
//! reference's own rounding spread (the f32 reference rounded to the storage dtype).
//!
//! Few shapes on purpose: every distinct kernel costs 10–20 s of shader compilation on lavapipe.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::backend::NdArray;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use viper_ssm::{reference, ConvInput, ScanInput, SsmBackend, StepInput};

#[cfg(feature = "cuda")]
type K = burn::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type K = burn::backend::Wgpu;
type R = NdArray<f32>;

/// f32 acceptance bound on ‖kernel − reference‖ / ‖reference‖.
const F32_TOL: f64 = 1e-5;

fn rng(tag: &str) -> StdRng {
    let seed: u64 = rand::rng().random();
    eprintln!("{tag}: seed {seed}");
    StdRng::seed_from_u64(seed)
}

fn draw(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Rounds host values to what a `dtype` tensor stores.
fn round(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::BF16 => v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

fn tensor<B: Backend, const D: usize>(v: &[f32], shape: [usize; D], dtype: DType, dev: &B::Device) -> Tensor<B, D> {
    let t = Tensor::<B, D>::from_data(TensorData::new(v.to_vec(), shape), dev);
    if dtype == DType::F32 {
        t
    } else {
        t.cast(FloatDType::from(dtype))
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(FloatDType::F32).into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        assert!(g.is_finite(), "non-finite kernel output {g}");
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Checks `got` against the f32 reference `want`; for 16-bit storage the bound is twice the spread of
/// `want` rounded to that dtype.
fn check(what: &str, got: &[f32], want: &[f32], dtype: DType) {
    let err = rel_err(got, want);
    let tol = match dtype {
        DType::F32 => F32_TOL,
        _ => 2.0 * rel_err(&round(want, dtype), want) + 1e-6,
    };
    eprintln!("  {what} ({dtype:?}): rel err {err:.3e} (bound {tol:.3e})");
    assert!(err < tol, "{what} ({dtype:?}): rel err {err:.3e} ≥ {tol:.3e}");
}

/// Checks `got` against `want` with an explicit relative-L2 bound.
fn check_bound(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let err = rel_err(got, want);
    eprintln!("  {what}: rel err {err:.3e} (bound {tol:.3e})");
    assert!(err < tol, "{what}: rel err {err:.3e} ≥ {tol:.3e}");
}

struct ScanCase {
    b: usize,
    l: usize,
    i: usize,
    n: usize,
}

/// Host-side inputs of one scan; `xz`/`dbc` are the packed projections the mixer narrows.
struct ScanData {
    xz: Vec<f32>,
    dbc: Vec<f32>,
    delta: Vec<f32>,
    bias: Vec<f32>,
    a_log: Vec<f32>,
    d: Vec<f32>,
    state: Vec<f32>,
}

impl ScanData {
    /// The values as stored: activations and parameters in `act`, the state in `state_dtype`.
    fn rounded(&self, act: DType, state_dtype: DType) -> ScanData {
        ScanData {
            xz: round(&self.xz, act),
            dbc: round(&self.dbc, act),
            delta: round(&self.delta, act),
            bias: round(&self.bias, act),
            a_log: round(&self.a_log, act),
            d: round(&self.d, act),
            state: round(&self.state, state_dtype),
        }
    }
}

fn scan_data(c: &ScanCase, rng: &mut StdRng) -> ScanData {
    let ScanCase { b, l, i, n } = *c;
    let mut delta = draw(rng, b * l * i, -4.0, 1.0);
    // A few values past softplus' threshold of 20 take its linear branch.
    for k in (0..delta.len()).step_by(97) {
        delta[k] = 21.0;
    }
    ScanData {
        xz: draw(rng, b * l * 2 * i, -2.0, 2.0),
        dbc: draw(rng, b * l * (3 + 2 * n), -1.5, 1.5),
        delta,
        bias: draw(rng, i, -1.0, 1.0),
        a_log: draw(rng, i * n, 0.5f32.ln(), 16f32.ln()),
        d: draw(rng, i, -1.0, 1.0),
        state: draw(rng, b * i * n, -1.0, 1.0),
    }
}

fn scan_input<B: Backend>(c: &ScanCase, x: &ScanData, act: DType, state_dtype: DType, dev: &B::Device) -> ScanInput<B> {
    let ScanCase { b, l, i, n } = *c;
    let xz = tensor::<B, 3>(&x.xz, [b, l, 2 * i], act, dev);
    // x_proj's output [dt (3) | B (n) | C (n)]: B and C are views with stride 3 + 2n.
    let dbc = tensor::<B, 3>(&x.dbc, [b, l, 3 + 2 * n], act, dev);
    ScanInput {
        u: xz.clone().narrow(2, 0, i),
        delta: tensor(&x.delta, [b, l, i], act, dev),
        delta_bias: tensor(&x.bias, [i], act, dev),
        a_log: tensor(&x.a_log, [i, n], act, dev),
        b: dbc.clone().narrow(2, 3, n),
        c: dbc.narrow(2, 3 + n, n),
        d: tensor(&x.d, [i], act, dev),
        z: xz.narrow(2, i, i),
        state: tensor(&x.state, [b, i, n], state_dtype, dev),
    }
}

/// Runs one scan case through the kernel backend and the reference.
fn scan_case(c: ScanCase, act: DType, state_dtype: DType) {
    let mut rng = rng(&format!("scan b={} l={} i={} n={} {act:?}/{state_dtype:?}", c.b, c.l, c.i, c.n));
    let x = scan_data(&c, &mut rng);
    let dev = Default::default();
    let input = scan_input::<K>(&c, &x, act, state_dtype, &dev);
    let out = K::selective_scan(input);
    assert_eq!(out.y.dtype(), act);
    assert_eq!(out.state.dtype(), state_dtype);
    let (y, state) = (host(out.y), host(out.state));

    // The reference sees exactly the values the kernel read (rounded to the storage dtype).
    let rx = x.rounded(act, state_dtype);
    let want = reference::selective_scan(scan_input::<R>(&c, &rx, DType::F32, DType::F32, &Default::default()));
    check("y", &y, &host(want.y), act);
    check("state", &state, &host(want.state), state_dtype);
}

/// A decode step with dt_proj folded into the scan (`selective_state_update_projected`): `delta` is a
/// low-rank dt `[b, l, rank]` and the weight a transposed view of `[i, rank]`, as the loader lays out
/// dt_proj; against the default body (product, then scan) on the f32 reference backend.
fn scan_projected_case(c: ScanCase, rank: usize, act: DType) {
    let mut rng = rng(&format!("scan projected b={} l={} i={} n={} rank={rank} {act:?}", c.b, c.l, c.i, c.n));
    let x = scan_data(&c, &mut rng);
    let dt = round(&draw(&mut rng, c.b * c.l * rank, -1.0, 1.0), act);
    let w = round(&draw(&mut rng, c.i * rank, -0.4, 0.4), act);
    let run = |dtype: DType, x: &ScanData| {
        let dev = Default::default();
        let mut input = scan_input::<K>(&c, x, dtype, dtype, &dev);
        input.delta = tensor(&dt, [c.b, c.l, rank], dtype, &dev);
        K::selective_state_update_projected(input, tensor::<K, 2>(&w, [c.i, rank], dtype, &dev).transpose())
    };
    let out = run(act, &x);
    let rx = x.rounded(act, act);
    let dev = Default::default();
    let mut input = scan_input::<R>(&c, &rx, DType::F32, DType::F32, &dev);
    input.delta = tensor(&dt, [c.b, c.l, rank], DType::F32, &dev);
    let want =
        R::selective_state_update_projected(input, tensor::<R, 2>(&w, [c.i, rank], DType::F32, &dev).transpose());
    check("y (dt_proj folded)", &host(out.y), &host(want.y), act);
    check("state (dt_proj folded)", &host(out.state), &host(want.state), act);
}

/// A FalconMamba decode step from x_proj's raw output (`selective_state_update_dbc`: dt/B/C norms,
/// dt_proj and the scan step in one launch). Against its default body on the f32 reference backend;
/// in 16-bit also against the same body on the kernel backend (the split norm and the projected scan
/// step, each checked above), which rounds dt', B', C' and Δ where the fused kernel does: there the
/// two may differ only by f32 summation order.
fn scan_dbc_case(c: ScanCase, rank: usize, act: DType) {
    let mut rng = rng(&format!("scan step from dbc b={} l={} i={} n={} rank={rank} {act:?}", c.b, c.l, c.i, c.n));
    let x = scan_data(&c, &mut rng);
    let width = rank + 2 * c.n;
    let dbc = round(&draw(&mut rng, c.b * c.l * width, -1.5, 1.5), act);
    let w = round(&draw(&mut rng, c.i * rank, -0.4, 0.4), act);
    fn input<B: Backend>(
        c: &ScanCase,
        x: &ScanData,
        dbc: &[f32],
        w: &[f32],
        rank: usize,
        dtype: DType,
    ) -> StepInput<B> {
        let dev = Default::default();
        let s = scan_input::<B>(c, x, dtype, dtype, &dev);
        StepInput {
            u: s.u,
            dbc: tensor(dbc, [c.b, c.l, rank + 2 * c.n], dtype, &dev),
            eps: 1e-6,
            dt_proj: tensor::<B, 2>(w, [c.i, rank], dtype, &dev).transpose(),
            delta_bias: s.delta_bias,
            a_log: s.a_log,
            d: s.d,
            z: s.z,
            state: s.state,
        }
    }
    let out = K::selective_state_update_dbc(input::<K>(&c, &x, &dbc, &w, rank, act));
    let (y, state) = (host(out.y), host(out.state));
    if act == DType::F32 {
        let want = R::selective_state_update_dbc(input::<R>(&c, &x, &dbc, &w, rank, DType::F32));
        check("y (step from dbc)", &y, &host(want.y), act);
        check("state (step from dbc)", &state, &host(want.state), act);
        return;
    }
    let s = input::<K>(&c, &x, &dbc, &w, rank, act);
    let [dt, b, cm] = K::rms_norm_split(viper_ssm::RmsNormInput {
        x: s.dbc,
        weight: None,
        eps: s.eps,
        dtype: act,
        segments: [rank, rank + c.n],
    });
    let scan = ScanInput {
        u: s.u,
        delta: dt,
        delta_bias: s.delta_bias,
        a_log: s.a_log,
        b,
        c: cm,
        d: s.d,
        z: s.z,
        state: s.state,
    };
    let want = K::selective_state_update_projected(scan, s.dt_proj);
    // Summation order alone can flip a rounding of Δ or of the output: at most one unit in the last
    // place of the storage dtype, relative.
    let tol = if act == DType::F16 { 2f64.powi(-11) } else { 2f64.powi(-8) };
    check_bound("y (step from dbc, vs unfused on the kernel backend)", &y, &host(want.y), tol);
    check_bound("state (step from dbc, vs unfused on the kernel backend)", &state, &host(want.state), tol);
}

fn conv_case(b: usize, l: usize, i: usize, k: usize, bias: bool, dtype: DType) {
    let mut rng = rng(&format!("conv b={b} l={l} i={i} k={k} bias={bias} {dtype:?}"));
    let xz = round(&draw(&mut rng, b * l * 2 * i, -2.0, 2.0), dtype);
    let window = round(&draw(&mut rng, b * k * i, -2.0, 2.0), dtype);
    let weight = round(&draw(&mut rng, i * k, -1.0, 1.0), dtype);
    let bias_v = round(&draw(&mut rng, i, -1.0, 1.0), dtype);
    fn input<B: Backend>(
        v: (&[f32], &[f32], &[f32], &[f32]),
        (b, l, i, k, bias): (usize, usize, usize, usize, bool),
        dtype: DType,
        dev: &B::Device,
    ) -> ConvInput<B> {
        ConvInput {
            x: tensor::<B, 3>(v.0, [b, l, 2 * i], dtype, dev).narrow(2, 0, i),
            window: tensor(v.1, [b, k, i], dtype, dev),
            weight: tensor(v.2, [i, k], dtype, dev),
            bias: bias.then(|| tensor(v.3, [i], dtype, dev)),
        }
    }
    let v = (&xz[..], &window[..], &weight[..], &bias_v[..]);
    let shape = (b, l, i, k, bias);
    let dev = Default::default();
    let inp = input::<K>(v, shape, dtype, &dev);
    let (y, win) = K::causal_conv1d(inp);
    let (want_y, want_win) = reference::causal_conv1d(input::<R>(v, shape, DType::F32, &Default::default()));
    check("conv out", &host(y), &host(want_y), dtype);
    // The window is a copy: exact.
    assert_eq!(host(win), host(want_win), "conv window");
}

#[test]
fn scan_f32() {
    // Block scan: 2 tiles of 64 (L = 70 is no multiple of the tile), batch 2, odd width (a partial
    // cube of 32 lanes).
    scan_case(ScanCase { b: 2, l: 70, i: 37, n: 16 }, DType::F32, DType::F32);
    // Block scan over 5 tiles, the last one partial.
    scan_case(ScanCase { b: 1, l: 300, i: 64, n: 16 }, DType::F32, DType::F32);
    // Block scan with an odd state size (padded to a group of 4) in one partial tile.
    scan_case(ScanCase { b: 2, l: 23, i: 37, n: 5 }, DType::F32, DType::F32);
    // Sequential kernel: a short sequence with an odd state size.
    scan_case(ScanCase { b: 3, l: 5, i: 19, n: 7 }, DType::F32, DType::F32);
    // L = 1: a decode step.
    scan_case(ScanCase { b: 3, l: 1, i: 37, n: 16 }, DType::F32, DType::F32);
    // Decode step with dt_proj folded in (odd rank and width, batch 2).
    scan_projected_case(ScanCase { b: 2, l: 1, i: 37, n: 16 }, 13, DType::F32);
    // FalconMamba's step from x_proj's output: odd rank (not a multiple of the 8 rows), a partial cube,
    // batch 2; and 3 steps in one launch.
    scan_dbc_case(ScanCase { b: 2, l: 1, i: 37, n: 16 }, 13, DType::F32);
    scan_dbc_case(ScanCase { b: 1, l: 3, i: 70, n: 16 }, 40, DType::F32);
}

#[test]
fn conv_f32() {
    conv_case(2, 9, 37, 4, true, DType::F32);
    // Several runs of 16 positions per thread, the last one partial.
    conv_case(1, 40, 37, 4, true, DType::F32);
    // L < K: the new window mixes old window and new inputs.
    conv_case(2, 2, 37, 4, false, DType::F32);
    // Decode update.
    conv_case(3, 1, 37, 4, true, DType::F32);
}

/// bf16 storage, f32 arithmetic (CUDA); state in bf16 (HF's cache) and in f32.
#[cfg(feature = "cuda")]
#[test]
fn scan_conv_bf16() {
    scan_case(ScanCase { b: 2, l: 300, i: 64, n: 16 }, DType::BF16, DType::BF16);
    scan_case(ScanCase { b: 2, l: 70, i: 37, n: 16 }, DType::BF16, DType::F32);
    scan_case(ScanCase { b: 2, l: 1, i: 64, n: 16 }, DType::BF16, DType::BF16);
    scan_projected_case(ScanCase { b: 1, l: 1, i: 300, n: 16 }, 256, DType::BF16);
    scan_dbc_case(ScanCase { b: 2, l: 1, i: 300, n: 16 }, 256, DType::BF16);
    conv_case(2, 9, 37, 4, true, DType::BF16);
    conv_case(2, 1, 37, 4, true, DType::BF16);
}

/// f16 where the adapter has shader-f16 (skipped, with a note, where it has not).
#[test]
fn scan_f16() {
    let dev = Default::default();
    if !K::supports_dtype(&dev, DType::F16) {
        eprintln!("f16 not supported by this adapter: skipped");
        return;
    }
    scan_case(ScanCase { b: 2, l: 70, i: 37, n: 16 }, DType::F16, DType::F32);
    scan_case(ScanCase { b: 2, l: 1, i: 37, n: 16 }, DType::F16, DType::F16);
}

/// Runs one RMS-norm case through the kernel backend and the reference. `x` is stored in `x_dtype`,
/// rounded to `dtype` first; the weight (if any) is stored in `w_dtype`.
fn norm_case(shape: [usize; 3], segments: [usize; 2], x_dtype: DType, dtype: DType, w_dtype: Option<DType>) {
    let mut rng = rng(&format!("rms_norm {shape:?} {segments:?} {x_dtype:?}→{dtype:?} weight {w_dtype:?}"));
    let [b, l, d] = shape;
    let x = round(&draw(&mut rng, b * l * d, -3.0, 3.0), x_dtype);
    let w = w_dtype.map(|wd| round(&draw(&mut rng, d, 0.5, 1.5), wd));
    fn input<B: Backend>(
        x: &[f32],
        w: Option<&[f32]>,
        shape: [usize; 3],
        (x_dtype, dtype, w_dtype, segments): (DType, DType, Option<DType>, [usize; 2]),
        dev: &B::Device,
    ) -> viper_ssm::RmsNormInput<B> {
        viper_ssm::RmsNormInput {
            x: tensor::<B, 3>(x, shape, x_dtype, dev),
            weight: w.map(|w| tensor(w, [shape[2]], w_dtype.unwrap(), dev)),
            eps: 1e-5,
            dtype,
            segments,
        }
    }
    let args = (x_dtype, dtype, w_dtype, segments);
    let got = K::rms_norm(input::<K>(&x, w.as_deref(), shape, args, &Default::default()));
    // The tensor-op reference on the same backend: the same storage roundings, op by op.
    let want = viper_ssm::reference::rms_norm(input::<K>(&x, w.as_deref(), shape, args, &Default::default()));
    let out_dtype = match w_dtype {
        Some(wd) if wd != dtype => DType::F32,
        _ => dtype,
    };
    assert_eq!(got.dtype(), out_dtype);
    assert_eq!(want.dtype(), out_dtype);
    // Both sides round to `dtype` at the same points; only the sum of squares' order differs, which
    // can flip a rounding of the normalised value by one unit in the last place of `dtype` (2⁻⁸ of the
    // value for bf16, 2⁻¹¹ for f16) on a few elements. The bound is one such unit over all elements.
    let tol = match dtype {
        DType::BF16 => 2f64.powi(-8),
        DType::F16 => 2f64.powi(-11),
        _ => F32_TOL,
    };
    let want = host(want);
    check_bound("rms_norm", &host(got), &want, tol);

    // The same norm with its segments returned as separate tensors (views of one buffer on CubeCL).
    let [s1, s2] = segments;
    if !(0 < s1 && s1 < s2 && s2 < d) {
        return; // split needs three non-empty segments
    }
    let split = K::rms_norm_split(input::<K>(&x, w.as_deref(), shape, args, &Default::default()));
    for (seg, (lo, hi)) in split.into_iter().zip([(0, s1), (s1, s2), (s2, d)]) {
        assert_eq!(seg.dims(), [b, l, hi - lo]);
        let want_seg: Vec<f32> =
            (0..b * l).flat_map(|r| want[r * d + lo..r * d + hi].iter().copied()).collect::<Vec<_>>();
        check_bound("rms_norm_split", &host(seg), &want_seg, tol);
    }
}

/// The residual add fused with the next norm: `s = h + y` in `stream`, then the norm in `dtype`,
/// against the trait's tensor-op default (cast, add, reference norm) on the kernel backend.
fn add_norm_case(shape: [usize; 3], stream: DType, y_dtype: DType, dtype: DType, w_dtype: DType) {
    let mut rng = rng(&format!("add_rms_norm {shape:?} stream {stream:?} y {y_dtype:?} → {dtype:?} w {w_dtype:?}"));
    let [_, _, d] = shape;
    let n: usize = shape.iter().product();
    let h = round(&draw(&mut rng, n, -3.0, 3.0), stream);
    let y = round(&draw(&mut rng, n, -3.0, 3.0), y_dtype);
    let w = round(&draw(&mut rng, d, 0.5, 1.5), w_dtype);
    let dev = Default::default();
    let input = || viper_ssm::RmsNormInput::<K> {
        x: tensor(&h, shape, stream, &dev),
        weight: Some(tensor(&w, [d], w_dtype, &dev)),
        eps: 1e-5,
        dtype,
        segments: [d, d],
    };
    let (s, out) = K::add_rms_norm(input(), tensor(&y, shape, y_dtype, &dev), stream);
    let st = FloatDType::from(stream);
    let want_s = input().x.cast(st) + tensor::<K, 3>(&y, shape, y_dtype, &dev).cast(st);
    let want = reference::rms_norm(viper_ssm::RmsNormInput { x: want_s.clone(), ..input() });
    assert_eq!((s.dtype(), out.dtype()), (stream, want.dtype()));
    // The sum is one rounding of the same f32 sum: identical.
    assert_eq!(host(s), host(want_s), "residual sum");
    let tol = match dtype {
        DType::BF16 => 2f64.powi(-8),
        _ => F32_TOL,
    };
    check_bound("add_rms_norm", &host(out), &host(want), tol);
}

#[test]
fn add_rms_norm_f32() {
    // A row wider than the cube, odd width, batch 2.
    add_norm_case([2, 3, 301], DType::F32, DType::F32, DType::F32, DType::F32);
}

/// FalconMamba's bf16 model: f32 stream, bf16 mixer output, normalised in bf16; and a bf16 stream.
#[cfg(feature = "cuda")]
#[test]
fn add_rms_norm_bf16() {
    add_norm_case([1, 3, 4096], DType::F32, DType::BF16, DType::BF16, DType::BF16);
    add_norm_case([2, 2, 300], DType::BF16, DType::BF16, DType::BF16, DType::BF16);
}

#[test]
fn rms_norm_f32() {
    // One segment with a weight, a row wider than the cube (strided columns) and an odd width.
    norm_case([2, 3, 301], [301, 301], DType::F32, DType::F32, Some(DType::F32));
    // FalconMamba's dt | B | C: three segments, no weight.
    norm_case([2, 5, 29], [13, 21], DType::F32, DType::F32, None);
}

/// bf16 model: the f32 residual stream normalised in bf16 with a bf16 weight, and with an f32 weight
/// (f32 output); the weightless segments in bf16.
#[cfg(feature = "cuda")]
#[test]
fn rms_norm_bf16() {
    norm_case([1, 4, 4096], [4096, 4096], DType::F32, DType::BF16, Some(DType::BF16));
    norm_case([2, 3, 301], [301, 301], DType::BF16, DType::BF16, Some(DType::F32));
    norm_case([2, 5, 288], [256, 272], DType::BF16, DType::BF16, None);
}

/// One Linear through `SsmBackend::projection` against NdArray's matmul in f32. `transposed` builds the
/// weight the way the loader does (a transposed view of `[d_out, d_in]`), which the GEMV kernel takes;
/// otherwise the backend falls back to Burn's product.
fn linear_case(b: usize, l: usize, k: usize, n: usize, bias: bool, transposed: bool, dtype: DType) {
    let mut rng = rng(&format!("linear b={b} l={l} k={k} n={n} bias={bias} transposed={transposed} {dtype:?}"));
    let x = round(&draw(&mut rng, b * l * k, -1.0, 1.0), dtype);
    let w = round(&draw(&mut rng, k * n, -0.5, 0.5), dtype); // [n, k] when transposed, else [k, n]
    let bv = round(&draw(&mut rng, n, -1.0, 1.0), dtype);
    fn run<B: SsmBackend>(
        (x, w, bv): (&[f32], &[f32], &[f32]),
        (b, l, k, n, bias, transposed): (usize, usize, usize, usize, bool, bool),
        dtype: DType,
    ) -> Tensor<B, 3> {
        let dev = Default::default();
        let weight = if transposed {
            tensor::<B, 2>(w, [n, k], dtype, &dev).transpose()
        } else {
            tensor::<B, 2>(w, [k, n], dtype, &dev)
        };
        let bias = bias.then(|| tensor::<B, 1>(bv, [n], dtype, &dev));
        B::projection(tensor::<B, 3>(x, [b, l, k], dtype, &dev), weight, bias)
    }
    let shape = (b, l, k, n, bias, transposed);
    let got = run::<K>((&x, &w, &bv), shape, dtype);
    assert_eq!(got.dims(), [b, l, n]);
    if transposed && b * l <= 8 {
        let want = run::<R>((&x, &w, &bv), shape, DType::F32);
        check("linear", &host(got), &host(want), dtype);
    } else if cfg!(feature = "cuda") && b * l >= 16 {
        // cuBLAS: f32 accumulation (no TF32) against NdArray's f32 product.
        let want = run::<R>((&x, &w, &bv), shape, DType::F32);
        check("linear cuBLAS", &host(got), &host(want), dtype);
    } else if viper_ssm::kernels::split_k(b * l, k, n).is_some() {
        // Split-K product: f32 partials of Burn's matmul summed. Burn's CUDA f32 matmul rounds its
        // inputs like TF32 (~2e-4 relative), so f32 is held to that there.
        let want = run::<R>((&x, &w, &bv), shape, DType::F32);
        if dtype == DType::F32 && cfg!(feature = "cuda") {
            check_bound("linear split-K", &host(got), &host(want), 1e-3);
        } else {
            check("linear split-K", &host(got), &host(want), dtype);
        }
    } else {
        // The fallback is Burn's own product on the same backend (on CUDA its f32 matmul may use TF32).
        let dev = Default::default();
        let weight = tensor::<K, 2>(&w, [k, n], dtype, &dev);
        let weight = if transposed { tensor::<K, 2>(&w, [n, k], dtype, &dev).transpose() } else { weight };
        let bias = bias.then(|| tensor::<K, 1>(&bv, [n], dtype, &dev));
        let want = burn::tensor::module::linear(tensor::<K, 3>(&x, [b, l, k], dtype, &dev), weight, bias);
        assert_eq!(host(got), host(want), "fallback differs from Burn's linear");
    }
}

#[test]
fn linear_f32() {
    // GEMV: one token, an odd width and a partial tile of 8 output columns, with a bias.
    linear_case(1, 1, 300, 37, true, true, DType::F32);
    // GEMV with several rows (batch 2 × 2 positions), no bias; few long columns (split over 8 warps).
    linear_case(2, 2, 1030, 21, false, true, DType::F32);
    // Many columns (one warp each) and split over 2 and 4 warps.
    linear_case(1, 1, 200, 8200, false, true, DType::F32);
    linear_case(1, 1, 520, 2100, true, true, DType::F32);
    // Fallbacks to Burn's product: a contiguous [d_in, d_out] weight; more than 8 rows.
    linear_case(1, 1, 64, 16, true, false, DType::F32);
    linear_case(3, 5, 64, 16, false, true, DType::F32);
    // Split-K (prefill x_proj shape, scaled down; cuBLAS on CUDA): 2 × 20 rows, k = 2048, 24 columns,
    // with a bias.
    linear_case(2, 20, 2048, 24, true, true, DType::F32);
    // More rows with a contiguous weight (cuBLAS on CUDA, Burn's product elsewhere).
    linear_case(1, 50, 96, 70, false, false, DType::F32);
}

/// The cuBLAS path with rows read through a stride (a `narrow`ed input, as dt_proj's) and batch > 1.
#[cfg(feature = "cuda")]
#[test]
fn linear_cublas_strided() {
    assert!(viper_ssm::cublas::available(), "libcublas must be loadable for the CUDA tests");
    for dtype in [DType::F32, DType::BF16] {
        let (b, l, k, wide, n) = (3, 11, 200, 231, 97);
        let mut rng = rng(&format!("linear strided {dtype:?}"));
        let x = round(&draw(&mut rng, b * l * wide, -1.0, 1.0), dtype);
        let w = round(&draw(&mut rng, n * k, -0.5, 0.5), dtype);
        fn run<B: SsmBackend>(x: &[f32], w: &[f32], s: (usize, usize, usize, usize, usize), dtype: DType) -> Vec<f32> {
            let (b, l, k, wide, n) = s;
            let dev = Default::default();
            let x = tensor::<B, 3>(x, [b, l, wide], dtype, &dev).narrow(2, 3, k);
            host(B::projection(x, tensor::<B, 2>(w, [n, k], dtype, &dev).transpose(), None))
        }
        // The cuBLAS path itself takes these layouts (no silent fallback to Burn's product).
        {
            type P = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
            let dev = Default::default();
            let xp = tensor::<P, 3>(&x, [b, l, wide], dtype, &dev).narrow(2, 3, k).into_primitive().tensor();
            let wp = tensor::<P, 2>(&w, [n, k], dtype, &dev).transpose().into_primitive().tensor();
            let out = viper_ssm::cublas::linear(&xp, &wp).expect("cuBLAS refused a strided input");
            assert_eq!(out.meta.shape().to_vec(), vec![b, l, n]);
        }
        let s = (b, l, k, wide, n);
        check("linear cuBLAS strided", &run::<K>(&x, &w, s, dtype), &run::<R>(&x, &w, s, DType::F32), dtype);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn linear_bf16() {
    linear_case(1, 1, 4096, 300, false, true, DType::BF16);
    linear_case(4, 1, 256, 520, true, true, DType::BF16);
    // k not a multiple of 8: scalar loads.
    linear_case(1, 1, 4100, 40, false, true, DType::BF16);
    // Prefill rows (cuBLAS on CUDA): x_proj's width, a contiguous weight with a bias, an odd k.
    linear_case(1, 64, 8192, 288, false, true, DType::BF16);
    linear_case(2, 40, 512, 300, true, false, DType::BF16);
    linear_case(1, 33, 1001, 130, false, true, DType::BF16);
}

/// Grouped-query attention (`viper_ssm::attention`: cuBLAS products and an f32 softmax on CUDA)
/// against the tensor-op body on NdArray: a causal chunk after cached positions, a decode step and an
/// unmasked CLIP-like case, K/V as narrowed views of a larger cache, f32 and bf16.
#[cfg(feature = "cuda")]
#[test]
fn attention_cuda() {
    use viper_ssm::AttentionInput;
    assert!(viper_ssm::cublas::available(), "libcublas must be loadable for the CUDA tests");
    // (query heads, kv heads, lq, lk, d, causal)
    let cases = [(8, 2, 7, 20, 16, false), (8, 2, 7, 20, 16, true), (8, 2, 1, 33, 16, true), (6, 6, 17, 17, 12, false)];
    for dtype in [DType::F32, DType::BF16] {
        for (n, nk, lq, lk, d, causal) in cases {
            let mut rng = rng(&format!("attention {n}/{nk} {lq}x{lk} {dtype:?}"));
            let cap = lk + 5;
            let q = round(&draw(&mut rng, n * lq * d, -2.0, 2.0), dtype);
            let k = round(&draw(&mut rng, nk * cap * d, -2.0, 2.0), dtype);
            let v = round(&draw(&mut rng, nk * cap * d, -1.0, 1.0), dtype);
            let run = |dt: DType, gpu: bool| {
                fn go<B: SsmBackend>(x: [&[f32]; 3], s: [usize; 6], causal: bool, dt: DType) -> Vec<f32> {
                    let [n, nk, lq, lk, d, cap] = s;
                    let dev = Default::default();
                    let kv = |v: &[f32]| tensor::<B, 3>(v, [nk, cap, d], dt, &dev).narrow(1, 0, lk);
                    let input = AttentionInput {
                        q: tensor::<B, 3>(x[0], [n, lq, d], dt, &dev),
                        k: kv(x[1]),
                        v: kv(x[2]),
                        causal,
                    };
                    host(viper_ssm::attention(input))
                }
                let s = [n, nk, lq, lk, d, cap];
                if gpu {
                    go::<K>([&q, &k, &v], s, causal, dt)
                } else {
                    go::<R>([&q, &k, &v], s, causal, dt)
                }
            };
            let what = format!("attention {n}/{nk} heads, {lq} × {lk}, causal {causal}");
            let (got, want) = (run(dtype, true), run(DType::F32, false));
            if dtype == DType::F32 {
                check(&what, &got, &want, dtype);
            } else {
                // Inputs, the probabilities and the output each rounded to bf16.
                check_bound(&what, &got, &want, 3.0 * rel_err(&round(&want, dtype), &want) + 1e-6);
            }
        }
    }
    // The batched product itself takes a narrowed cache view in place (no silent fallback).
    type P = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
    let dev = Default::default();
    let a = tensor::<P, 3>(&[0.5; 2 * 3 * 4], [2, 3, 4], DType::F32, &dev).into_primitive().tensor();
    let b = tensor::<P, 3>(&[0.25; 2 * 9 * 4], [2, 9, 4], DType::F32, &dev).narrow(1, 0, 5).into_primitive().tensor();
    let out = viper_ssm::cublas::batched_matmul(&a, &b, true, 2.0, DType::F32).expect("cuBLAS refused a cache view");
    assert_eq!(out.meta.shape().to_vec(), vec![2, 3, 5]);
    let got: Vec<f32> = host(Tensor::<P, 3>::from_primitive(burn::tensor::TensorPrimitive::Float(out)));
    assert!(got.iter().all(|&x| (x - 1.0).abs() < 1e-6), "2 · Σ₄ 0.5 · 0.25 = 1, got {got:?}");
}

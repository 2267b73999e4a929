//! GPU benchmark of the SSM kernels and of a falcon-mamba-7b-shaped model (random bf16 weights) on CUDA.
//!
//! ```text
//! cargo build --release -p viper-examples --features cuda,fusion,autotune --bin bench
//! bench [--out BENCHMARKS.md] [--layers 64] [--quick] [--kernels-only] [--decode-only] [--steps N]
//!       [--prefill-only L] [--host] [--matmul] [--matmul-sweep] [--cublas] [--profile-host STEPS]
//! ```
//!
//! On CUDA the prefill products go through cuBLAS, loaded at run time from the loader's path or the
//! CUDA toolkit's directories (see `viper_ssm::cublas::available`); else they fall back to Burn's matmul.
//!
//! Prints a markdown report and writes it to `--out`:
//! 1. device-to-device copy bandwidth (an element-wise `x · 1` over 1 GiB, bytes read + written);
//! 2. scan and conv kernel times at d_inner 8192, d_state 16, batch 1, L ∈ {1, 512, 2048, 8192, 29000},
//!    with the bytes each must move at least (inputs once, outputs once) over its time;
//! 3. the model: prefill tokens/s at L = 2048 and 8192, decode tokens/s at batch 1 (greedy, the token read
//!    back every step as generation does; and with the ids kept on the device, splitting the host's
//!    queueing time from the total), on the plain `CubeBackend` and on Burn's default `Cuda`
//!    (fusion-wrapped when built with `fusion`).
//!
//! `--decode-only` runs just the plain backend's decode and `--prefill-only L` two prefills at L (for `ncu`
//! profiles). Peak GPU memory
//! comes from `nvidia-smi` sampled by the caller (see BENCHMARKS.md).

use std::fmt::Write as _;
use std::time::Instant;

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::{DType, Distribution, FloatDType};
use viper_model::falcon_mamba::{FalconMambaBlock, FalconMambaModel};
use viper_model::{FalconMambaCache, FalconMambaConfig, FalconMambaForCausalLM, LanguageModel, Logits};
use viper_ssm::{ConvInput, MambaMixer, RmsNorm, ScanInput, SsmBackend, StepInput};

type Plain = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, half::bf16, i32, u8>;
type Default_ = burn::backend::Cuda<half::bf16>;

const D_INNER: usize = 8192;
const D_STATE: usize = 16;
const D_MODEL: usize = 4096;
const SCAN_LENGTHS: [usize; 5] = [1, 512, 2048, 8192, 29000];

fn sync<B: Backend>(dev: &B::Device) {
    B::sync(dev).expect("device sync");
}

/// Median seconds of `f` over `reps` runs (after `warm` untimed runs), each run synchronised.
fn time<B: Backend>(dev: &B::Device, warm: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warm {
        f();
    }
    sync::<B>(dev);
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f();
        sync::<B>(dev);
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ts[ts.len() / 2]
}

/// Mean seconds per call over a batch of `reps` back-to-back calls (one sync at the end): for
/// launch-bound calls where a per-call sync would dominate.
fn time_batched<B: Backend>(dev: &B::Device, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    sync::<B>(dev);
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    sync::<B>(dev);
    t.elapsed().as_secs_f64() / reps as f64
}

fn rand<B: Backend, const D: usize>(
    shape: [usize; D],
    lo: f64,
    hi: f64,
    dtype: DType,
    dev: &B::Device,
) -> Tensor<B, D> {
    Tensor::<B, D>::random(shape, Distribution::Uniform(lo, hi), dev).cast(FloatDType::from(dtype))
}

fn copy_bandwidth<B: Backend>(dev: &B::Device) -> f64 {
    let n = 1usize << 28; // 1 GiB of f32
    let x = rand::<B, 1>([n], -1.0, 1.0, DType::F32, dev);
    let s = time::<B>(dev, 3, 20, || {
        let _ = x.clone().mul_scalar(1.0);
    });
    2.0 * (n * 4) as f64 / s
}

fn scan_inputs<B: Backend>(l: usize, dtype: DType, dev: &B::Device) -> ScanInput<B> {
    ScanInput {
        u: rand([1, l, D_INNER], -2.0, 2.0, dtype, dev),
        delta: rand([1, l, D_INNER], -4.0, 1.0, dtype, dev),
        delta_bias: rand([D_INNER], -1.0, 1.0, dtype, dev),
        a_log: rand([D_INNER, D_STATE], 0.0, 2.7, dtype, dev),
        b: rand([1, l, D_STATE], -1.0, 1.0, dtype, dev),
        c: rand([1, l, D_STATE], -1.0, 1.0, dtype, dev),
        d: rand([D_INNER], -1.0, 1.0, dtype, dev),
        z: rand([1, l, D_INNER], -3.0, 3.0, dtype, dev),
        state: rand([1, D_INNER, D_STATE], -1.0, 1.0, dtype, dev),
    }
}

/// Kernel table rows: L, dtype, scan time, scan bytes/s, conv time, conv bytes/s.
fn kernel_table<B: SsmBackend>(dev: &B::Device, copy_bw: f64, quick: bool, report: &mut String) {
    writeln!(
        report,
        "| L | dtype | scan time | scan min. bytes | scan bytes/s | % of copy | conv time | conv bytes/s |"
    )
    .unwrap();
    writeln!(report, "|---:|---|---:|---:|---:|---:|---:|---:|").unwrap();
    for dtype in [DType::BF16, DType::F32] {
        for &l in SCAN_LENGTHS.iter().filter(|&&l| !quick || l <= 2048) {
            let e = if dtype == DType::BF16 { 2 } else { 4 };
            let x = scan_inputs::<B>(l, dtype, dev);
            let reps = if l <= 512 { 200 } else { 20 };
            let scan = |x: &ScanInput<B>| {
                let _ = B::selective_scan(x.clone());
            };
            let t_scan =
                if l == 1 { time_batched::<B>(dev, reps, || scan(&x)) } else { time::<B>(dev, 3, reps, || scan(&x)) };
            // u, Δ, z read and o written once; B, C read once; state read and written once.
            let scan_bytes = (4 * l * D_INNER + 2 * l * D_STATE + 2 * D_INNER * D_STATE) * e;
            let conv_in = ConvInput {
                x: x.u.clone(),
                window: rand([1, 4, D_INNER], -1.0, 1.0, dtype, dev),
                weight: rand([D_INNER, 4], -1.0, 1.0, dtype, dev),
                bias: Some(x.d.clone()),
            };
            let conv = |c: &ConvInput<B>| {
                let _ = B::causal_conv1d(c.clone());
            };
            let t_conv = if l == 1 {
                time_batched::<B>(dev, reps, || conv(&conv_in))
            } else {
                time::<B>(dev, 3, reps, || conv(&conv_in))
            };
            // x read and out written once; window read and written; taps read.
            let conv_bytes = (2 * l * D_INNER + 2 * 4 * D_INNER + 5 * D_INNER) * e;
            let (bw_scan, bw_conv) = (scan_bytes as f64 / t_scan, conv_bytes as f64 / t_conv);
            let line = format!(
                "| {l} | {dtype:?} | {:.1} µs | {:.1} MB | {:.0} GB/s | {:.0}% | {:.1} µs | {:.0} GB/s |",
                t_scan * 1e6,
                scan_bytes as f64 / 1e6,
                bw_scan / 1e9,
                100.0 * bw_scan / copy_bw,
                t_conv * 1e6,
                bw_conv / 1e9
            );
            println!("{line}");
            writeln!(report, "{line}").unwrap();
        }
    }
}

/// A Linear laid out as the loader builds it: PyTorch's `[d_out, d_in]` buffer, used transposed.
fn linear<B: Backend>(d_in: usize, d_out: usize, dev: &B::Device) -> Linear<B> {
    let s = 1.0 / (d_in as f64).sqrt();
    Linear { weight: Param::from_tensor(rand([d_out, d_in], -s, s, DType::BF16, dev).transpose()), bias: None }
}

fn norm<B: Backend>(d: usize, eps: f64, dev: &B::Device) -> RmsNorm<B> {
    RmsNorm { weight: Param::from_tensor(Tensor::ones([d], (dev, DType::BF16))), eps }
}

/// falcon-mamba-7b's shapes with random bf16 weights.
fn model<B: SsmBackend>(layers: usize, dev: &B::Device) -> FalconMambaForCausalLM<B> {
    let config: FalconMambaConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": D_MODEL, "num_hidden_layers": layers, "vocab_size": 65024, "state_size": D_STATE,
        "conv_kernel": 4, "time_step_rank": 256, "intermediate_size": D_INNER, "use_conv_bias": true,
        "residual_in_fp32": true, "tie_word_embeddings": false,
    }))
    .expect("config");
    let m = config.mamba();
    let blocks = (0..layers)
        .map(|_| FalconMambaBlock {
            norm: norm(D_MODEL, config.layer_norm_epsilon, dev),
            mixer: MambaMixer {
                in_proj: linear(D_MODEL, 2 * D_INNER, dev),
                conv_weight: Param::from_tensor(rand([D_INNER, 4], -0.5, 0.5, DType::BF16, dev)),
                conv_bias: Some(Param::from_tensor(rand([D_INNER], -0.5, 0.5, DType::BF16, dev))),
                x_proj: linear(D_INNER, m.dt_rank + 2 * D_STATE, dev),
                dt_proj: linear(m.dt_rank, D_INNER, dev),
                dt_bias: Param::from_tensor(rand([D_INNER], -4.0, -2.0, DType::BF16, dev)),
                a_log: Param::from_tensor(rand([D_INNER, D_STATE], 0.0, 2.7, DType::BF16, dev)),
                d: Param::from_tensor(Tensor::ones([D_INNER], (dev, DType::BF16))),
                out_proj: linear(D_INNER, D_MODEL, dev),
                norms: None,
                config: m.clone(),
            },
        })
        .collect();
    FalconMambaForCausalLM {
        backbone: FalconMambaModel {
            embeddings: Embedding { weight: Param::from_tensor(rand([65024, D_MODEL], -1.0, 1.0, DType::BF16, dev)) },
            layers: blocks,
            norm_f: norm(D_MODEL, config.layer_norm_epsilon, dev),
        },
        lm_head: linear(D_MODEL, 65024, dev),
        config,
    }
}

/// Prefill tokens/s at each L and decode tokens/s at batch 1. `decode_steps` of 0 picks the default;
/// `prefill` false skips the prefill rows (profiling runs).
fn model_bench<B: SsmBackend>(
    name: &str,
    layers: usize,
    quick: bool,
    prefill: bool,
    decode_steps: usize,
    dev: &B::Device,
    report: &mut String,
) {
    let t = Instant::now();
    // Weights in the backend's persistent memory pool, as `ViperModel::load` puts them;
    // `VIPER_BENCH_PERSISTENT=0` leaves them in the dynamic pools (session 3's run C).
    let m = if std::env::var("VIPER_BENCH_PERSISTENT").is_ok_and(|v| v == "0") {
        model::<B>(layers, dev)
    } else {
        B::memory_persistent_allocations(dev, layers, |l| model::<B>(l, dev))
    };
    sync::<B>(dev);
    println!("[{name}] model built in {:.1} s", t.elapsed().as_secs_f64());
    let prefill_lengths: &[usize] = if !prefill {
        &[]
    } else if quick {
        &[512]
    } else {
        &[2048, 8192]
    };
    for &l in prefill_lengths {
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new((0..l as i64).map(|i| i % 60000).collect::<Vec<_>>(), [1, l]),
            dev,
        );
        let run = || {
            let mut cache: FalconMambaCache<B> = m.new_cache(1);
            let logits = m.forward(m.embed(ids.clone()), &mut cache, Logits::Last);
            let _ = logits.argmax(2).into_data();
        };
        let s = time::<B>(dev, 1, 3, run);
        let line = format!("| {name} | prefill L = {l} | {:.0} tokens/s | {:.1} ms |", l as f64 / s, s * 1e3);
        println!("{line}");
        writeln!(report, "{line}").unwrap();
    }
    // Decode: 32-token prompt, then greedy steps, each reading the next id back.
    let steps = if decode_steps > 0 {
        decode_steps
    } else if quick {
        16
    } else {
        64
    };
    let prompt = Tensor::<B, 2, Int>::from_data(TensorData::new((1..=32i64).collect::<Vec<_>>(), [1, 32]), dev);
    // Returns (seconds for `steps` tokens, seconds the host spent queueing them). With `read_back`
    // each id comes to the host before the next step (what generation does); without, the ids stay
    // on the device and the queueing time shows how much of a step is host work.
    let decode = |steps: usize, read_back: bool| -> (f64, f64) {
        let mut cache: FalconMambaCache<B> = m.new_cache(1);
        let logits = m.forward(m.embed(prompt.clone()), &mut cache, Logits::Last);
        let mut next = logits.argmax(2).reshape([1, 1]);
        let _ = next.clone().into_data();
        let t = Instant::now();
        for _ in 0..steps {
            let logits = m.forward(m.embed(next), &mut cache, Logits::Last);
            next = logits.argmax(2).reshape([1, 1]);
            if read_back {
                let _ = next.clone().into_data(); // the host needs the id (stop checks, detokenising)
            }
        }
        let queued = t.elapsed().as_secs_f64();
        sync::<B>(dev);
        (t.elapsed().as_secs_f64(), queued)
    };
    decode(4, true); // compile / tune the decode path
    let (s, _) = decode(steps, true);
    let line = format!(
        "| {name} | decode, batch 1 ({steps} steps) | {:.1} tokens/s | {:.2} ms/token |",
        steps as f64 / s,
        s * 1e3 / steps as f64
    );
    println!("{line}");
    writeln!(report, "{line}").unwrap();
    let (s, queued) = decode(steps, false);
    let line = format!(
        "| {name} | decode, ids kept on device: host queueing / total | {:.2} / {:.2} ms/token | {:.1} tokens/s |",
        queued * 1e3 / steps as f64,
        s * 1e3 / steps as f64,
        steps as f64 / s
    );
    println!("{line}");
    writeln!(report, "{line}").unwrap();
    // One step queued onto an idle device: the host's own cost of a step (if it is below the
    // per-token total above, the GPU is the bound; if equal, the host).
    let mut one: Vec<f64> = (0..5).map(|_| decode(1, false).1).collect();
    one.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let line = format!("| {name} | decode, host time to queue one step onto an idle GPU | {:.2} ms | |", one[2] * 1e3);
    println!("{line}");
    writeln!(report, "{line}").unwrap();
}

/// Prefill projection shapes `(name, d_in, d_out)` of falcon-mamba-7b.
const PROJECTIONS: [(&str, usize, usize); 4] = [
    ("in_proj", D_MODEL, 2 * D_INNER),
    ("x_proj", D_INNER, 288),
    ("dt_proj", 256, D_INNER),
    ("out_proj", D_INNER, D_MODEL),
];

/// `--matmul`: Burn's bf16 product at the prefill shapes, for the weight as the loader lays it out
/// (transposed view of `[d_out, d_in]`) and contiguous `[d_in, d_out]`, and split-K variants
/// (batched over K segments, f32 partials summed); plus host cost of tiny launches.
fn matmul_table(dev: &cubecl::cuda::CudaDevice, report: &mut String) {
    use burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
    type T3 = Tensor<Plain, 3>;
    let mm32 = |a: T3, b: T3| -> T3 {
        let out = matmul(
            a.into_primitive().tensor(),
            b.into_primitive().tensor(),
            None,
            MatmulStrategy::default(),
            DType::F32,
        )
        .expect("matmul");
        Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(out))
    };
    writeln!(report, "| shape | m | variant | time | TFLOP/s |").unwrap();
    writeln!(report, "|---|---:|---|---:|---:|").unwrap();
    let mut row = |name: &str, m: usize, variant: &str, t: f64, flop: f64| {
        let line = format!("| {name} | {m} | {variant} | {:.1} µs | {:.0} |", t * 1e6, flop / t / 1e12);
        println!("{line}");
        writeln!(report, "{line}").unwrap();
    };
    for m in [2048usize, 8192] {
        for (name, k, n) in PROJECTIONS {
            let flop = 2.0 * (m * k * n) as f64;
            let x = rand::<Plain, 3>([1, m, k], -1.0, 1.0, DType::BF16, dev);
            let view = rand::<Plain, 2>([n, k], -0.05, 0.05, DType::BF16, dev).transpose();
            let contig = rand::<Plain, 2>([k, n], -0.05, 0.05, DType::BF16, dev);
            let t = time::<Plain>(dev, 2, 10, || {
                let _ = x.clone().matmul(view.clone().unsqueeze::<3>());
            });
            row(name, m, "view", t, flop);
            let t = time::<Plain>(dev, 2, 10, || {
                let _ = x.clone().matmul(contig.clone().unsqueeze::<3>());
            });
            row(name, m, "contiguous", t, flop);
            let t = time::<Plain>(dev, 2, 10, || {
                let _ = mm32(x.clone(), view.clone().unsqueeze::<3>());
            });
            row(name, m, "view, f32 out", t, flop);
            if k >= 4096 && n <= 512 {
                for s in [4usize, 8, 16, 32] {
                    let xs = x.clone().reshape([m, s, k / s]).swap_dims(0, 1);
                    let wv = view.clone().reshape([s, k / s, n]);
                    let wc = contig.clone().reshape([s, k / s, n]);
                    let t = time::<Plain>(dev, 2, 10, || {
                        let _ = mm32(xs.clone(), wv.clone()).sum_dim(0).cast(FloatDType::BF16);
                    });
                    row(name, m, &format!("split-K {s}, view"), t, flop);
                    let t = time::<Plain>(dev, 2, 10, || {
                        let _ = mm32(xs.clone(), wc.clone()).sum_dim(0).cast(FloatDType::BF16);
                    });
                    row(name, m, &format!("split-K {s}, contiguous"), t, flop);
                    let xc = xs.clone().reshape([s * m * (k / s)]).reshape([s, m, k / s]);
                    let t = time::<Plain>(dev, 2, 10, || {
                        let _ = mm32(xc.clone(), wc.clone()).sum_dim(0).cast(FloatDType::BF16);
                    });
                    row(name, m, &format!("split-K {s}, contiguous both (no copy timed)"), t, flop);
                }
            }
        }
    }
    // Host cost of tiny launches (200 back to back, one sync).
    let a = rand::<Plain, 3>([1, 1, D_MODEL], -1.0, 1.0, DType::BF16, dev);
    let b = rand::<Plain, 3>([1, 1, D_MODEL], -1.0, 1.0, DType::BF16, dev);
    for (what, t) in [
        ("add (bf16, 4096)", time_batched::<Plain>(dev, 500, || drop(a.clone() + b.clone()))),
        ("cast bf16 → f32 (4096)", time_batched::<Plain>(dev, 500, || drop(a.clone().cast(FloatDType::F32)))),
        (
            "narrow + reshape (no launch)",
            time_batched::<Plain>(dev, 500, || drop(a.clone().narrow(2, 0, 256).reshape([1, 256]))),
        ),
        (
            "empty (no launch)",
            time_batched::<Plain>(dev, 500, || drop(Tensor::<Plain, 3>::empty([1, 1, D_MODEL], (dev, DType::BF16)))),
        ),
    ] {
        let line = format!("host per call: {what}: {:.2} µs", t * 1e6);
        println!("{line}");
        writeln!(report, "\n{line}").unwrap();
    }
}

/// `--matmul-sweep`: every cubek matmul strategy (inferred blueprints, and the ordered double-buffered
/// one over its row/partition knobs) at the prefill products' shapes, launched directly (no autotune),
/// against Burn's autotuned `matmul` on the same operands. Median of 5 after 2 warm-ups.
fn matmul_sweep(dev: &cubecl::cuda::CudaDevice, report: &mut String) {
    use cubek::matmul::components::tile::TileMatmulKind::{Cmma, Mma};
    use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
    use cubek::matmul::launch::{launch_ref, Strategy};
    use cubek::matmul::routines::double_buffering::DoubleBufferingArgs;
    use cubek::matmul::routines::ordered_double_buffering::OrderedSelectionArgs;
    use cubek::matmul::routines::simple::SimpleArgs;
    use cubek::matmul::routines::specialized::SpecializedStrategy;
    use cubek::matmul::routines::BlueprintStrategy::Inferred;
    use cubek::std::InputBinding;

    macro_rules! simple {
        ($k:expr, $m:expr) => {
            Inferred(SimpleArgs { tile_matmul: $k, multi_rows: $m })
        };
    }
    macro_rules! double {
        ($k:expr, $s:expr) => {
            Inferred(DoubleBufferingArgs { tile_matmul: $k, specialized: $s })
        };
    }
    macro_rules! spec {
        ($k:expr) => {
            Inferred(SpecializedStrategy { tile_matmul: $k })
        };
    }
    let mut strategies: Vec<Strategy> = Vec::new();
    for k in [Cmma, Mma] {
        // The CMMA or MMA variant of a strategy, as `k` says.
        macro_rules! pair {
            ($cmma:ident, $mma:ident, $args:expr) => {
                match k {
                    Cmma => Strategy::$cmma($args),
                    _ => Strategy::$mma($args),
                }
            };
        }
        strategies.extend([
            pair!(SimpleCyclicCmma, SimpleCyclicMma, simple!(k, false)),
            pair!(SimpleCyclicCmma, SimpleCyclicMma, simple!(k, true)),
            pair!(SimpleTmaCmma, SimpleTmaMma, simple!(k, false)),
            pair!(SimpleTmaCmma, SimpleTmaMma, simple!(k, true)),
            pair!(DoubleCyclicCmma, DoubleCyclicMma, double!(k, false)),
            pair!(DoubleCyclicCmma, DoubleCyclicMma, double!(k, true)),
            pair!(DoubleTmaCmma, DoubleTmaMma, double!(k, false)),
            pair!(DoubleTmaCmma, DoubleTmaMma, double!(k, true)),
            pair!(DoubleHybridCmma, DoubleHybridMma, double!(k, false)),
            pair!(DoubleAsyncCyclicCmma, DoubleAsyncCyclicMma, double!(k, false)),
            pair!(DoubleAsyncStridedCmma, DoubleAsyncStridedMma, double!(k, false)),
            pair!(SpecializedCyclicCmma, SpecializedCyclicMma, spec!(k)),
            pair!(SpecializedStridedCmma, SpecializedStridedMma, spec!(k)),
            pair!(SpecializedTmaCmma, SpecializedTmaMma, spec!(k)),
        ]);
        for row_count in [Some(8), Some(16)] {
            for rows_per_plane in [Some(1), Some(2), Some(4)] {
                for partition_k in [Some(1), Some(2)] {
                    let args = OrderedSelectionArgs { tile_matmul: k, partition_k, row_count, rows_per_plane };
                    strategies.push(match k {
                        Cmma => Strategy::OrderedDoubleCmma(Inferred(args)),
                        _ => Strategy::OrderedDoubleMma(Inferred(args)),
                    });
                }
            }
        }
    }
    // (product, m, k, n, rhs contiguous): the loader's transposed views first, most time first.
    let shapes: [(&str, usize, usize, usize, bool); 8] = [
        ("in_proj", 2048, 4096, 16384, false),
        ("out_proj", 2048, 8192, 4096, false),
        ("x_proj", 2048, 8192, 288, false),
        ("dt_proj", 2048, 256, 8192, false),
        ("in_proj", 2048, 4096, 16384, true),
        ("out_proj", 2048, 8192, 4096, true),
        ("in_proj", 8192, 4096, 16384, false),
        ("out_proj", 8192, 8192, 4096, false),
    ];
    let only: Option<Vec<String>> =
        std::env::var("VIPER_SWEEP_ONLY").ok().map(|v| v.split(',').map(String::from).collect());
    writeln!(report, "| product | m | rhs | strategy | time | TFLOP/s |\n|---|---:|---|---|---:|---:|").unwrap();
    let bf16 = DType::BF16;
    for (name, m, k, n, contiguous) in shapes {
        let flop = 2.0 * (m * k * n) as f64;
        let x = rand::<Plain, 2>([m, k], -1.0, 1.0, bf16, dev);
        {
            let (layout, w) = match contiguous {
                false => ("view", rand::<Plain, 2>([n, k], -0.05, 0.05, bf16, dev).transpose()),
                true => ("contiguous", rand::<Plain, 2>([k, n], -0.05, 0.05, bf16, dev)),
            };
            let mut line = |what: &str, t: Option<f64>| {
                let l = match t {
                    Some(t) => {
                        format!("| {name} | {m} | {layout} | {what} | {:.1} µs | {:.0} |", t * 1e6, flop / t / 1e12)
                    }
                    None => format!("| {name} | {m} | {layout} | {what} | failed | |"),
                };
                println!("{l}");
                writeln!(report, "{l}").unwrap();
            };
            let t = time::<Plain>(dev, 2, 5, || drop(x.clone().matmul(w.clone())));
            line("Burn matmul (autotune)", Some(t));
            let reference = x.clone().matmul(w.clone()).cast(FloatDType::F32);
            for s in &strategies {
                let label = s.to_string();
                if only.as_ref().is_some_and(|o| !o.iter().any(|p| label.contains(p.as_str()))) {
                    continue;
                }
                let run = || -> Option<Tensor<Plain, 2>> {
                    let out = Tensor::<Plain, 2>::empty([m, n], (dev, bf16));
                    let (xp, wp, op) = (
                        x.clone().into_primitive().tensor(),
                        w.clone().into_primitive().tensor(),
                        out.clone().into_primitive().tensor(),
                    );
                    let client = op.client.clone();
                    let dt: cubecl::ir::StorageType = bf16.into();
                    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems { lhs: dt, rhs: dt, out: dt });
                    launch_ref(
                        s,
                        &client,
                        InputBinding::new(xp.binding(), dt),
                        InputBinding::new(wp.binding(), dt),
                        op.binding(),
                        &mut dtypes,
                    )
                    .ok()?;
                    Some(out)
                };
                let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let out = run()?;
                    let err = (out.cast(FloatDType::F32) - reference.clone()).abs().max().into_scalar().to_f32();
                    let scale = reference.clone().abs().max().into_scalar().to_f32();
                    Some(err <= 0.05 * scale)
                }));
                match ok {
                    Ok(Some(true)) => {
                        let t = time::<Plain>(dev, 2, 5, || drop(run()));
                        line(&label, Some(t));
                    }
                    Ok(Some(false)) => line(&format!("{label} (wrong result)"), None),
                    _ => line(&label, None),
                }
            }
        }
    }
}

/// `--cublas`: the cost of the host synchronisation around each cuBLAS projection (CubeCL does not
/// expose its stream, see `viper_ssm::cublas`), split into its parts, next to the GEMM itself.
fn cublas_overhead(dev: &cubecl::cuda::CudaDevice, report: &mut String) {
    let bf16 = DType::BF16;
    let x = rand::<Plain, 3>([1, 2048, D_MODEL], -1.0, 1.0, bf16, dev);
    let x16 = rand::<Plain, 3>([1, 16, D_MODEL], -1.0, 1.0, bf16, dev);
    let w = rand::<Plain, 2>([2 * D_INNER, D_MODEL], -0.05, 0.05, bf16, dev).transpose();
    let small = rand::<Plain, 1>([4096], -1.0, 1.0, bf16, dev);
    let prim = x16.clone().into_primitive().tensor();
    let client = prim.client.clone();
    writeln!(report, "| per call | time |\n|---|---:|").unwrap();
    let mut line = |what: &str, t: f64| {
        let l = format!("| {what} | {:.1} µs |", t * 1e6);
        println!("{l}");
        writeln!(report, "{l}").unwrap();
    };
    line(
        "client.sync() on an idle GPU",
        time_batched::<Plain>(dev, 200, || {
            cubecl::future::block_on(client.sync()).unwrap();
        }),
    );
    line(
        "client.get_resource",
        time_batched::<Plain>(dev, 200, || {
            drop(client.get_resource(prim.handle.clone()).unwrap());
        }),
    );
    line(
        "add (4096) + sync",
        time_batched::<Plain>(dev, 200, || {
            drop(small.clone() + 1.0);
            cubecl::future::block_on(client.sync()).unwrap();
        }),
    );
    line(
        "projection 16 × 4096 → 16384 (cuBLAS, with its syncs)",
        time_batched::<Plain>(dev, 200, || {
            drop(Plain::projection(x16.clone(), w.clone(), None));
        }),
    );
    line(
        "add + projection 16 rows",
        time_batched::<Plain>(dev, 200, || {
            drop(small.clone() + 1.0);
            drop(Plain::projection(x16.clone(), w.clone(), None));
        }),
    );
    line(
        "projection 2048 × 4096 → 16384 (cuBLAS, with its syncs)",
        time_batched::<Plain>(dev, 20, || {
            drop(Plain::projection(x.clone(), w.clone(), None));
        }),
    );
    line(
        "empty [1, 2048, 16384] bf16 + get_resource + sync",
        time_batched::<Plain>(dev, 20, || {
            let o = Tensor::<Plain, 3>::empty([1, 2048, 2 * D_INNER], (dev, bf16)).into_primitive().tensor();
            drop(client.get_resource(o.handle.clone()).unwrap());
            cubecl::future::block_on(client.sync()).unwrap();
        }),
    );
    let (xp, wp) = (x.clone().into_primitive().tensor(), w.clone().into_primitive().tensor());
    line(
        "cublas::linear 2048 rows (tensor level, no Burn wrapping)",
        time_batched::<Plain>(dev, 20, || {
            drop(viper_ssm::cublas::linear(&xp, &wp).expect("cuBLAS product"));
        }),
    );
    line(
        "Burn matmul 2048 × 4096 → 16384",
        time_batched::<Plain>(dev, 20, || {
            drop(x.clone().matmul(w.clone().unsqueeze::<3>()));
        }),
    );
}

/// `--host`: the host's cost of each op of a decode step, queued onto an idle GPU (20 calls after a
/// sync, median of 5 such batches, per call), on the plain backend at falcon-mamba-7b's shapes.
fn host_table(dev: &cubecl::cuda::CudaDevice, report: &mut String) {
    type B = Plain;
    let per_call = |f: &mut dyn FnMut()| -> f64 {
        let mut v: Vec<f64> = (0..5)
            .map(|_| {
                f();
                sync::<B>(dev);
                let t = Instant::now();
                for _ in 0..20 {
                    f();
                }
                let s = t.elapsed().as_secs_f64() / 20.0;
                sync::<B>(dev);
                s
            })
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[2]
    };
    let x = rand::<B, 3>([1, 1, D_MODEL], -1.0, 1.0, DType::BF16, dev);
    let h = rand::<B, 3>([1, 1, D_MODEL], -1.0, 1.0, DType::F32, dev);
    let w_in = linear::<B>(D_MODEL, 2 * D_INNER, dev);
    let w_x = linear::<B>(D_INNER, 288, dev);
    let w_out = linear::<B>(D_INNER, D_MODEL, dev);
    let w_dt = linear::<B>(256, D_INNER, dev);
    let u = rand::<B, 3>([1, 1, D_INNER], -1.0, 1.0, DType::BF16, dev);
    let nw = norm::<B>(D_MODEL, 1e-5, dev);
    let scan = scan_inputs::<B>(1, DType::BF16, dev);
    let step = StepInput {
        u: scan.u,
        dbc: rand::<B, 3>([1, 1, 288], -1.0, 1.0, DType::BF16, dev),
        eps: 1e-6,
        dt_proj: w_dt.weight.val(),
        delta_bias: scan.delta_bias,
        a_log: scan.a_log,
        d: scan.d,
        z: scan.z,
        state: scan.state,
    };
    let conv = ConvInput {
        x: u.clone(),
        window: rand([1, 4, D_INNER], -1.0, 1.0, DType::BF16, dev),
        weight: rand([D_INNER, 4], -1.0, 1.0, DType::BF16, dev),
        bias: Some(rand([D_INNER], -1.0, 1.0, DType::BF16, dev)),
    };
    let a = x.clone();
    let rows: Vec<(&str, f64)> = vec![
        ("Burn add, 4096 bf16 (reference point)", per_call(&mut || drop(a.clone() + x.clone()))),
        (
            "empty tensor (allocation, no launch)",
            per_call(&mut || drop(Tensor::<B, 3>::empty([1, 1, D_MODEL], (dev, DType::BF16)))),
        ),
        (
            "add_rms_norm (residual + block norm)",
            per_call(&mut || drop(nw.forward_add(h.clone(), x.clone(), DType::F32, DType::BF16))),
        ),
        ("in_proj GEMV", per_call(&mut || drop(viper_ssm::linear(&w_in, x.clone())))),
        ("conv update", per_call(&mut || drop(B::causal_conv1d(conv.clone())))),
        ("x_proj GEMV", per_call(&mut || drop(viper_ssm::linear(&w_x, u.clone())))),
        (
            "FalconMamba step from x_proj's output (dt/B/C norms, dt_proj, scan)",
            per_call(&mut || drop(B::selective_state_update_dbc(step.clone()))),
        ),
        ("out_proj GEMV", per_call(&mut || drop(viper_ssm::linear(&w_out, u.clone())))),
    ];
    writeln!(report, "| op (decode step, one layer) | host per call |").unwrap();
    writeln!(report, "|---|---:|").unwrap();
    let mut total = 0.0;
    for (what, t) in rows {
        if !what.starts_with("Burn") && !what.starts_with("empty") {
            total += t;
        }
        let line = format!("| {what} | {:.1} µs |", t * 1e6);
        println!("{line}");
        writeln!(report, "{line}").unwrap();
    }
    let line = format!("| sum of the 6 launches of a layer | {:.1} µs |", total * 1e6);
    println!("{line}");
    writeln!(report, "{line}").unwrap();
}

/// `--profile-host STEPS` (feature `pprof`): samples every thread of the process (SIGPROF, 4 kHz) while
/// the plain backend queues `STEPS` decode steps with the ids kept on the device, and writes per
/// thread the functions with the most samples, inclusive and self, to `--out`.
#[cfg(feature = "pprof")]
fn host_profile(dev: &cubecl::cuda::CudaDevice, layers: usize, steps: usize, report: &mut String) {
    use std::collections::{HashMap, HashSet};
    type B = Plain;
    let m = B::memory_persistent_allocations(dev, (), |_| model::<B>(layers, dev));
    let prompt = Tensor::<B, 2, Int>::from_data(TensorData::new((1..=32i64).collect::<Vec<_>>(), [1, 32]), dev);
    let run = |steps: usize| {
        let mut cache: FalconMambaCache<B> = m.new_cache(1);
        let logits = m.forward(m.embed(prompt.clone()), &mut cache, Logits::Last);
        let mut next = logits.argmax(2).reshape([1, 1]);
        sync::<B>(dev);
        let t = Instant::now();
        for _ in 0..steps {
            let logits = m.forward(m.embed(next), &mut cache, Logits::Last);
            next = logits.argmax(2).reshape([1, 1]);
        }
        let queued = t.elapsed().as_secs_f64();
        sync::<B>(dev);
        (queued, t.elapsed().as_secs_f64())
    };
    run(4);
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(4000)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .expect("profiler");
    let (queued, total) = run(steps);
    let rep = guard.report().build().expect("profile report");
    writeln!(
        report,
        "host profile: {steps} decode steps, queued in {:.2} ms/step, done in {:.2} ms/step\n",
        queued * 1e3 / steps as f64,
        total * 1e3 / steps as f64
    )
    .unwrap();
    /// A thread's samples, and samples per function: inclusive, and as the leaf (self).
    #[derive(Default)]
    struct Counts {
        total: isize,
        incl: HashMap<String, isize>,
        leaf: HashMap<String, isize>,
    }
    let mut threads: HashMap<String, Counts> = HashMap::new();
    for (frames, &count) in &rep.data {
        let t = threads.entry(frames.thread_name_or_id()).or_default();
        t.total += count;
        let names: Vec<String> = frames.frames.iter().flatten().map(|s| s.name()).collect();
        if let Some(leaf) = names.first() {
            *t.leaf.entry(leaf.clone()).or_default() += count;
        }
        let mut seen = HashSet::new();
        for n in names {
            if seen.insert(n.clone()) {
                *t.incl.entry(n).or_default() += count;
            }
        }
    }
    let mut threads: Vec<_> = threads.into_iter().collect();
    threads.sort_by_key(|t| -t.1.total);
    let short = |s: &str| s.chars().take(160).collect::<String>();
    for (name, Counts { total, incl, leaf: selfs }) in threads.iter().take(4) {
        writeln!(report, "## thread {name}: {total} samples\n### inclusive").unwrap();
        let mut v: Vec<_> = incl.iter().collect();
        v.sort_by_key(|e| -e.1);
        for (f, c) in v.into_iter().take(70) {
            writeln!(report, "{:5.1}% {}", 100.0 * *c as f64 / *total as f64, short(f)).unwrap();
        }
        writeln!(report, "### self").unwrap();
        let mut v: Vec<_> = selfs.iter().collect();
        v.sort_by_key(|e| -e.1);
        for (f, c) in v.into_iter().take(40) {
            writeln!(report, "{:5.1}% {}", 100.0 * *c as f64 / *total as f64, short(f)).unwrap();
        }
    }
}

fn gpu_name() -> String {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version", "--format=csv,noheader"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown GPU".into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let out = arg("--out").unwrap_or_else(|| "BENCHMARKS.md".into());
    let layers: usize = arg("--layers").and_then(|v| v.parse().ok()).unwrap_or(64);
    let quick = args.iter().any(|a| a == "--quick");
    let only_kernels = args.iter().any(|a| a == "--kernels-only");
    // Profiling mode: the plain backend's decode only (no copy, kernels or prefill rows).
    let decode_only = args.iter().any(|a| a == "--decode-only");
    let steps: usize = arg("--steps").and_then(|v| v.parse().ok()).unwrap_or(0);

    let dev = Default::default();
    let mut report = String::new();
    let gpu = gpu_name();
    writeln!(report, "Card: {gpu}\n").unwrap();
    // Profiling mode: one plain-backend prefill at L (after one untimed warm-up), nothing else.
    if let Some(l) = arg("--prefill-only").and_then(|v| v.parse::<usize>().ok()) {
        let m = model::<Plain>(layers, &dev);
        let ids = Tensor::<Plain, 2, Int>::from_data(
            TensorData::new((0..l as i64).map(|i| i % 60000).collect::<Vec<_>>(), [1, l]),
            &dev,
        );
        for _ in 0..2 {
            let mut cache: FalconMambaCache<Plain> = m.new_cache(1);
            let logits = m.forward(m.embed(ids.clone()), &mut cache, Logits::Last);
            let _ = logits.argmax(2).into_data();
        }
        return;
    }
    #[cfg(feature = "pprof")]
    if let Some(steps) = arg("--profile-host").and_then(|v| v.parse::<usize>().ok()) {
        host_profile(&dev, layers, steps, &mut report);
        std::fs::write(&out, &report).expect("write report");
        return;
    }
    if args.iter().any(|a| a == "--host") {
        host_table(&dev, &mut report);
        std::fs::write(&out, &report).expect("write report");
        return;
    }
    if args.iter().any(|a| a == "--cublas") {
        cublas_overhead(&dev, &mut report);
        std::fs::write(&out, &report).expect("write report");
        return;
    }
    if args.iter().any(|a| a == "--matmul-sweep") {
        matmul_sweep(&dev, &mut report);
        std::fs::write(&out, &report).expect("write report");
        return;
    }
    if args.iter().any(|a| a == "--matmul") {
        matmul_table(&dev, &mut report);
        std::fs::write(&out, &report).expect("write report");
        return;
    }
    if decode_only {
        model_bench::<Plain>("CubeBackend", layers, quick, false, steps, &dev, &mut report);
        std::fs::write(&out, &report).expect("write report");
        return;
    }

    let copy_bw = copy_bandwidth::<Plain>(&dev);
    let line =
        format!("Device-to-device copy (element-wise x·1 over 1 GiB f32, read + write): {:.0} GB/s\n", copy_bw / 1e9);
    println!("{line}");
    report.push_str(&line);
    writeln!(report, "\n### Kernels (batch 1, d_inner {D_INNER}, d_state {D_STATE}; plain CubeBackend)\n").unwrap();
    kernel_table::<Plain>(&dev, copy_bw, quick, &mut report);

    if !only_kernels {
        writeln!(
            report,
            "\n### falcon-mamba-7b-shaped model ({layers} layers, hidden {D_MODEL}, random bf16 weights)\n"
        )
        .unwrap();
        writeln!(report, "| backend | measurement | result | time |").unwrap();
        writeln!(report, "|---|---|---:|---:|").unwrap();
        model_bench::<Plain>("CubeBackend", layers, quick, true, steps, &dev, &mut report);
        Plain::memory_cleanup(&dev);
        model_bench::<Default_>("Cuda (Burn default)", layers, quick, true, steps, &dev, &mut report);
    }
    std::fs::write(&out, &report).expect("write report");
    println!("\n{report}");
}

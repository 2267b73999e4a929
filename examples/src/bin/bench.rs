//! GPU benchmark of the SSM kernels and of a falcon-mamba-7b-shaped model (random bf16 weights) on CUDA.
//!
//! ```text
//! cargo build --release -p viper-examples --features cuda,fusion,autotune --bin bench
//! bench [--out BENCHMARKS.md] [--json FILE] <all | kernels | decode | prefill | host-ops | matmul
//!       | matmul-sweep | cublas | profile-host>    (`bench help <subcommand>` for its options)
//! ```
//!
//! On CUDA the prefill products go through cuBLAS, loaded at run time from the loader's path or the
//! CUDA toolkit's directories (see `viper_ssm::cublas::available`); else they fall back to Burn's matmul.
//!
//! `bench all` prints a Markdown report and writes it to `--out`:
//! 1. device-to-device copy bandwidth (an element-wise `x · 1` over 1 GiB, bytes read + written);
//! 2. scan and conv kernel times at d_inner 8192, d_state 16, batch 1, L ∈ {1, 512, 2048, 8192, 29000},
//!    with the bytes each must move at least (inputs once, outputs once) over its time (`bench kernels`:
//!    1 and 2 only);
//! 3. the model: prefill tokens/s at L = 2048 and 8192, decode tokens/s at batch 1 (greedy, the token read
//!    back every step as generation does; and with the ids kept on the device, splitting the host's
//!    queueing time from the total), on the plain `CubeBackend` and on Burn's default `Cuda`
//!    (fusion-wrapped when built with `fusion`).
//!
//! `bench decode` runs just the plain backend's decode and `bench prefill --length L` two prefills at L
//! (for `ncu` profiles). The old flags and the subcommands that replace them are listed in
//! `viper_examples::bench_args`. Peak GPU memory comes from `nvidia-smi` sampled by the caller (see
//! BENCHMARKS.md). Timing and the report writer are `viper_examples::timing`'s.

use std::time::Instant;

use anyhow::Result;
use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::{DType, Distribution, FloatDType};
use clap::Parser;
use viper_examples::bench_args::{BenchArgs, BenchCommand, ModelArgs};
use viper_examples::timing::Align::{Left as L, Right as R};
use viper_examples::timing::{self, sync, Report, Samples};
use viper_model::falcon_mamba::{FalconMambaBlock, FalconMambaModel};
use viper_model::{FalconMambaCache, FalconMambaConfig, FalconMambaForCausalLM, LanguageModel, Logits};
use viper_ssm::{ConvInput, MambaMixer, RmsNorm, ScanInput, SsmBackend, StepInput};

type Plain = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, half::bf16, i32, u8>;
type Default_ = burn::backend::Cuda<half::bf16>;

const D_INNER: usize = 8192;
const D_STATE: usize = 16;
const D_MODEL: usize = 4096;
const VOCAB: usize = 65024;
const SCAN_LENGTHS: [usize; 5] = [1, 512, 2048, 8192, 29000];

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
    let s = timing::median::<B>(dev, 3, 20, || {
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

/// The copy ceiling and the kernel table (`bench kernels`, the first part of `bench all`).
fn copy_and_kernels(dev: &cubecl::cuda::CudaDevice, quick: bool, report: &mut Report) {
    let copy_bw = copy_bandwidth::<Plain>(dev);
    report.line(format!(
        "Device-to-device copy (element-wise x·1 over 1 GiB f32, read + write): {:.0} GB/s",
        copy_bw / 1e9
    ));
    report.heading(format!("Kernels (batch 1, d_inner {D_INNER}, d_state {D_STATE}; plain CubeBackend)"));
    kernel_table::<Plain>(dev, copy_bw, quick, report);
}

/// Kernel table rows: L, dtype, scan time, scan bytes/s, conv time, conv bytes/s.
fn kernel_table<B: SsmBackend>(dev: &B::Device, copy_bw: f64, quick: bool, report: &mut Report) {
    report.header(&[
        ("L", R),
        ("dtype", L),
        ("scan time", R),
        ("scan min. bytes", R),
        ("scan bytes/s", R),
        ("% of copy", R),
        ("conv time", R),
        ("conv bytes/s", R),
    ]);
    for dtype in [DType::BF16, DType::F32] {
        for &l in SCAN_LENGTHS.iter().filter(|&&l| !quick || l <= 2048) {
            let e = if dtype == DType::BF16 { 2 } else { 4 };
            let x = scan_inputs::<B>(l, dtype, dev);
            let reps = if l <= 512 { 200 } else { 20 };
            let scan = |x: &ScanInput<B>| {
                let _ = B::selective_scan(x.clone());
            };
            let t_scan = if l == 1 {
                timing::batched::<B>(dev, 3, reps, || scan(&x))
            } else {
                timing::median::<B>(dev, 3, reps, || scan(&x))
            };
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
                timing::batched::<B>(dev, 3, reps, || conv(&conv_in))
            } else {
                timing::median::<B>(dev, 3, reps, || conv(&conv_in))
            };
            // x read and out written once; window read and written; taps read.
            let conv_bytes = (2 * l * D_INNER + 2 * 4 * D_INNER + 5 * D_INNER) * e;
            let (bw_scan, bw_conv) = (scan_bytes as f64 / t_scan, conv_bytes as f64 / t_conv);
            report.row([
                l.to_string(),
                format!("{dtype:?}"),
                format!("{:.1} µs", t_scan * 1e6),
                format!("{:.1} MB", scan_bytes as f64 / 1e6),
                format!("{:.0} GB/s", bw_scan / 1e9),
                format!("{:.0}%", 100.0 * bw_scan / copy_bw),
                format!("{:.1} µs", t_conv * 1e6),
                format!("{:.0} GB/s", bw_conv / 1e9),
            ]);
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

/// falcon-mamba-7b's config with `layers` layers.
fn falcon_mamba_7b(layers: usize) -> FalconMambaConfig {
    serde_json::from_value(serde_json::json!({
        "hidden_size": D_MODEL, "num_hidden_layers": layers, "vocab_size": VOCAB, "state_size": D_STATE,
        "conv_kernel": 4, "time_step_rank": 256, "intermediate_size": D_INNER, "use_conv_bias": true,
        "residual_in_fp32": true, "tie_word_embeddings": false,
    }))
    .expect("static config")
}

/// falcon-mamba-7b's shapes with random bf16 weights. The mixers come from `MambaMixer::random_as`, the
/// constructor the mixer tests use (`MambaMixer::random` is its f32 case); embedding, norms and LM head
/// are built here, in the loader's layout.
fn model<B: SsmBackend>(layers: usize, dev: &B::Device) -> FalconMambaForCausalLM<B> {
    let config = falcon_mamba_7b(layers);
    let m = config.mamba();
    let blocks = (0..layers)
        .map(|_| FalconMambaBlock {
            norm: norm(D_MODEL, config.layer_norm_epsilon, dev),
            mixer: MambaMixer::random_as(&m, DType::BF16, dev),
        })
        .collect();
    FalconMambaForCausalLM {
        backbone: FalconMambaModel {
            embeddings: Embedding { weight: Param::from_tensor(rand([VOCAB, D_MODEL], -1.0, 1.0, DType::BF16, dev)) },
            layers: blocks,
            norm_f: norm(D_MODEL, config.layer_norm_epsilon, dev),
        },
        lm_head: linear(D_MODEL, VOCAB, dev),
        config,
    }
}

/// The model's table header (`bench all`, `bench decode`).
fn model_header(report: &mut Report) {
    report.header(&[("backend", L), ("measurement", L), ("result", R), ("time", R)]);
}

/// Prefill tokens/s at each L and decode tokens/s at batch 1; `prefill` false skips the prefill rows
/// (`bench decode`).
fn model_bench<B: SsmBackend>(name: &str, args: &ModelArgs, prefill: bool, dev: &B::Device, report: &mut Report) {
    let (layers, quick) = (args.layers, args.quick);
    let t = Instant::now();
    // Weights in the backend's persistent memory pool, as `ViperModel::load` puts them;
    // `--dynamic-pools` leaves them in the dynamic pools (session 3's run C).
    let m = if args.dynamic_pools {
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
        let s = timing::median::<B>(dev, 1, 3, run);
        report.row([
            name.to_string(),
            format!("prefill L = {l}"),
            format!("{:.0} tokens/s", l as f64 / s),
            format!("{:.1} ms", s * 1e3),
        ]);
    }
    // Decode: 32-token prompt, then greedy steps, each reading the next id back.
    let steps = args.decode_steps();
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
    report.row([
        name.to_string(),
        format!("decode, batch 1 ({steps} steps)"),
        format!("{:.1} tokens/s", steps as f64 / s),
        format!("{:.2} ms/token", s * 1e3 / steps as f64),
    ]);
    let (s, queued) = decode(steps, false);
    report.row([
        name.to_string(),
        "decode, ids kept on device: host queueing / total".into(),
        format!("{:.2} / {:.2} ms/token", queued * 1e3 / steps as f64, s * 1e3 / steps as f64),
        format!("{:.1} tokens/s", steps as f64 / s),
    ]);
    // One step queued onto an idle device: the host's own cost of a step (if it is below the
    // per-token total above, the GPU is the bound; if equal, the host).
    let one = Samples::new((0..5).map(|_| decode(1, false).1).collect());
    report.row([
        name.to_string(),
        "decode, host time to queue one step onto an idle GPU".into(),
        format!("{:.2} ms", one.median() * 1e3),
        String::new(),
    ]);
}

/// `bench prefill`: one plain-backend prefill at L after one untimed warm-up, nothing else (for `ncu`).
fn prefill_only(dev: &cubecl::cuda::CudaDevice, layers: usize, l: usize) {
    let m = model::<Plain>(layers, dev);
    let ids = Tensor::<Plain, 2, Int>::from_data(
        TensorData::new((0..l as i64).map(|i| i % 60000).collect::<Vec<_>>(), [1, l]),
        dev,
    );
    for _ in 0..2 {
        let mut cache: FalconMambaCache<Plain> = m.new_cache(1);
        let logits = m.forward(m.embed(ids.clone()), &mut cache, Logits::Last);
        let _ = logits.argmax(2).into_data();
    }
}

/// Prefill projection shapes `(name, d_in, d_out)` of falcon-mamba-7b.
const PROJECTIONS: [(&str, usize, usize); 4] = [
    ("in_proj", D_MODEL, 2 * D_INNER),
    ("x_proj", D_INNER, 288),
    ("dt_proj", 256, D_INNER),
    ("out_proj", D_INNER, D_MODEL),
];

/// `bench matmul`: Burn's bf16 product at the prefill shapes, for the weight as the loader lays it out
/// (transposed view of `[d_out, d_in]`) and contiguous `[d_in, d_out]`, and split-K variants
/// (batched over K segments, f32 partials summed); plus host cost of tiny launches.
fn matmul_table(dev: &cubecl::cuda::CudaDevice, report: &mut Report) {
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
    report.header(&[("shape", L), ("m", R), ("variant", L), ("time", R), ("TFLOP/s", R)]);
    let mut row = |name: &str, m: usize, variant: &str, t: f64, flop: f64| {
        report.row([
            name.to_string(),
            m.to_string(),
            variant.to_string(),
            format!("{:.1} µs", t * 1e6),
            format!("{:.0}", flop / t / 1e12),
        ]);
    };
    for m in [2048usize, 8192] {
        for (name, k, n) in PROJECTIONS {
            let flop = 2.0 * (m * k * n) as f64;
            let x = rand::<Plain, 3>([1, m, k], -1.0, 1.0, DType::BF16, dev);
            let view = rand::<Plain, 2>([n, k], -0.05, 0.05, DType::BF16, dev).transpose();
            let contig = rand::<Plain, 2>([k, n], -0.05, 0.05, DType::BF16, dev);
            let t = timing::median::<Plain>(dev, 2, 10, || {
                let _ = x.clone().matmul(view.clone().unsqueeze::<3>());
            });
            row(name, m, "view", t, flop);
            let t = timing::median::<Plain>(dev, 2, 10, || {
                let _ = x.clone().matmul(contig.clone().unsqueeze::<3>());
            });
            row(name, m, "contiguous", t, flop);
            let t = timing::median::<Plain>(dev, 2, 10, || {
                let _ = mm32(x.clone(), view.clone().unsqueeze::<3>());
            });
            row(name, m, "view, f32 out", t, flop);
            if k >= 4096 && n <= 512 {
                for s in [4usize, 8, 16, 32] {
                    let xs = x.clone().reshape([m, s, k / s]).swap_dims(0, 1);
                    let wv = view.clone().reshape([s, k / s, n]);
                    let wc = contig.clone().reshape([s, k / s, n]);
                    let t = timing::median::<Plain>(dev, 2, 10, || {
                        let _ = mm32(xs.clone(), wv.clone()).sum_dim(0).cast(FloatDType::BF16);
                    });
                    row(name, m, &format!("split-K {s}, view"), t, flop);
                    let t = timing::median::<Plain>(dev, 2, 10, || {
                        let _ = mm32(xs.clone(), wc.clone()).sum_dim(0).cast(FloatDType::BF16);
                    });
                    row(name, m, &format!("split-K {s}, contiguous"), t, flop);
                    let xc = xs.clone().reshape([s * m * (k / s)]).reshape([s, m, k / s]);
                    let t = timing::median::<Plain>(dev, 2, 10, || {
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
        ("add (bf16, 4096)", timing::batched::<Plain>(dev, 3, 500, || drop(a.clone() + b.clone()))),
        ("cast bf16 → f32 (4096)", timing::batched::<Plain>(dev, 3, 500, || drop(a.clone().cast(FloatDType::F32)))),
        (
            "narrow + reshape (no launch)",
            timing::batched::<Plain>(dev, 3, 500, || drop(a.clone().narrow(2, 0, 256).reshape([1, 256]))),
        ),
        (
            "empty (no launch)",
            timing::batched::<Plain>(dev, 3, 500, || {
                drop(Tensor::<Plain, 3>::empty([1, 1, D_MODEL], (dev, DType::BF16)))
            }),
        ),
    ] {
        report.text("");
        report.line(format!("host per call: {what}: {:.2} µs", t * 1e6));
    }
}

/// `bench matmul-sweep`: every cubek matmul strategy (inferred blueprints, and the ordered double-buffered
/// one over its row/partition knobs) at the prefill products' shapes, launched directly (no autotune),
/// against Burn's autotuned `matmul` on the same operands. Median of 5 after 2 warm-ups.
fn matmul_sweep(dev: &cubecl::cuda::CudaDevice, only: &[String], report: &mut Report) {
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
    report.header(&[("product", L), ("m", R), ("rhs", L), ("strategy", L), ("time", R), ("TFLOP/s", R)]);
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
                let (time, rate) = match t {
                    Some(t) => (format!("{:.1} µs", t * 1e6), format!("{:.0}", flop / t / 1e12)),
                    None => ("failed".into(), String::new()),
                };
                report.row([name.to_string(), m.to_string(), layout.to_string(), what.to_string(), time, rate]);
            };
            let t = timing::median::<Plain>(dev, 2, 5, || drop(x.clone().matmul(w.clone())));
            line("Burn matmul (autotune)", Some(t));
            let reference = x.clone().matmul(w.clone()).cast(FloatDType::F32);
            for s in &strategies {
                let label = s.to_string();
                if !only.is_empty() && !only.iter().any(|p| label.contains(p.as_str())) {
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
                        let t = timing::median::<Plain>(dev, 2, 5, || drop(run()));
                        line(&label, Some(t));
                    }
                    Ok(Some(false)) => line(&format!("{label} (wrong result)"), None),
                    _ => line(&label, None),
                }
            }
        }
    }
}

/// `bench cublas`: the cost of the host synchronisation around each cuBLAS projection (CubeCL does not
/// expose its stream, see `viper_ssm::cublas`), split into its parts, next to the GEMM itself.
fn cublas_overhead(dev: &cubecl::cuda::CudaDevice, report: &mut Report) {
    let bf16 = DType::BF16;
    let x = rand::<Plain, 3>([1, 2048, D_MODEL], -1.0, 1.0, bf16, dev);
    let x16 = rand::<Plain, 3>([1, 16, D_MODEL], -1.0, 1.0, bf16, dev);
    let w = rand::<Plain, 2>([2 * D_INNER, D_MODEL], -0.05, 0.05, bf16, dev).transpose();
    let small = rand::<Plain, 1>([4096], -1.0, 1.0, bf16, dev);
    let prim = x16.clone().into_primitive().tensor();
    let client = prim.client.clone();
    report.header(&[("per call", L), ("time", R)]);
    let mut line = |what: &str, t: f64| report.row([what.to_string(), format!("{:.1} µs", t * 1e6)]);
    line(
        "client.sync() on an idle GPU",
        timing::batched::<Plain>(dev, 3, 200, || {
            cubecl::future::block_on(client.sync()).unwrap();
        }),
    );
    line(
        "client.get_resource",
        timing::batched::<Plain>(dev, 3, 200, || {
            drop(client.get_resource(prim.handle.clone()).unwrap());
        }),
    );
    line(
        "add (4096) + sync",
        timing::batched::<Plain>(dev, 3, 200, || {
            drop(small.clone() + 1.0);
            cubecl::future::block_on(client.sync()).unwrap();
        }),
    );
    line(
        "projection 16 × 4096 → 16384 (cuBLAS, with its syncs)",
        timing::batched::<Plain>(dev, 3, 200, || {
            drop(Plain::projection(x16.clone(), w.clone(), None));
        }),
    );
    line(
        "add + projection 16 rows",
        timing::batched::<Plain>(dev, 3, 200, || {
            drop(small.clone() + 1.0);
            drop(Plain::projection(x16.clone(), w.clone(), None));
        }),
    );
    line(
        "projection 2048 × 4096 → 16384 (cuBLAS, with its syncs)",
        timing::batched::<Plain>(dev, 3, 20, || {
            drop(Plain::projection(x.clone(), w.clone(), None));
        }),
    );
    line(
        "empty [1, 2048, 16384] bf16 + get_resource + sync",
        timing::batched::<Plain>(dev, 3, 20, || {
            let o = Tensor::<Plain, 3>::empty([1, 2048, 2 * D_INNER], (dev, bf16)).into_primitive().tensor();
            drop(client.get_resource(o.handle.clone()).unwrap());
            cubecl::future::block_on(client.sync()).unwrap();
        }),
    );
    let (xp, wp) = (x.clone().into_primitive().tensor(), w.clone().into_primitive().tensor());
    line(
        "cublas::linear 2048 rows (tensor level, no Burn wrapping)",
        timing::batched::<Plain>(dev, 3, 20, || {
            drop(viper_ssm::cublas::linear(&xp, &wp).expect("cuBLAS product"));
        }),
    );
    line(
        "Burn matmul 2048 × 4096 → 16384",
        timing::batched::<Plain>(dev, 3, 20, || {
            drop(x.clone().matmul(w.clone().unsqueeze::<3>()));
        }),
    );
}

/// `bench host-ops`: the host's cost of each op of a decode step, queued onto an idle GPU (20 calls after
/// a sync, median of 5 such batches, per call), on the plain backend with one falcon-mamba-7b mixer's
/// weights (`MambaMixer::random_as`).
fn host_table(dev: &cubecl::cuda::CudaDevice, report: &mut Report) {
    type B = Plain;
    let per_call = |f: &mut dyn FnMut()| timing::host_per_call::<B>(dev, 5, 20, f);
    let mixer = MambaMixer::<B>::random_as(&falcon_mamba_7b(1).mamba(), DType::BF16, dev);
    let x = rand::<B, 3>([1, 1, D_MODEL], -1.0, 1.0, DType::BF16, dev);
    let h = rand::<B, 3>([1, 1, D_MODEL], -1.0, 1.0, DType::F32, dev);
    let (w_in, w_x, w_out) = (&mixer.in_proj, &mixer.x_proj, &mixer.out_proj);
    let u = rand::<B, 3>([1, 1, D_INNER], -1.0, 1.0, DType::BF16, dev);
    let nw = norm::<B>(D_MODEL, 1e-5, dev);
    let step = StepInput {
        u: rand([1, 1, D_INNER], -2.0, 2.0, DType::BF16, dev),
        dbc: rand::<B, 3>([1, 1, 288], -1.0, 1.0, DType::BF16, dev),
        eps: 1e-6,
        dt_proj: mixer.dt_proj.weight.val(),
        delta_bias: mixer.dt_bias.val(),
        a_log: mixer.a_log.val(),
        d: mixer.d.val(),
        z: rand([1, 1, D_INNER], -3.0, 3.0, DType::BF16, dev),
        state: rand([1, D_INNER, D_STATE], -1.0, 1.0, DType::BF16, dev),
    };
    let conv = ConvInput {
        x: u.clone(),
        window: rand([1, 4, D_INNER], -1.0, 1.0, DType::BF16, dev),
        weight: mixer.conv_weight.val(),
        bias: mixer.conv_bias.as_ref().map(|b| b.val()),
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
        ("in_proj GEMV", per_call(&mut || drop(viper_ssm::linear(w_in, x.clone())))),
        ("conv update", per_call(&mut || drop(B::causal_conv1d(conv.clone())))),
        ("x_proj GEMV", per_call(&mut || drop(viper_ssm::linear(w_x, u.clone())))),
        (
            "FalconMamba step from x_proj's output (dt/B/C norms, dt_proj, scan)",
            per_call(&mut || drop(B::selective_state_update_dbc(step.clone()))),
        ),
        ("out_proj GEMV", per_call(&mut || drop(viper_ssm::linear(w_out, u.clone())))),
    ];
    report.header(&[("op (decode step, one layer)", L), ("host per call", R)]);
    let mut total = 0.0;
    for (what, t) in rows {
        if !what.starts_with("Burn") && !what.starts_with("empty") {
            total += t;
        }
        report.row([what.to_string(), format!("{:.1} µs", t * 1e6)]);
    }
    report.row(["sum of the 6 launches of a layer".to_string(), format!("{:.1} µs", total * 1e6)]);
}

/// `bench profile-host --steps STEPS` (feature `pprof`): samples every thread of the process (SIGPROF,
/// 4 kHz) while the plain backend queues `STEPS` decode steps with the ids kept on the device, and writes
/// per thread the functions with the most samples, inclusive and self, to `--out`.
#[cfg(feature = "pprof")]
fn host_profile(dev: &cubecl::cuda::CudaDevice, layers: usize, steps: usize, report: &mut Report) {
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
    report.text(format!(
        "host profile: {steps} decode steps, queued in {:.2} ms/step, done in {:.2} ms/step\n",
        queued * 1e3 / steps as f64,
        total * 1e3 / steps as f64
    ));
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
        report.text(format!("## thread {name}: {total} samples\n### inclusive"));
        let mut v: Vec<_> = incl.iter().collect();
        v.sort_by_key(|e| -e.1);
        for (f, c) in v.into_iter().take(70) {
            report.text(format!("{:5.1}% {}", 100.0 * *c as f64 / *total as f64, short(f)));
        }
        report.text("### self");
        let mut v: Vec<_> = selfs.iter().collect();
        v.sort_by_key(|e| -e.1);
        for (f, c) in v.into_iter().take(40) {
            report.text(format!("{:5.1}% {}", 100.0 * *c as f64 / *total as f64, short(f)));
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

fn main() -> Result<()> {
    let args = BenchArgs::parse();
    let dev = Default::default();
    if let BenchCommand::Prefill { length, layers } = args.command {
        prefill_only(&dev, layers, length);
        return Ok(());
    }
    let mut report = Report::new();
    report.text(format!("Card: {}\n", gpu_name()));
    match &args.command {
        BenchCommand::All(model_args) => {
            copy_and_kernels(&dev, model_args.quick, &mut report);
            let layers = model_args.layers;
            report.heading(format!(
                "falcon-mamba-7b-shaped model ({layers} layers, hidden {D_MODEL}, random bf16 weights)"
            ));
            model_header(&mut report);
            model_bench::<Plain>("CubeBackend", model_args, true, &dev, &mut report);
            Plain::memory_cleanup(&dev);
            model_bench::<Default_>("Cuda (Burn default)", model_args, true, &dev, &mut report);
        }
        BenchCommand::Kernels { quick } => copy_and_kernels(&dev, *quick, &mut report),
        BenchCommand::Decode(model_args) => {
            model_header(&mut report);
            model_bench::<Plain>("CubeBackend", model_args, false, &dev, &mut report);
        }
        BenchCommand::Prefill { .. } => unreachable!("handled above"),
        BenchCommand::HostOps => host_table(&dev, &mut report),
        BenchCommand::Matmul => matmul_table(&dev, &mut report),
        BenchCommand::MatmulSweep { only } => matmul_sweep(&dev, only, &mut report),
        BenchCommand::Cublas => cublas_overhead(&dev, &mut report),
        #[cfg(feature = "pprof")]
        BenchCommand::ProfileHost { steps, layers } => host_profile(&dev, *layers, *steps, &mut report),
        #[cfg(not(feature = "pprof"))]
        BenchCommand::ProfileHost { .. } => anyhow::bail!("`bench profile-host` needs the `pprof` feature"),
    }
    report.save(Some(&args.out), args.json.as_deref())?;
    if matches!(args.command, BenchCommand::All(_) | BenchCommand::Kernels { .. }) {
        println!("\n{}", report.markdown());
    }
    Ok(())
}

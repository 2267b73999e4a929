//! Command lines of the benchmark binaries, `bench` and `bench_models` (here, not in the binaries, so
//! that they parse and are tested on machines without a GPU backend).
//!
//! The flags of the binaries before the subcommands, as BENCHMARKS.md names them in its history:
//!
//! | before | now |
//! |---|---|
//! | `bench` | `bench all` |
//! | `bench --kernels-only` | `bench kernels` |
//! | `bench --decode-only` | `bench decode` |
//! | `bench --prefill-only L` | `bench prefill --length L` |
//! | `bench --host` | `bench host-ops` |
//! | `bench --matmul` | `bench matmul` |
//! | `bench --matmul-sweep` | `bench matmul-sweep` (`VIPER_SWEEP_ONLY=a,b` → `--only a,b`) |
//! | `bench --cublas` | `bench cublas` |
//! | `bench --profile-host STEPS` | `bench profile-host --steps STEPS` |
//! | `VIPER_BENCH_PERSISTENT=0 bench` | `bench all --dynamic-pools` |
//! | `bench_models` | `bench_models all` |
//! | `bench_models --skip-clip` | `bench_models jamba` |
//!
//! `--out`, `--layers`, `--quick` and `--steps` keep their names and defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// `bench`: the SSM kernels and a falcon-mamba-7b-shaped model (random bf16 weights) on CUDA.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(name = "bench", about = "GPU benchmark of the SSM kernels and a falcon-mamba-7b-shaped model (CUDA)")]
pub struct BenchArgs {
    /// The Markdown report (every subcommand but `prefill` writes one).
    #[arg(long, global = true, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// The report's tables and notes as JSON as well.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The model's size and the decode run's length.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ModelArgs {
    /// Layers of the falcon-mamba-7b-shaped model (7b has 64).
    #[arg(long, default_value_t = 64)]
    pub layers: usize,
    /// Shorter run: kernel rows up to L = 2048, one prefill at L = 512, 16 decode steps.
    #[arg(long)]
    pub quick: bool,
    /// Timed decode steps (default 64, or 16 with `--quick`).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Leave the weights in the backend's dynamic memory pools instead of the persistent one that
    /// `ViperModel::load` uses (session 3's run C; was `VIPER_BENCH_PERSISTENT=0`).
    #[arg(long)]
    pub dynamic_pools: bool,
}

impl ModelArgs {
    /// The decode steps to time.
    pub fn decode_steps(&self) -> usize {
        self.steps.unwrap_or(if self.quick { 16 } else { 64 })
    }
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum BenchCommand {
    /// Copy bandwidth, the scan and conv kernel table, and the model (prefill and decode) on the plain
    /// CubeBackend and on Burn's default Cuda backend (was: `bench` without flags).
    All(ModelArgs),
    /// Copy bandwidth and the scan and conv kernel table only (was `--kernels-only`).
    Kernels {
        /// Kernel rows up to L = 2048 only.
        #[arg(long)]
        quick: bool,
    },
    /// The plain backend's decode rows only, e.g. under `ncu` (was `--decode-only`).
    Decode(ModelArgs),
    /// Two untimed plain-backend prefills at one length and nothing else, for `ncu` (was
    /// `--prefill-only L`); writes no report.
    Prefill {
        /// Prompt length L.
        #[arg(long)]
        length: usize,
        /// Layers of the model.
        #[arg(long, default_value_t = 64)]
        layers: usize,
    },
    /// The host's cost of each op of a decode layer, queued onto an idle GPU (was `--host`).
    HostOps,
    /// Burn's bf16 matmul at the prefill shapes: transposed view, contiguous, f32 out, split-K; and the
    /// host cost of tiny launches (was `--matmul`).
    Matmul,
    /// Every cubek matmul strategy at the prefill shapes, launched directly, against Burn's autotuned
    /// matmul (was `--matmul-sweep`).
    MatmulSweep {
        /// Only the strategies whose name contains one of these (comma-separated; was
        /// `VIPER_SWEEP_ONLY`).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// The host synchronisation around a cuBLAS projection, split into its parts (was `--cublas`).
    Cublas,
    /// A sampling profile (pprof) of the host threads while decode steps are queued; needs the `pprof`
    /// feature (was `--profile-host STEPS`).
    ProfileHost {
        /// Decode steps to profile.
        #[arg(long)]
        steps: usize,
        /// Layers of the model.
        #[arg(long, default_value_t = 64)]
        layers: usize,
    },
}

/// `bench_models`: the CLIP vision tower and Jamba-1.5-Mini-shaped layers (random bf16 weights) on CUDA.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(name = "bench_models", about = "GPU benchmark of the CLIP vision tower and Jamba-shaped layers (CUDA)")]
pub struct BenchModelsArgs {
    /// The Markdown report (printed in any case).
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
    /// The report's tables and notes as JSON as well.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    #[command(subcommand)]
    pub command: BenchModelsCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum BenchModelsCommand {
    /// The CLIP tower, then the Jamba layers (was: `bench_models` without flags).
    All,
    /// CLIP ViT-L/14-336 crops/s for 5 and 50 crops, loaded through the real loader.
    Clip,
    /// Jamba-1.5-Mini-shaped layers: decode per layer kind, MoE dispatch, an 8-layer stack (was
    /// `--skip-clip`).
    Jamba,
    /// The whole Jamba-1.5-Mini-shaped causal LM (embedding, 32 layers, lm_head; random bf16 weights built on
    /// the device, ≈ 104 GB): prefill of `--prompt` positions, then greedy decode with a host read of every
    /// token, as `viper generate` does.
    JambaFull {
        /// Decoder layers (32 = Jamba-1.5-Mini; 8 = the anchor's one period).
        #[arg(long, default_value_t = 32)]
        layers: usize,
        /// Prefill positions (9936 ≈ a 1344×1344 image and its prompt).
        #[arg(long, default_value_t = 9936)]
        prompt: usize,
        /// Decode steps timed.
        #[arg(long, default_value_t = 32)]
        steps: usize,
    },
    /// Burn's fused `attention` on CUDA, each of its strategies (the naive fallback, the unit and the
    /// accelerated flash kernels, the autotuned default) against a host f64 reference, at the shapes and
    /// layouts Jamba's attention and CLIP give it; max abs and relative error per case.
    CheckAttention,
}

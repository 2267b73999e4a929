//! `viper`: chat about images with a Viper checkpoint from the command line.
//!
//! ```text
//! viper generate --model DIR --image PATH --prompt TEXT [--max-new-tokens N] [--json OUT] [--dump DIR]
//! viper chat --model DIR [--image PATH]
//! viper serve --model DIR [--host 127.0.0.1] [--port 8080] [--max-batch N] [--state-cache-mb M] [--queue N]
//! ```

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::prelude::*;
use burn::tensor::FloatDType;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use viper_model::{GenerationConfig, LanguageModel, PreparedPrompt, SamplingConfig, Viper, ViperLoadOptions};
use viper_processor::ImageLoader;
use viper_ssm::SsmBackend;

#[derive(Parser)]
#[command(name = "viper", version, about = "Viper vision-language models (Viper-Mamba-7B, Viper-Jamba-52B) on Burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one question about zero or more images.
    Generate(GenerateArgs),
    /// An interactive multi-turn conversation (the model's state is kept between turns).
    Chat(ChatArgs),
    /// An OpenAI-compatible HTTP server (`/v1/chat/completions`, `/v1/models`, `/health`, `/metrics`).
    Serve(ServeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendKind {
    /// CPU (always available).
    Ndarray,
    /// wgpu (Vulkan, Metal, DX12); needs the `wgpu` feature.
    Wgpu,
    /// NVIDIA CUDA; needs the `cuda` feature.
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Args)]
struct CommonArgs {
    /// Checkpoint directory (or, with the `hub` feature, a HuggingFace hub id).
    #[arg(long)]
    model: String,
    /// Image file(s), in prompt order (each adds `<image>\n` before the prompt).
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// A CLIP checkpoint for a frozen vision tower that is not stored in the Viper checkpoint.
    #[arg(long)]
    vision_tower: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "ndarray")]
    backend: BackendKind,
    /// Weight float type on the device (default: f32; bf16 is what the published checkpoints hold).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Keep generating past the end-of-turn token.
    #[arg(long)]
    ignore_eos: bool,
    /// 0 = greedy (the reference's setting).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the answer contains this text (repeatable).
    #[arg(long = "stop")]
    stop_strings: Vec<String>,
    /// Refuse prompts beyond `tokenizer_model_max_length` instead of truncating them like upstream.
    #[arg(long)]
    strict_context: bool,
    /// Print timings (load, preprocessing, vision tower, prefill, first token, decode, device memory)
    /// to stderr after each answer.
    #[arg(long)]
    stats: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The question.
    #[arg(long)]
    prompt: String,
    /// Write input_ids, inputs_embeds_len, generated_ids, text and last_logits as JSON (atomically:
    /// the old file or the whole new one, whenever the run stops).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write pixel_values, clip_features, projected_features, image_features, inputs_embeds
    /// to DIR/tensors.safetensors (atomically).
    #[arg(long)]
    dump: Option<PathBuf>,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// After each answer, rewrite FILE (atomically) with a JSON array of the turns so far: question,
    /// images, generated_ids, text and stats.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Checkpoint directory (or, with the `hub` feature, a HuggingFace hub id).
    #[arg(long)]
    model: String,
    /// The model id `/v1/models` lists and responses carry (default: the directory's name).
    #[arg(long)]
    model_name: Option<String>,
    /// A CLIP checkpoint for a frozen vision tower that is not stored in the Viper checkpoint.
    #[arg(long)]
    vision_tower: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "ndarray")]
    backend: BackendKind,
    /// Weight float type on the device (default: f32).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// 0 picks a free port (the address is logged).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Requests that may wait for a slot (beyond: 503).
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Budget of the state cache (model states kept after an image prefix), MiB; 0 turns it off.
    #[arg(long, default_value_t = 1024)]
    state_cache_mb: usize,
    /// Most positions one prefill chunk runs (a long prompt is prefilled over several scheduler ticks).
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 64)]
    max_body_mb: usize,
    /// Most images per request.
    #[arg(long, default_value_t = 4)]
    max_images: usize,
    /// `max_tokens` of requests that give none.
    #[arg(long, default_value_t = 512)]
    default_max_tokens: usize,
    /// Fetch `http(s)://` image URLs (refused otherwise). The server then reaches whatever hosts its
    /// clients name, its own network included: allow it only where that is acceptable.
    #[arg(long)]
    allow_remote_images: bool,
    /// Time for the whole fetch of one remote image, seconds.
    #[arg(long, default_value_t = 30)]
    remote_image_timeout_s: u64,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    keep_compiled_kernels();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Keeps CubeCL's compiled kernels on disk across processes. CubeCL compiles each kernel on first use
/// and, unless `compilation.cache` is set, forgets them at exit: a first 2352² question compiled 163
/// kernels in ≈ 220 s on an H200, and with the cache set the next process answered in 33 s, load
/// included (BENCHMARKS.md, "The product path on the H200"). The cache goes where CubeCL keeps its
/// autotune results (`target/` of the Cargo project around the working directory, else the user's
/// cache directory); a `cubecl.toml` or `CUBECL_*` variable that sets it wins.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn keep_compiled_kernels() {
    use cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
    // Read as CubeCL would (file, then environment), then fill in the one default; nothing has read
    // the config yet, so `set` cannot fail here.
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if config.compilation.cache.is_none() {
        config.compilation.cache = Some(CacheConfig::Target);
    }
    CubeClRuntimeConfig::set(config);
}

/// The error and its causes on one line, skipping causes whose text the message already holds
/// (typed errors often print their source themselves).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg = format!("{msg}: {cause}");
        }
    }
    msg.replace('\n', " ")
}

fn run(cli: Cli) -> Result<()> {
    let (backend, dtype) = match &cli.command {
        Command::Generate(g) => (g.common.backend, g.common.dtype),
        Command::Chat(c) => (c.common.backend, c.common.dtype),
        Command::Serve(s) => (s.backend, s.dtype),
    };
    match backend {
        BackendKind::Ndarray => {
            if matches!(dtype, Some(DtypeArg::F16 | DtypeArg::Bf16)) {
                bail!("the ndarray backend computes in f32 only: drop --dtype or pick --backend wgpu/cuda");
            }
            dispatch::<burn::backend::NdArray>(&cli, Default::default())
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => dispatch::<burn::backend::Wgpu>(&cli, Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => dispatch::<burn::backend::Cuda>(&cli, Default::default()),
        #[allow(unreachable_patterns)]
        _ => bail!("this binary was built without that backend: rebuild with `--features wgpu` or `--features cuda`"),
    }
}

fn dispatch<B: SsmBackend>(cli: &Cli, device: B::Device) -> Result<()> {
    match &cli.command {
        Command::Generate(args) => generate::<B>(args, &device),
        Command::Chat(args) => chat::<B>(args, &device),
        Command::Serve(args) => serve::<B>(args, device),
    }
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message.to_string());
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("static template"));
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A local directory, or (with the `hub` feature) a hub id downloaded with resumable transfers.
fn resolve_model(model: &str) -> Result<PathBuf> {
    let path = PathBuf::from(model);
    if path.is_dir() {
        return Ok(path);
    }
    #[cfg(feature = "hub")]
    if viper_examples::hub::is_repo_id(model) && !path.exists() {
        return Ok(viper_examples::hub::Hub::from_env(true)?.checkpoint(model)?.dir);
    }
    bail!("model directory {model} not found")
}

/// With the `hub` feature: the CLIP tower named by `mm_vision_tower` when it is frozen (so not stored in
/// the checkpoint) and is a hub id rather than a local folder.
#[cfg(feature = "hub")]
fn hub_vision_tower(dir: &Path) -> Result<Option<PathBuf>> {
    if viper_examples::hub::frozen_tower_id(dir).is_none() {
        return Ok(None);
    }
    Ok(viper_examples::hub::Hub::from_env(true)?.frozen_vision_tower(dir)?.map(|s| s.dir))
}

#[cfg(not(feature = "hub"))]
fn hub_vision_tower(_: &Path) -> Result<Option<PathBuf>> {
    Ok(None)
}

fn load_options(
    dir: &Path,
    dtype: Option<DtypeArg>,
    vision_tower: Option<&PathBuf>,
    strict_context: bool,
) -> Result<ViperLoadOptions> {
    Ok(ViperLoadOptions {
        dtype: dtype.map(|d| match d {
            DtypeArg::F32 => FloatDType::F32,
            DtypeArg::F16 => FloatDType::F16,
            DtypeArg::Bf16 => FloatDType::BF16,
        }),
        vision_tower: match vision_tower {
            Some(path) => Some(path.clone()),
            None => hub_vision_tower(dir)?,
        },
        strict_context,
        progress: None,
    })
}

/// A progress bar in bytes over a load: it follows the loader's byte counter from another thread (the
/// library does not print).
struct LoadBar {
    bar: ProgressBar,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ticker: std::thread::JoinHandle<()>,
}

impl LoadBar {
    /// Attaches a fresh counter to `options` and starts drawing it.
    fn start(dir: &Path, options: &mut ViperLoadOptions) -> Self {
        let progress = viper_model::LoadProgress::default();
        options.progress = Some(progress.clone());
        let bar = ProgressBar::new(0).with_message(format!("loading {}", dir.display()));
        bar.set_style(
            ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} [{elapsed}]")
                .expect("static template"),
        );
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let (bar, done) = (bar.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    bar.set_length(progress.total());
                    bar.set_position(progress.loaded());
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self { bar, done, ticker }
    }

    fn finish(self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.ticker.join();
        self.bar.finish_and_clear();
    }
}

fn load<B: SsmBackend>(args: &CommonArgs, device: &B::Device) -> Result<Viper<B>> {
    let dir = resolve_model(&args.model)?;
    let mut options = load_options(&dir, args.dtype, args.vision_tower.as_ref(), args.strict_context)?;
    let bar = LoadBar::start(&dir, &mut options);
    let viper = Viper::<B>::load(&dir, options, device).with_context(|| format!("loading {}", dir.display()));
    bar.finish();
    viper
}

fn generation_config<B: SsmBackend>(viper: &Viper<B>, args: &CommonArgs) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        },
        stop_strings: args.stop_strings.clone(),
        ignore_eos: args.ignore_eos,
        ..viper.default_generation()
    }
}

fn open_images(paths: &[PathBuf]) -> Result<Vec<viper_processor::RgbImage>> {
    let loader = ImageLoader::default();
    paths.iter().map(|p| loader.open(p).context("cannot open image")).collect()
}

/// Checks the `--json` and `--dump` outputs before any work starts: each must be writable, and
/// neither may name a directory where a file goes (`--dump DIR` is created if missing).
fn check_outputs(args: &GenerateArgs) -> Result<()> {
    if let Some(path) = &args.json {
        viper_io::check_output_file(path).context("--json")?;
    }
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir).with_context(|| format!("--dump: creating {}", dir.display()))?;
        viper_io::check_output_file(&dir.join(DUMP_FILE)).context("--dump")?;
    }
    Ok(())
}

fn generate<B: SsmBackend>(args: &GenerateArgs, device: &B::Device) -> Result<()> {
    check_outputs(args)?;
    let images = open_images(&args.common.images)?;
    let viper = load::<B>(&args.common, device)?;
    let config = generation_config(&viper, &args.common);
    let conversation = Viper::<B>::conversation(&args.prompt, images);

    let request = Instant::now();
    let bar = spinner("encoding images and prompt");
    let prepared = viper.prepare(&conversation)?;
    let prompt_len = prepared.inputs_embeds.dims()[1];
    bar.set_message(format!("prefill of {prompt_len} positions"));
    let mut cache = viper.model.new_cache(1);
    let mut first = true;
    let mut out = std::io::stdout().lock();
    let mut generation = viper_model::generate(
        &viper.model,
        &mut cache,
        prepared.inputs_embeds.clone(),
        &config,
        &viper.tokenizer,
        |piece| {
            if first {
                bar.finish_and_clear();
                first = false;
            }
            let _ = write!(out, "{piece}");
            let _ = out.flush();
        },
    )?;
    bar.finish_and_clear();
    writeln!(out)?;
    generation.stats = prepared.stats.with_answer(&generation.stats, request);
    log::info!("{} tokens in {:.2?} ({:?})", generation.ids.len(), request.elapsed(), generation.finish);
    if args.common.stats {
        print_stats(&viper, &generation.stats);
    }

    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "input_ids": prepared.tokens.ids,
            "inputs_embeds_len": prompt_len,
            "generated_ids": generation.ids,
            "text": generation.text,
            "last_logits": generation.prompt_logits,
            "stats": stats_json(&viper, &generation.stats),
        });
        viper_io::write_atomic(path, &serde_json::to_vec(&json)?)?;
    }
    if let Some(dir) = &args.dump {
        dump(&prepared, dir)?;
    }
    Ok(())
}

/// `--stats`: one block on stderr, the load figures first (as llama.cpp prints its timings).
fn print_stats<B: SsmBackend>(viper: &Viper<B>, stats: &viper_model::GenerationStats) {
    eprintln!("\n{}\n{stats}", viper.model.load_stats);
}

/// The `"stats"` object of `--json`: the answer's figures, the load and the derived rates.
fn stats_json<B: SsmBackend>(viper: &Viper<B>, stats: &viper_model::GenerationStats) -> serde_json::Value {
    let load = viper.model.load_stats;
    let mut json = serde_json::to_value(stats).unwrap_or_default();
    if let Some(object) = json.as_object_mut() {
        object.insert("load_seconds".into(), load.seconds.into());
        object.insert("load_bytes".into(), load.bytes.into());
        object.insert("load_gb_per_s".into(), load.gb_per_s().into());
        object.insert("prefill_tokens_per_s".into(), stats.prefill_tokens_per_s().into());
        object.insert("decode_tokens_per_s".into(), stats.decode_tokens_per_s().into());
    }
    json
}

/// Shape and little-endian f32 bytes of a dumped tensor.
type Dumped = (Vec<usize>, Vec<u8>);

/// The file `--dump DIR` writes.
const DUMP_FILE: &str = "tensors.safetensors";

/// Writes the image path's intermediate tensors (f32) to `dir/tensors.safetensors` (atomically).
fn dump<B: SsmBackend>(prepared: &PreparedPrompt<B>, dir: &Path) -> Result<()> {
    fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Dumped> {
        let shape = t.dims().to_vec();
        let values: Vec<f32> = t.into_data().convert::<f32>().to_vec().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok((shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
    }
    let mut tensors: Vec<(String, Dumped)> = Vec::new();
    let [_, l, h] = prepared.inputs_embeds.dims();
    tensors.push(("inputs_embeds".into(), host(prepared.inputs_embeds.clone().reshape([l, h]))?));
    if let Some(enc) = &prepared.encoding {
        let pixels: Vec<f32> = prepared.images.iter().flat_map(|im| im.pixel_values.iter().copied()).collect();
        let mut shape = prepared.images[0].shape.to_vec();
        shape[0] = prepared.images.iter().map(|im| im.shape[0]).sum();
        tensors.push(("pixel_values".into(), (shape, pixels.iter().flat_map(|v| v.to_le_bytes()).collect())));
        tensors.push(("clip_features".into(), host(enc.clip_features.clone())?));
        tensors.push(("projected_features".into(), host(enc.projected_features.clone())?));
        tensors.push(("image_features".into(), host(Tensor::cat(enc.image_features.clone(), 0))?));
    }
    let views = tensors
        .iter()
        .map(|(name, (shape, bytes))| {
            Ok((name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let path = dir.join(DUMP_FILE);
    viper_io::write_atomic(&path, &safetensors::serialize(views, None)?)?;
    Ok(())
}

/// `viper serve`: loads the model on the engine thread and serves until Ctrl-C or SIGTERM.
fn serve<B: SsmBackend>(args: &ServeArgs, device: B::Device) -> Result<()> {
    let dir = resolve_model(&args.model)?;
    // The server refuses prompts beyond the context limit (400) instead of truncating them.
    let mut options = load_options(&dir, args.dtype, args.vision_tower.as_ref(), true)?;
    let model_name = args.model_name.clone().unwrap_or_else(|| {
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| args.model.clone())
    });
    let config = viper_server::EngineConfig {
        max_batch: args.max_batch,
        queue: args.queue,
        state_cache_bytes: args.state_cache_mb << 20,
        prefill_chunk: args.prefill_chunk,
        max_context: None,
    };
    let bar = LoadBar::start(&dir, &mut options);
    let load_dir = dir.clone();
    let engine = viper_server::Engine::spawn(move || Viper::<B>::load(&load_dir, options, &device), config)
        .with_context(|| format!("loading {}", dir.display()));
    bar.finish();
    let engine = engine?;
    let http = viper_server::HttpOptions {
        model_name,
        max_body_bytes: args.max_body_mb << 20,
        limits: viper_server::api::RequestLimits {
            max_images: args.max_images,
            default_max_tokens: args.default_max_tokens,
            remote_images: args.allow_remote_images.then(|| viper_server::api::RemoteImages {
                timeout: std::time::Duration::from_secs(args.remote_image_timeout_s.max(1)),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    let addr = std::net::SocketAddr::new(args.host, args.port);
    viper_server::serve(engine, http, addr, |addr| {
        log::info!("listening on http://{addr}");
        eprintln!("viper serve: listening on http://{addr}");
    })?;
    Ok(())
}

fn chat<B: SsmBackend>(chat_args: &ChatArgs, device: &B::Device) -> Result<()> {
    let args = &chat_args.common;
    if let Some(path) = &chat_args.json {
        viper_io::check_output_file(path).context("--json")?;
    }
    let mut turns = Vec::new();
    let viper = load::<B>(args, device)?;
    let config = generation_config(&viper, args);
    let mut session = viper.chat(None);
    let mut images = open_images(&args.images)?;
    eprintln!(
        "viper chat: {} — empty line or Ctrl-D to quit, `/image PATH` attaches an image to the next question",
        args.model
    );
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let line = line.trim();
        if let Some(path) = line.strip_prefix("/image ") {
            match open_images(&[PathBuf::from(path.trim())]) {
                Ok(mut im) => images.append(&mut im),
                Err(e) => eprintln!("error: {}", one_line(&e)),
            }
            continue;
        }
        let bar = spinner("thinking");
        let mut first = true;
        let attached = images.len();
        let result = session.ask(line, std::mem::take(&mut images), &config, |piece| {
            if first {
                bar.finish_and_clear();
                first = false;
            }
            print!("{piece}");
            let _ = out.flush();
        });
        bar.finish_and_clear();
        println!();
        match result {
            Ok(generation) => {
                if args.stats {
                    print_stats(&viper, &generation.stats);
                }
                if let Some(path) = &chat_args.json {
                    turns.push(serde_json::json!({
                        "question": line,
                        "images": attached,
                        "generated_ids": generation.ids,
                        "text": generation.text,
                        "stats": stats_json(&viper, &generation.stats),
                    }));
                    viper_io::write_atomic(path, &serde_json::to_vec(&turns)?)?;
                }
            }
            Err(e) => eprintln!("error: {}", one_line(&e.into())),
        }
    }
    Ok(())
}

//! The hostile-input corpus: every case is an input a user or a checkpoint can supply, and each must
//! fail with one specific typed error, never panic, and finish within [`BOUND`] (it runs on a thread
//! of its own, so a hang fails the test instead of blocking it). One test per family, each a table
//! of cases; a family reports all its failing cases at once.
//!
//! Families: config.json sizes, checkpoint loading, image_grid_pinpoints, files that are not regular
//! or are too large, images, chat templates, tokenizers, safetensors files. The CLI's output paths
//! are in `examples/tests/it/cli.rs`.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use burn::backend::NdArray;
use serde_json::{json, Value};
use viper_chat_template::{ChatTemplate, Conversation, Error as ChatError, RenderBudget, SpecialTokens, Tokenizer};
use viper_checkpoint::{Checkpoint, CheckpointError};
use viper_io::{FileError, FileKind};
use viper_model::{ModelError, Viper, ViperConfig};
use viper_processor::{parse_pinpoints, ImageLoader, Origin, PreprocessorConfig, Processor, ProcessorError};
use viper_vision::{ClipVisionConfig, VisionError};

type B = NdArray;

/// Time any case may take (generous: the tests share a loaded machine; the checks run before any
/// work proportional to the input, so each case takes milliseconds to a few seconds).
const BOUND: Duration = Duration::from_secs(90);

/// An edit of a JSON file of a checkpoint.
type Edit = fn(&mut Value);

/// One hostile input: how to feed it, and which error it must give.
struct Case<E> {
    name: String,
    run: Box<dyn FnOnce() -> Result<(), E> + Send>,
    expected: fn(&E) -> bool,
}

/// `case!(name, expression returning Result<_, E>, pattern the error must match)`.
macro_rules! case {
    ($name:expr, $run:expr, $pattern:pat $(if $guard:expr)?) => {
        Case {
            name: $name.to_string(),
            run: Box::new(move || $run.map(drop)),
            expected: |e| matches!(e, $pattern $(if $guard)?),
        }
    };
}

/// Runs every case of a family, each on its own thread within [`BOUND`]; panics listing the cases
/// that were accepted, gave another error, panicked or hung. Returns how many ran.
fn run_family<E: Debug + std::fmt::Display + Send + 'static>(family: &str, cases: Vec<Case<E>>) -> usize {
    let count = cases.len();
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    for Case { name, run, expected } in cases {
        let (done, result) = mpsc::channel();
        let start = Instant::now();
        let worker = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _ = done.send(run());
            })
            .expect("spawn a case");
        match result.recv_timeout(BOUND) {
            Ok(Ok(())) => failures.push(format!("{name}: accepted")),
            Ok(Err(e)) if expected(&e) => {}
            Ok(Err(e)) => failures.push(format!("{name}: unexpected error {e:?} ({e})")),
            Err(mpsc::RecvTimeoutError::Timeout) => failures.push(format!("{name}: still running after {BOUND:?}")),
            Err(mpsc::RecvTimeoutError::Disconnected) => failures.push(format!("{name}: panicked")),
        }
        if start.elapsed() > slowest.0 {
            slowest = (start.elapsed(), name.clone());
        }
        if worker.is_finished() {
            let _ = worker.join();
        }
    }
    eprintln!("{family}: {count} cases, slowest {} in {:.2?}", slowest.1, slowest.0);
    assert!(failures.is_empty(), "{family}: {} of {count} cases failed:\n{}", failures.len(), failures.join("\n"));
    count
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn reference(name: &str) -> PathBuf {
    fixtures().join("reference").join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A copy of a reference checkpoint (its vision tower folder included).
fn copy_checkpoint(name: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                if path.file_name().unwrap() != "images" {
                    copy(&path, &target);
                }
            } else if path.file_name().unwrap() != "reference.safetensors" {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&reference(name), dir.path());
    dir
}

/// A copy of a reference checkpoint with `config.json` edited.
fn edited(name: &str, edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let dir = copy_checkpoint(name);
    let mut config = read_json(&dir.path().join("config.json"));
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

/// A reference config with `key` set to `value`.
fn config_with(name: &str, key: &str, value: Value) -> Value {
    let mut config = read_json(&reference(name).join("config.json"));
    config[key] = value;
    config
}

/// Replaces `path` by a FIFO.
fn fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success(), "mkfifo {}", path.display());
}

/// Replaces `path` by a symlink to `/dev/zero`, an endless stream.
fn endless(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink("/dev/zero", path).unwrap();
}

/// Replaces `path` by a sparse file of `len` bytes.
fn sparse(path: &Path, len: u64) {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// A checkpoint dir whose file `file` has been replaced by `how`; the dir is kept alive by the case.
fn checkpoint_with(name: &str, file: &str, how: fn(&Path)) -> (tempfile::TempDir, PathBuf) {
    let dir = copy_checkpoint(name);
    how(&dir.path().join(file));
    let path = dir.path().to_path_buf();
    (dir, path)
}

fn load(dir: &Path) -> Result<Viper<B>, ModelError> {
    Viper::<B>::load(dir, Default::default(), &Default::default())
}

// ---------------------------------------------------------------------------------------------------
// config.json sizes

#[test]
fn config_sizes() {
    let mut cases: Vec<Case<ModelError>> = Vec::new();
    let too_large: &[(&str, &str, u64)] = &[
        ("mamba-s1", "hidden_size", 1 << 20),
        ("mamba-s1", "intermediate_size", 1 << 40),
        ("mamba-s1", "num_hidden_layers", 1 << 30),
        ("mamba-s1", "vocab_size", 1 << 40),
        ("mamba-s1", "state_size", 1 << 20),
        ("mamba-s1", "conv_kernel", 1 << 20),
        ("mamba-s1", "time_step_rank", 1 << 32),
        ("mamba-s1", "expand", 1000),
        ("mamba-s1", "mm_hidden_size", 1 << 24),
        ("mamba-s1", "tokenizer_model_max_length", 1 << 40),
        ("mamba-s1", "hidden_size", u64::MAX),
        ("jamba-s1", "mamba_d_state", 1 << 20),
        ("jamba-s1", "mamba_d_conv", 1 << 20),
        ("jamba-s1", "mamba_dt_rank", 1 << 32),
        ("jamba-s1", "mamba_expand", 1 << 16),
        ("jamba-s1", "num_attention_heads", 1 << 20),
        ("jamba-s1", "num_key_value_heads", 1 << 20),
        ("jamba-s1", "num_experts", 1 << 20),
        ("jamba-s1", "num_experts_per_tok", 1 << 20),
        ("jamba-s1", "expert_layer_period", 1 << 20),
        ("jamba-s1", "expert_layer_offset", 1 << 20),
        ("jamba-s1", "attn_layer_period", 1 << 20),
        ("jamba-s1", "attn_layer_offset", 1 << 20),
        ("jamba-s1", "num_hidden_layers", 1 << 20),
    ];
    for &(model, key, value) in too_large {
        let config = config_with(model, key, value.into());
        cases.push(Case {
            name: format!("{model} {key} = {value}"),
            run: Box::new(move || ViperConfig::from_json(config).map(drop)),
            expected: |e| matches!(e, ModelError::ConfigLimit { .. }),
        });
    }
    // The issue's panic: a context of 0 positions narrowed the prompt to nothing inside Burn.
    let zero = config_with("mamba-s1", "tokenizer_model_max_length", 0.into());
    cases.push(case!(
        "tokenizer_model_max_length = 0",
        ViperConfig::from_json(zero),
        ModelError::ConfigLimit { field: "tokenizer_model_max_length", min: 1, .. }
    ));
    for (name, value) in [
        ("negative hidden_size", json!(-64)),
        ("fractional hidden_size", json!(64.5)),
        ("hidden_size as a string", json!("64")),
        ("hidden_size 1e300", json!(1e300)),
    ] {
        let config = config_with("mamba-s1", "hidden_size", value);
        cases.push(case!(name, ViperConfig::from_json(config), ModelError::ConfigParse { .. }));
    }
    // JSON nested past serde_json's recursion limit, from a file.
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("config.json");
    std::fs::write(&deep, format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))).unwrap();
    cases.push(case!("config.json nested 100k deep", ViperConfig::from_file(&deep), ModelError::ConfigParse { .. }));
    let dir2 = tempfile::tempdir().unwrap();
    let huge_number = dir2.path().join("config.json");
    std::fs::write(
        &huge_number,
        format!("{{\"model_type\": \"llava_falcon_mamba\", \"hidden_size\": 1{}}}", "0".repeat(5000)),
    )
    .unwrap();
    cases.push(case!("a 5000-digit hidden_size", ViperConfig::from_file(&huge_number), ModelError::ConfigParse { .. }));
    let n = run_family("config sizes", cases);
    drop((dir, dir2));
    assert!(n >= 30);
}

// ---------------------------------------------------------------------------------------------------
// loading whole checkpoints: limits reached through `Viper::load`

#[test]
fn checkpoint_loading() {
    let mut cases: Vec<Case<ModelError>> = Vec::new();
    let configs: Vec<(&str, &str, Edit)> = vec![
        ("mamba-s1", "tokenizer_model_max_length = 0", |c| c["tokenizer_model_max_length"] = 0.into()),
        ("mamba-s1", "pinpoint range to 100000x100000 tiles", |c| {
            c["image_grid_pinpoints"] = "(1x1),...,(100000x100000)".into()
        }),
        ("mamba-s1", "pinpoint range past u32", |c| c["image_grid_pinpoints"] = "(1x1),...,(4294967295x1)".into()),
        ("mamba-s1", "one pinpoint of 10^6 x 10^6", |c| c["image_grid_pinpoints"] = json!([[999_992, 999_992]])),
        ("mamba-s1", "a million pinpoints", |c| c["image_grid_pinpoints"] = json!(vec![[56, 56]; 1_000_000])),
        ("jamba-s1", "pinpoint string of 5000 pairs", |c| {
            c["image_grid_pinpoints"] = format!("[{}]", vec!["(56, 56)"; 5000].join(", ")).into()
        }),
        ("jamba-s1", "tokenizer_model_max_length = 0", |c| c["tokenizer_model_max_length"] = 0.into()),
        ("jamba-s1", "num_experts = 2^30", |c| c["num_experts"] = (1u64 << 30).into()),
    ];
    for (model, name, edit) in configs {
        let dir = edited(model, edit);
        cases.push(Case {
            name: format!("{model}: {name}"),
            run: Box::new(move || load(dir.path()).map(drop)),
            expected: |e| matches!(e, ModelError::ConfigLimit { .. } | ModelError::Image(ProcessorError::Limit { .. })),
        });
    }
    // The vision tower's own config.json (mamba-s1 keeps its tower in `vision_tower/`).
    for (name, key, value) in [
        ("tower image_size 2^20", "image_size", json!(1 << 20)),
        ("tower hidden_size 2^30", "hidden_size", json!(1u64 << 30)),
        ("tower num_hidden_layers 10^6", "num_hidden_layers", json!(1_000_000)),
        ("tower num_channels 1000", "num_channels", json!(1000)),
        ("tower intermediate_size 2^40", "intermediate_size", json!(1u64 << 40)),
    ] {
        let dir = copy_checkpoint("mamba-s1");
        let path = dir.path().join("vision_tower/config.json");
        let mut tower = read_json(&path);
        tower[key] = value;
        std::fs::write(&path, tower.to_string()).unwrap();
        cases.push(Case {
            name: name.into(),
            run: Box::new(move || load(dir.path()).map(drop)),
            expected: |e| {
                matches!(e, ModelError::Vision(VisionError::InvalidConfig { reason, .. }) if reason.contains("limit"))
            },
        });
    }
    assert!(run_family("checkpoint loading", cases) >= 13);
}

// ---------------------------------------------------------------------------------------------------
// image_grid_pinpoints, straight into the processor

#[test]
fn grid_pinpoints() {
    let from_config = |pinpoints: Value| {
        Processor::from_config(&json!({ "image_aspect_ratio": "anyres", "image_grid_pinpoints": pinpoints }))
    };
    let limit = |e: &ProcessorError| matches!(e, ProcessorError::Limit { .. });
    let mut cases: Vec<Case<ProcessorError>> = Vec::new();
    for (name, pinpoints) in [
        ("range of 10^10 pinpoints", json!("(1x1),...,(100000x100000)")),
        ("range of 2^32 x 1 pinpoints", json!("(1x1),...,(4294967295x1)")),
        ("range ending in a huge tile count", json!("(1x1),...,(1x4000000)")),
        ("range whose side overflows u32", json!("(12782640x1),...,(12782640x1)")),
        ("range of 32x33 = 1056 pinpoints", json!("(1x1),...,(32x33)")),
        ("a million-entry list", json!(vec![[336, 336]; 1_000_000])),
        ("1025 entries", json!(vec![[336, 336]; 1025])),
        ("a string list of 2000 pairs", json!(format!("[{}]", vec!["(336, 336)"; 2000].join(",")))),
        ("one pinpoint 3360000 x 3360000", json!([[3_360_000, 3_360_000]])),
        ("one pinpoint 16464 wide", json!([[16_464, 336]])),
        ("one pinpoint u32::MAX rounded to tiles", json!([[4_294_967_136u64, 336]])),
    ] {
        cases.push(Case {
            name: name.into(),
            run: Box::new(move || from_config(pinpoints).map(drop)),
            expected: limit,
        });
    }
    let pinpoint_error = |e: &ProcessorError| matches!(e, ProcessorError::Pinpoints { .. });
    for (name, pinpoints) in [
        ("empty list", json!([])),
        ("empty range", json!("(3x3),...,(1x1)")),
        ("zero side", json!([[0, 336]])),
        ("side not a multiple of the tile", json!([[337, 336]])),
        ("side past u32", json!([[4_294_967_296u64, 336]])),
        ("negative side", json!([[-336, 336]])),
        ("a megabyte of parentheses", json!("(".repeat(1 << 20))),
        ("triples", json!("[(336, 336, 336)]")),
        ("a number", json!(336)),
        ("nested garbage", json!([[[336]], {"w": 336}])),
    ] {
        cases.push(Case {
            name: name.into(),
            run: Box::new(move || from_config(pinpoints).map(drop)),
            expected: pinpoint_error,
        });
    }
    cases.push(case!(
        "Processor::new with 2000 pinpoints",
        Processor::new(vec![(56, 56); 2000], 56, 14, PreprocessorConfig::default()),
        ProcessorError::Limit { value: 2000, .. }
    ));
    cases.push(case!(
        "parse_pinpoints range past the side limit",
        parse_pinpoints(&json!("(1x1),...,(60x1)"), 336),
        ProcessorError::Limit { field, .. } if field.contains("side")
    ));
    assert!(run_family("image_grid_pinpoints", cases) >= 20);
}

// ---------------------------------------------------------------------------------------------------
// files that are not regular files, or too large

/// The [`FileError`] inside a loader's error, whichever crate's loader it is.
fn file_error(e: &ModelError) -> Option<&FileError> {
    match e {
        ModelError::File(e)
        | ModelError::Checkpoint(CheckpointError::File(e))
        | ModelError::Prompt(ChatError::File(e))
        | ModelError::Vision(VisionError::File(e))
        | ModelError::Image(ProcessorError::File(e)) => Some(e),
        _ => None,
    }
}

fn fifo_error(e: &ModelError) -> bool {
    matches!(file_error(e), Some(FileError::NotAFile { kind: FileKind::Fifo, .. }))
}

fn device_error(e: &ModelError) -> bool {
    matches!(file_error(e), Some(FileError::NotAFile { kind: FileKind::CharDevice, .. }))
}

fn too_large(e: &ModelError) -> bool {
    matches!(file_error(e), Some(FileError::TooLarge { .. }))
}

#[test]
fn irregular_and_oversized_files() {
    let mut cases: Vec<Case<ModelError>> = Vec::new();
    let files: &[(&str, &str)] = &[
        ("mamba-s1", "config.json"),
        ("mamba-s1", "tokenizer.json"),
        ("mamba-s1", "tokenizer_config.json"),
        ("jamba-s1", "tokenizer.json"),
        ("mamba-s1", "model.safetensors"),
        ("mamba-s1", "vision_tower/preprocessor_config.json"),
        ("mamba-s1", "chat_template.jinja"),
    ];
    for &(model, file) in files {
        let (dir, path) = checkpoint_with(model, file, fifo);
        cases.push(Case {
            name: format!("{model}/{file} is a FIFO"),
            run: Box::new(move || {
                let _dir = dir;
                load(&path).map(drop)
            }),
            expected: fifo_error,
        });
    }
    for &(model, file) in &files[..4] {
        let (dir, path) = checkpoint_with(model, file, endless);
        cases.push(Case {
            name: format!("{model}/{file} is /dev/zero"),
            run: Box::new(move || {
                let _dir = dir;
                load(&path).map(drop)
            }),
            expected: device_error,
        });
    }
    let sizes: &[(&str, &str, u64)] = &[
        ("mamba-s1", "config.json", 1 << 40),
        ("mamba-s1", "tokenizer.json", 100 << 20),
        ("jamba-s1", "tokenizer_config.json", 1 << 30),
        ("jamba-s1", "config.json", 17 << 20),
        ("mamba-s1", "chat_template.jinja", 2 << 20),
        ("mamba-s1", "vision_tower/config.json", 1 << 35),
    ];
    for &(model, file, len) in sizes {
        let dir = copy_checkpoint(model);
        sparse(&dir.path().join(file), len);
        cases.push(Case {
            name: format!("{model}/{file} of {len} bytes"),
            run: Box::new(move || load(dir.path()).map(drop)),
            expected: too_large,
        });
    }
    // Safetensors: a FIFO shard found by listing, an index that is a FIFO, a FIFO named by an index.
    let dir = copy_checkpoint("mamba-s1");
    std::fs::rename(dir.path().join("model.safetensors"), dir.path().join("a.safetensors")).unwrap();
    fifo(&dir.path().join("b.safetensors"));
    cases.push(case!(
        "a FIFO among the *.safetensors shards",
        Checkpoint::open(dir.path()).map_err(ModelError::from),
        e if fifo_error(e)
    ));
    let dir = tempfile::tempdir().unwrap();
    fifo(&dir.path().join("model.safetensors.index.json"));
    cases.push(case!(
        "model.safetensors.index.json is a FIFO",
        Checkpoint::open(dir.path()).map_err(ModelError::from),
        e if fifo_error(e)
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors.index.json"), r#"{"weight_map": {"x": "shard.safetensors"}}"#)
        .unwrap();
    fifo(&dir.path().join("shard.safetensors"));
    cases.push(case!(
        "an index naming a FIFO shard",
        Checkpoint::open(dir.path()).map_err(ModelError::from),
        e if fifo_error(e)
    ));
    let dir = tempfile::tempdir().unwrap();
    sparse(&dir.path().join("model.safetensors.index.json"), 1 << 36);
    cases.push(case!("a 64 GiB index", Checkpoint::open(dir.path()).map_err(ModelError::from), e if too_large(e)));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("model.safetensors")).unwrap();
    cases.push(case!(
        "model.safetensors is a directory",
        Checkpoint::open(dir.path()).map_err(ModelError::from),
        ModelError::Checkpoint(CheckpointError::File(FileError::NotAFile { kind: FileKind::Directory, .. }))
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weights.safetensors");
    fifo(&file);
    cases.push(case!(
        "a FIFO given as the safetensors file",
        Checkpoint::open(&file).map_err(ModelError::from),
        e if fifo_error(e)
    ));
    // Straight through the loaders of each crate.
    let dir = tempfile::tempdir().unwrap();
    fifo(&dir.path().join("config.json"));
    let tower = dir.path().join("config.json");
    cases.push(case!(
        "ClipVisionConfig::from_file on a FIFO",
        ClipVisionConfig::from_file(&tower).map_err(ModelError::from),
        e if fifo_error(e)
    ));
    let dir = tempfile::tempdir().unwrap();
    fifo(&dir.path().join("tokenizer.json"));
    cases.push(case!(
        "Tokenizer::from_dir with a FIFO",
        Tokenizer::from_dir(dir.path()).map_err(ModelError::from),
        e if fifo_error(e)
    ));
    let dir = tempfile::tempdir().unwrap();
    fifo(&dir.path().join("chat_template.jinja"));
    cases.push(case!(
        "ChatTemplate::from_checkpoint with a FIFO",
        ChatTemplate::from_checkpoint(dir.path()).map_err(ModelError::from),
        e if fifo_error(e)
    ));
    // Images.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("cat.png");
    fifo(&image);
    cases.push(case!(
        "an image that is a FIFO",
        ImageLoader::default().open(&image).map_err(ModelError::from),
        ModelError::Image(ProcessorError::File(FileError::NotAFile { kind: FileKind::Fifo, .. }))
    ));
    cases.push(case!(
        "an image that is /dev/zero",
        ImageLoader::default().open("/dev/zero").map_err(ModelError::from),
        ModelError::Image(ProcessorError::File(FileError::NotAFile { kind: FileKind::CharDevice, .. }))
    ));
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("huge.png");
    sparse(&image, 1 << 34);
    cases.push(case!(
        "a 16 GiB image file",
        ImageLoader::default().open(&image).map_err(ModelError::from),
        ModelError::Image(ProcessorError::TooManyBytes { bytes, .. }) if *bytes == 1 << 34
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    cases.push(case!(
        "an image that is a directory",
        ImageLoader::default().open(&path).map_err(ModelError::from),
        ModelError::Image(ProcessorError::File(FileError::NotAFile { kind: FileKind::Directory, .. }))
    ));
    let n = run_family("irregular and oversized files", cases);
    drop(dir);
    assert!(n >= 30);
}

// ---------------------------------------------------------------------------------------------------
// images

fn decode_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("processor/decode").join(name)).unwrap()
}

/// A BMP header declaring `width` x `height` 24-bit pixels, followed by `data` bytes.
fn bmp(width: i32, height: i32, data: usize) -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend((54 + data as u32).to_le_bytes());
    b.extend([0; 4]);
    b.extend(54u32.to_le_bytes());
    b.extend(40u32.to_le_bytes());
    b.extend(width.to_le_bytes());
    b.extend(height.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(24u16.to_le_bytes());
    b.extend([0; 24]);
    b.extend(vec![0x80; data]);
    b
}

/// CRC-32 (IEEE) of PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &b| {
        (0..8).fold(crc ^ u32::from(b), |c, _| (c >> 1) ^ (0xEDB8_8320 & (c & 1).wrapping_neg()))
    })
}

/// A PNG signature and IHDR declaring `width` x `height` 8-bit RGB pixels, then an empty IDAT.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let body = [kind, data].concat();
        [&(data.len() as u32).to_be_bytes()[..], &body, &crc32(&body).to_be_bytes()].concat()
    };
    let ihdr = [&width.to_be_bytes()[..], &height.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
    [&b"\x89PNG\r\n\x1a\n"[..], &chunk(b"IHDR", &ihdr), &chunk(b"IDAT", &[]), &chunk(b"IEND", &[])].concat()
}

/// A GIF with a logical screen of `screen` (width, height little-endian) and one 1x1 frame.
fn gif(screen: [u8; 4]) -> Vec<u8> {
    let mut bytes = b"GIF89a".to_vec();
    bytes.extend(screen);
    bytes.extend([0x80, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, b',', 0, 0, 0, 0, 1, 0, 1, 0]);
    bytes.extend([0, 2, 2, 0x44, 1, 0, b';']);
    bytes
}

fn truncated(e: &ProcessorError) -> bool {
    matches!(e, ProcessorError::Decode { source, .. } if source.to_string().contains("truncated"))
}

fn decode_error(e: &ProcessorError) -> bool {
    matches!(e, ProcessorError::Decode { .. })
}

#[test]
fn images() {
    let mut cases: Vec<Case<ProcessorError>> = Vec::new();
    // Truncated JPEGs: the issue's silent acceptances (zune-jpeg fills the missing scan with grey).
    for name in ["rgb.jpg", "grey.jpg"] {
        let bytes = decode_fixture(name);
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap() + 14;
        let n = bytes.len();
        for (what, cut) in [
            ("just after the scan header", sos + 1),
            ("a third into the scan", sos + (n - sos) / 3),
            ("half-way", (sos + n) / 2),
            ("10 bytes short", n - 10),
            ("missing its EOI", n - 2),
            ("missing the D9 of its EOI", n - 1),
        ] {
            let data = bytes[..cut].to_vec();
            cases.push(Case {
                name: format!("{name} cut {what}"),
                run: Box::new(move || ImageLoader::default().decode(&data).map(drop)),
                expected: truncated,
            });
        }
    }
    let rgb = decode_fixture("rgb.jpg");
    let sof = rgb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let sos = rgb.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let headers_then_eoi = [&rgb[..sos], &[0xFF, 0xD9][..]].concat();
    cases.push(
        case!("a JPEG with an EOI but no scan", ImageLoader::default().decode(&headers_then_eoi), e if decode_error(e)),
    );
    let mut short_segment = rgb.clone();
    short_segment[sof + 2..sof + 4].copy_from_slice(&[0, 1]);
    cases
        .push(case!("a JPEG segment of length 1", ImageLoader::default().decode(&short_segment), e if decode_error(e)));
    let mut long_segment = rgb.clone();
    long_segment[sof + 2..sof + 4].copy_from_slice(&[0xFF, 0xFF]);
    cases.push(case!(
        "a JPEG segment longer than the file",
        ImageLoader::default().decode(&long_segment),
        e if decode_error(e)
    ));
    // Other formats, at prefixes Pillow 10.4 refuses.
    for (name, short_by) in [
        ("lossy.webp", 1),
        ("lossy.webp", 3),
        ("lossless.webp", 1),
        ("anim.gif", 640),
        ("anim.gif", 700),
        ("rgb.png", 50),
        ("rgb.bmp", 2),
        ("rgb.tif", 1),
        ("rgb_lzw.tif", 1),
    ] {
        let bytes = decode_fixture(name);
        let data = bytes[..bytes.len() - short_by].to_vec();
        cases.push(Case {
            name: format!("{name} {short_by} bytes short"),
            run: Box::new(move || ImageLoader::default().decode(&data).map(drop)),
            expected: decode_error,
        });
    }
    // Limits, from the header.
    cases.push(case!(
        "a PNG 70000 pixels wide",
        ImageLoader::default().decode(&png_header(70_000, 1)),
        ProcessorError::DimensionTooLarge { width: 70_000, max_dimension: 65_535, .. }
    ));
    cases.push(case!(
        "a PNG 100000 pixels high",
        ImageLoader::default().decode(&png_header(1, 100_000)),
        ProcessorError::DimensionTooLarge { height: 100_000, .. }
    ));
    let narrow = ImageLoader { max_dimension: 16_384, ..Default::default() };
    cases.push(case!(
        "a BMP 30000 pixels wide, limit 16384",
        narrow.decode(&bmp(30_000, 1, 64)),
        ProcessorError::DimensionTooLarge { width: 30_000, max_dimension: 16_384, .. }
    ));
    cases.push(case!(
        "a BMP of 30000 x 30000 pixels",
        ImageLoader::default().decode(&bmp(30_000, 30_000, 64)),
        ProcessorError::TooManyPixels { width: 30_000, height: 30_000, .. }
    ));
    let bomb = std::fs::read(fixtures().join("processor/bad/bomb.png")).unwrap();
    cases.push(case!(
        "a 60000 x 60000 PNG bomb",
        ImageLoader::default().decode(&bomb),
        ProcessorError::TooManyPixels { .. }
    ));
    let png = decode_fixture("rgb.png");
    let small = ImageLoader { max_bytes: 1000, ..Default::default() };
    let png_copy = png.clone();
    cases.push(case!(
        "past a byte limit",
        small.decode(&png_copy),
        ProcessorError::TooManyBytes { max_bytes: 1000, .. }
    ));
    cases.push(case!("no bytes", ImageLoader::default().decode(b""), ProcessorError::Empty { origin: Origin::Memory }));
    cases.push(case!(
        "text, not an image",
        ImageLoader::default().decode(b"{\"not\": \"an image\"}"),
        ProcessorError::UnsupportedFormat { .. }
    ));
    cases.push(case!(
        "a QOI image",
        ImageLoader::default().decode(b"qoif\0\0\0\x01\0\0\0\x01\x03\0"),
        ProcessorError::UnsupportedFormat { .. }
    ));
    cases.push(case!("a 0 x 0 PNG", ImageLoader::default().decode(&png_header(0, 0)), e if decode_error(e)));
    cases.push(case!("a 0 x 0 GIF", ImageLoader::default().decode(&gif([0; 4])), ProcessorError::NoPixels { .. }));
    cases
        .push(case!("a PNG signature only", ImageLoader::default().decode(b"\x89PNG\r\n\x1a\n"), e if decode_error(e)));
    let mut bad_crc = png.clone();
    bad_crc[29] ^= 0xFF;
    cases.push(
        case!("a PNG with a broken IHDR checksum", ImageLoader::default().decode(&bad_crc), e if decode_error(e)),
    );
    assert!(run_family("images", cases) >= 35);
}

// ---------------------------------------------------------------------------------------------------
// chat templates

fn render(source: &str) -> Result<String, ChatError> {
    let template = ChatTemplate::new(source, "hostile")?;
    let conversation = Conversation::<()>::new().with_system("sys").user("hi").assistant("hello").user("and?");
    template.render(&conversation, &SpecialTokens::default(), true)
}

#[test]
fn chat_templates() {
    let budget = |e: &ChatError| matches!(e, ChatError::TemplateBudget { .. });
    let template_error = |e: &ChatError| matches!(e, ChatError::Template { .. });
    let mut cases: Vec<Case<ChatError>> = Vec::new();
    for (name, source) in [
        (
            "three nested loops of 100k",
            "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}",
        ),
        ("two nested loops of 100k printing nothing", "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"),
        (
            "loops nested in a macro called in a loop",
            "{% macro m() %}{% for i in range(100000) %}{% endfor %}{% endmacro %}{% for j in range(100000) %}{{ m() }}{% endfor %}",
        ),
        (
            "a namespace counter run 10^10 times",
            "{% set ns = namespace(n=0) %}{% for a in range(100000) %}{% for b in range(100000) %}{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}{{ ns.n }}",
        ),
        (
            "a loop over every message nested ten deep",
            "{% for a in range(100) %}{% for b in range(100) %}{% for c in range(100) %}{% for d in range(100) %}{% for m in messages %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}",
        ),
    ] {
        cases.push(Case { name: name.into(), run: Box::new(move || render(source).map(drop)), expected: budget });
    }
    cases.push(case!(
        "a loop printing 100 MB strings",
        render("{% set s = 'x' * 100000000 %}{% for i in range(100) %}{{ s }}{% endfor %}"),
        ChatError::PromptTooLarge { .. }
    ));
    cases.push(case!(
        "a prompt of 20 MB",
        render("{% for i in range(20000) %}{{ 'x' * 1000 }}{% endfor %}"),
        ChatError::PromptTooLarge { .. }
    ));
    let deep = format!("{{{{ {}1{} }}}}", "(".repeat(10_000), ")".repeat(10_000));
    let chain = format!("{{{{ messages{} }}}}", " | tojson".repeat(40));
    for (name, source) in [
        ("a range of 10^9", "{% for i in range(1000000000) %}{% endfor %}"),
        ("a string of 10^10 bytes", "{{ 'x' * 10000000000 }}"),
        ("endless macro recursion", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"),
        ("a 10000-deep expression", deep.as_str()),
        ("unclosed for", "{% for m in messages %}"),
        ("an unknown filter", "{{ messages | no_such_filter }}"),
        ("an unknown tag", "{% frobnicate %}"),
        ("a division by zero", "{{ 1 // 0 }}"),
        // Found by the fuzzer: the indent was allocated, 4 GiB of spaces per line.
        ("tojson with an indent of 2^32", "{{ messages | tojson(indent=4294967296) }}"),
        // Also the fuzzer's: each tojson doubles the backslashes of the last.
        ("tojson of tojson, 40 times", chain.as_str()),
    ] {
        let source = source.to_string();
        cases.push(Case {
            name: name.into(),
            run: Box::new(move || render(&source).map(drop)),
            expected: template_error,
        });
    }
    cases.push(case!(
        "raise_exception",
        render("{{ raise_exception('no system prompt here') }}"),
        ChatError::TemplateException { message, .. } if message == "no system prompt here"
    ));
    // Through a checkpoint's tokenizer_config.json, with a small budget set by the caller.
    let dir = copy_checkpoint("mamba-s1");
    let config_path = dir.path().join("tokenizer_config.json");
    let mut config = read_json(&config_path);
    config["chat_template"] = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    cases.push(case!(
        "a checkpoint's nested loops on a budget of 1000",
        ChatTemplate::from_checkpoint(dir.path())
            .map(|t| t.unwrap().with_budget(RenderBudget { fuel: 1000, ..Default::default() }))
            .and_then(|t| t.render(&Conversation::<()>::new().user("hi"), &SpecialTokens::default(), true)),
        ChatError::TemplateBudget { fuel: 1000, .. }
    ));
    assert!(run_family("chat templates", cases) >= 15);
}

// ---------------------------------------------------------------------------------------------------
// tokenizers

/// A copy of the mamba-s1 tokenizer with `edit` applied to its tokenizer.json.
fn tokenizer_with(edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let dir = copy_checkpoint("mamba-s1");
    let path = dir.path().join("tokenizer.json");
    let mut json = read_json(&path);
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
    dir
}

#[test]
fn tokenizers() {
    let mut cases: Vec<Case<ChatError>> = Vec::new();
    // The issue's panic: Oniguruma gives up on a catastrophically backtracking pattern, and the
    // `onig` crate panics on its error.
    let dir = tokenizer_with(|t| {
        t["pre_tokenizer"] =
            json!({"type": "Split", "pattern": {"Regex": "(x+x+)+y"}, "behavior": "Isolated", "invert": false})
    });
    cases.push(case!(
        "a pre-tokenizer pattern that backtracks forever",
        Tokenizer::from_dir(dir.path()).and_then(|t| t.encode_prompt(&format!("{}zy", "x".repeat(64)))),
        ChatError::TokenizerPanic { .. }
    ));
    let tokenizer_error = |e: &ChatError| matches!(e, ChatError::Tokenizer { .. });
    let edits: Vec<(&str, Edit)> = vec![
        ("an invalid pre-tokenizer regex", |t| {
            t["pre_tokenizer"] =
                json!({"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false})
        }),
        ("a model of the wrong type", |t| t["model"] = json!(42)),
        ("an unknown model type", |t| t["model"]["type"] = "NoSuchModel".into()),
        ("BPE merges naming unknown tokens", |t| t["model"]["merges"] = json!(["zzzq qqqz"])),
        ("an unknown normalizer", |t| t["normalizer"] = json!({"type": "NoSuchNormalizer"})),
    ];
    for (name, edit) in edits {
        let dir = tokenizer_with(edit);
        cases.push(Case {
            name: name.into(),
            run: Box::new(move || Tokenizer::from_dir(dir.path()).map(drop)),
            expected: tokenizer_error,
        });
    }
    let dir = copy_checkpoint("mamba-s1");
    std::fs::write(dir.path().join("tokenizer.json"), format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)))
        .unwrap();
    cases.push(Case {
        name: "tokenizer.json nested 100k deep".into(),
        run: Box::new(move || Tokenizer::from_dir(dir.path()).map(drop)),
        expected: tokenizer_error,
    });
    let dir = copy_checkpoint("mamba-s1");
    std::fs::write(dir.path().join("tokenizer_config.json"), format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)))
        .unwrap();
    cases.push(case!(
        "tokenizer_config.json nested 100k deep",
        Tokenizer::from_dir(dir.path()),
        ChatError::Json { .. }
    ));
    let dir = copy_checkpoint("mamba-s1");
    std::fs::write(dir.path().join("tokenizer_config.json"), b"{\"bos_token\": \"\xff\xfe\"}").unwrap();
    cases.push(case!("tokenizer_config.json that is not UTF-8", Tokenizer::from_dir(dir.path()), ChatError::Io { .. }));
    assert!(run_family("tokenizers", cases) >= 8);
}

// ---------------------------------------------------------------------------------------------------
// safetensors files

/// A valid safetensors file: one F32 tensor `x` of `[2, 2]`.
fn safetensors_file() -> Vec<u8> {
    let header = br#"{"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    [&(header.len() as u64).to_le_bytes()[..], header, &[0u8; 16]].concat()
}

/// A safetensors file with `header` as its JSON and `data` after it.
fn with_header(header: &str, data: usize) -> Vec<u8> {
    [&(header.len() as u64).to_le_bytes()[..], header.as_bytes(), &vec![0u8; data]].concat()
}

#[test]
fn safetensors_files() {
    let invalid = |e: &CheckpointError| matches!(e, CheckpointError::InvalidFile { .. });
    let good = safetensors_file();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("7 bytes", good[..7].to_vec()),
        ("a header length of u64::MAX", [&u64::MAX.to_le_bytes()[..], &good[8..]].concat()),
        ("a header length past the file", [&1000u64.to_le_bytes()[..], &good[8..]].concat()),
        ("a header of 200 MB declared", [&(200u64 << 20).to_le_bytes()[..], &good[8..]].concat()),
        ("data cut short", good[..good.len() - 4].to_vec()),
        ("offsets past the data", with_header(r#"{"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,1600]}}"#, 16)),
        (
            "offsets that disagree with the shape",
            with_header(r#"{"x":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#, 16),
        ),
        (
            "a shape whose size overflows",
            with_header(
                r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#,
                16,
            ),
        ),
        ("reversed offsets", with_header(r#"{"x":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]}}"#, 16)),
        (
            "overlapping tensors",
            with_header(
                r#"{"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"y":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}}"#,
                24,
            ),
        ),
        ("an unknown dtype", with_header(r#"{"x":{"dtype":"F33","shape":[2,2],"data_offsets":[0,16]}}"#, 16)),
        ("a header that is not JSON", with_header("{\"x\": [", 16)),
        ("a header nested 100k deep", with_header(&format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)), 0)),
        ("a header that is not UTF-8", [&4u64.to_le_bytes()[..], b"{\xff\xfe}"].concat()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut family: Vec<Case<CheckpointError>> = Vec::new();
    for (i, (name, bytes)) in cases.drain(..).enumerate() {
        let path = dir.path().join(format!("case{i}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        family.push(Case {
            name: name.into(),
            run: Box::new(move || Checkpoint::open(&path).map(drop)),
            expected: invalid,
        });
    }
    for (name, index) in [
        ("an index without weight_map", r#"{"metadata": {}}"#),
        ("an index leaving the directory", r#"{"weight_map": {"x": "../../etc/passwd"}}"#),
        ("an absolute shard path", r#"{"weight_map": {"x": "/etc/passwd"}}"#),
        ("an index naming a missing shard", r#"{"weight_map": {"x": "missing.safetensors"}}"#),
        ("an index that is not JSON", "{\"weight_map\": "),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        family.push(Case {
            name: name.into(),
            run: Box::new(move || Checkpoint::open(dir.path()).map(drop)),
            expected: |e| matches!(e, CheckpointError::InvalidIndex { .. } | CheckpointError::Io { .. }),
        });
    }
    let n = run_family("safetensors files", family);
    drop(dir);
    assert!(n >= 20);
}

//! The `viper` binary on the shipped reference checkpoints: `--json` and `--dump` outputs against
//! the upstream reference, and one clear error line (non-zero exit) for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use viper_checkpoint::{max_errors, Checkpoint};

fn reference(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference").join(name)
}

fn viper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_viper")).args(args).env("RUST_LOG", "error").output().expect("runs")
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    max_errors(a, b).expect("comparable, non-degenerate tensors").1
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Runs the first image case of `name` through the CLI and checks it against reference.json /
/// reference.safetensors.
fn check_case(name: &str) {
    let dir = reference(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let case = &meta["cases"][0];
    let case_name = case["name"].as_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("out.json");
    let image = dir.join(case["image"].as_str().unwrap());
    let result = viper(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        case["question"].as_str().unwrap(),
        "--max-new-tokens",
        "16",
        "--ignore-eos",
        "--json",
        json.to_str().unwrap(),
        "--dump",
        out.path().to_str().unwrap(),
    ]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(got["input_ids"], case["input_ids"]);
    assert_eq!(got["generated_ids"], case["generated_ids"]);
    assert_eq!(got["inputs_embeds_len"], case["inputs_embeds_len"]);
    let want = Checkpoint::open(dir.join("reference.safetensors")).unwrap();
    let (last, _) = want.read_f32(&format!("{case_name}.last_logits")).unwrap();
    assert!(rel_err(&floats(&got["last_logits"]), &last) < 1e-3);

    let dumped = Checkpoint::open(out.path().join("tensors.safetensors")).unwrap();
    for (tensor, tol) in [
        ("pixel_values", 1e-6),
        ("clip_features", 1e-4),
        ("projected_features", 1e-4),
        ("image_features", 1e-4),
        ("inputs_embeds", 1e-4),
    ] {
        let (ours, shape) = dumped.read_f32(tensor).unwrap();
        let key = format!("{case_name}.{tensor}");
        let (theirs, want_shape) = want.read_f32(&key).unwrap();
        assert_eq!(shape, want_shape, "{key}");
        let err = rel_err(&ours, &theirs);
        assert!(err < tol, "{key}: rel err {err}");
    }
}

#[test]
fn generate_matches_upstream_mamba() {
    check_case("mamba-s1");
}

#[test]
fn generate_matches_upstream_jamba() {
    check_case("jamba-s1");
}

/// The CLI fails within a bound, and its last stderr line is one `error: ` line naming `needle`.
fn expect_error(args: &[&str], needle: &str) {
    let out = viper_bounded(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    assert!(line.starts_with("error: ") && line.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_input_is_one_clear_error() {
    let dir = reference("mamba-s1");
    let model = dir.to_str().unwrap();
    let image = dir.join("images/image_97x61.png");
    let image = image.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();

    expect_error(&["generate", "--model", "/nonexistent/viper", "--prompt", "hi"], "not found");

    let broken = tmp.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\n not really").unwrap();
    expect_error(&["generate", "--model", model, "--image", broken.to_str().unwrap(), "--prompt", "hi"], "broken.png");

    expect_error(&["generate", "--model", model, "--prompt", "<image>\nWhat is this?"], "marker");
    expect_error(&["generate", "--model", model, "--image", image, "--prompt", "<image> twice"], "marker");

    // A config with an unknown model_type.
    let odd = tmp.path().join("odd");
    copy_dir(&dir, &odd);
    let config = std::fs::read_to_string(odd.join("config.json")).unwrap().replace("llava_falcon_mamba", "llava_llama");
    std::fs::write(odd.join("config.json"), config).unwrap();
    expect_error(&["generate", "--model", odd.to_str().unwrap(), "--prompt", "hi"], "unknown model_type");

    // A prompt beyond tokenizer_model_max_length, with --strict-context.
    let long = "colour ".repeat(3000);
    expect_error(&["generate", "--model", model, "--prompt", &long, "--strict-context"], "tokenizer_model_max_length");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `--stats` prints one block on stderr and `--json` always carries `"stats"`, consistent with the
/// answer: one crop per tile plus the base image, every prompt position prefilled, decode tokens =
/// generated − 1 (zero when only one token is generated: rates are then null, not a panic).
#[test]
fn stats_in_json_and_on_stderr() {
    let dir = reference("mamba-s1");
    let image = dir.join("images/image_97x61.png");
    for (max_new, decode) in [("1", 0u64), ("5", 4)] {
        let out = tempfile::tempdir().unwrap();
        let json = out.path().join("out.json");
        let result = viper(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            "What is this?",
            "--max-new-tokens",
            max_new,
            "--ignore-eos",
            "--stats",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
        let stderr = String::from_utf8_lossy(&result.stderr);
        for line in ["load", "preprocess", "vision", "prefill", "first token", "decode"] {
            assert!(stderr.contains(line), "no {line:?} line in {stderr}");
        }
        let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let stats = &got["stats"];
        assert_eq!(stats["images"], 1);
        assert!(stats["crops"].as_u64().unwrap() >= 2, "base image + at least one tile: {stats}");
        assert_eq!(stats["prefill_positions"], got["inputs_embeds_len"]);
        assert_eq!(stats["decode_tokens"].as_u64(), Some(decode));
        assert!(stats["load_bytes"].as_u64().unwrap() > 0 && stats["load_seconds"].as_f64().unwrap() > 0.0);
        assert!(stats["ttft_ms"].as_f64().unwrap() >= stats["prefill_ms"].as_f64().unwrap());
        assert!(stats["peak_device_bytes"].is_null(), "the CPU backend reports no device memory");
        assert_eq!(stats["decode_tokens_per_s"].is_null(), decode == 0);
    }
}

/// `viper chat` on mamba-s1 (3 tokens per answer, eos ignored) with `extra` flags, `script` on stdin;
/// its stderr, once it has succeeded.
fn chat(extra: &[&str], script: &str) -> String {
    use std::io::Write as _;
    let dir = reference("mamba-s1");
    let mut child = Command::new(env!("CARGO_BIN_EXE_viper"))
        .args(["chat", "--model", dir.to_str().unwrap(), "--max-new-tokens", "3", "--ignore-eos"])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr).to_string();
    assert!(result.status.success(), "{stderr}");
    stderr
}

/// `viper chat --stats`: each turn encodes only its own image, and the follow-up prefills only its
/// new positions (no system prompt again, so fewer than the first turn with the same image).
#[test]
fn chat_follow_ups_prefill_only_the_new_turn() {
    let dir = reference("mamba-s1");
    let image = dir.join("images/image_97x61.png");
    let script = format!("What is this?\n/image {}\nAnd this?\n\n", image.display());
    let stderr = chat(&["--image", image.to_str().unwrap(), "--stats"], &script);
    let figure = |stage: &str, unit: &str| -> Vec<u64> {
        stderr
            .lines()
            .filter(|l| l.starts_with(stage))
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let at = words.iter().position(|w| *w == unit).unwrap_or_else(|| panic!("no {unit} in {l:?}"));
                words[at - 1].parse().unwrap()
            })
            .collect()
    };
    assert_eq!(figure("preprocess", "image(s)"), [1, 1], "{stderr}");
    let crops = figure("vision", "crop(s)");
    assert!(crops.len() == 2 && crops[0] == crops[1], "{stderr}");
    let prefill = figure("prefill", "position(s)");
    assert!(prefill.len() == 2 && prefill[1] < prefill[0], "{stderr}");
}

/// Runs the CLI, failing the test if it has not exited within `BOUND` (a FIFO must not block it).
fn viper_bounded(args: &[&str]) -> Output {
    const BOUND: std::time::Duration = std::time::Duration::from_secs(120);
    let mut child = Command::new(env!("CARGO_BIN_EXE_viper"))
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    let start = std::time::Instant::now();
    while child.try_wait().expect("waits").is_none() {
        if start.elapsed() > BOUND {
            child.kill().expect("kills");
            panic!("viper {args:?} still running after {BOUND:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("collects")
}

/// Hostile output and input paths: each is refused before any work starts (a missing model is not
/// even noticed), with one error line.
#[test]
fn output_paths_are_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let fifo = tmp.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (file, fifo) = (file.to_str().unwrap(), fifo.to_str().unwrap());
    let missing_parent = format!("{dir}/missing/out.json");
    let under_a_file = format!("{file}/out.json");
    let no_model = ["generate", "--model", "/nonexistent/viper", "--prompt", "hi"];
    for (flag, path, needle) in [
        ("--json", dir, "a directory"),
        ("--json", missing_parent.as_str(), "missing"),
        ("--json", under_a_file.as_str(), "Not a directory"),
        ("--json", fifo, "FIFO"),
        ("--dump", file, "--dump"),
    ] {
        expect_error(&[&no_model[..], &[flag, path]].concat(), needle);
    }
    let dump = tmp.path().join("dump");
    std::fs::create_dir_all(dump.join("tensors.safetensors")).unwrap();
    expect_error(&[&no_model[..], &["--dump", dump.to_str().unwrap()]].concat(), "a directory");
    // An image that is a FIFO or an endless stream fails at once, before the model loads.
    expect_error(&[&no_model[..], &["--image", fifo]].concat(), "FIFO");
    expect_error(&[&no_model[..], &["--image", "/dev/zero"]].concat(), "character device");
}

/// `--json` and `--dump` replace their files whole: a run that fails leaves the old ones untouched,
/// a run that succeeds leaves no temporary file behind.
#[test]
fn outputs_are_written_atomically() {
    let dir = reference("mamba-s1");
    let model = dir.to_str().unwrap();
    let image = dir.join("images/image_84x84.png");
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("out.json");
    let dump = out.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    std::fs::write(&json, "old").unwrap();
    std::fs::write(dump.join("tensors.safetensors"), "old").unwrap();
    let (json_arg, dump_arg) = (json.to_str().unwrap(), dump.to_str().unwrap());
    let args = |prompt: &'static str| {
        let image = image.to_str().unwrap().to_string();
        move |extra: &[&str]| {
            let base = ["generate", "--model", model, "--image", &image, "--prompt", prompt, "--max-new-tokens", "2"];
            viper_bounded(&[&base[..], extra].concat())
        }
    };
    // Fails after loading (two markers for one image): the old outputs stay.
    let failed = args("<image> and <image>")(&["--json", json_arg, "--dump", dump_arg]);
    assert!(!failed.status.success());
    assert_eq!(std::fs::read(&json).unwrap(), b"old");
    assert_eq!(std::fs::read(dump.join("tensors.safetensors")).unwrap(), b"old");
    let ok = args("What is this?")(&["--json", json_arg, "--dump", dump_arg]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(got["generated_ids"].as_array().unwrap().len(), 2);
    Checkpoint::open(dump.join("tensors.safetensors")).unwrap();
    let names = |d: &Path| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
    assert_eq!(names(out.path()).len(), 2, "{:?}", names(out.path()));
    assert_eq!(names(&dump).len(), 1, "{:?}", names(&dump));
}

/// `viper chat --json` keeps one object per turn; a follow-up without an image encodes no image and
/// prefills only its own positions (issue 15 item 4: the answer is kept as ids, not re-encoded text).
#[test]
fn chat_turns_in_json() {
    let image = reference("mamba-s1").join("images/image_97x61.png");
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("chat.json");
    chat(
        &["--json", json.to_str().unwrap()],
        &format!("/image {}\nWhat is this?\nAnd the colours?\n\n", image.display()),
    );
    let turns: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let turns = turns.as_array().unwrap();
    assert_eq!(turns.len(), 2, "{turns:?}");
    assert_eq!(turns[0]["images"], 1);
    assert_eq!(turns[0]["stats"]["images"], 1);
    assert_eq!(turns[1]["images"], 0);
    assert_eq!(turns[1]["stats"]["images"], 0, "the follow-up encoded an image again: {}", turns[1]);
    assert_eq!(turns[1]["generated_ids"].as_array().unwrap().len(), 3);
    let first = turns[0]["stats"]["prefill_positions"].as_u64().unwrap();
    let second = turns[1]["stats"]["prefill_positions"].as_u64().unwrap();
    assert!(second > 0 && second < first, "follow-up prefilled {second} positions, the first turn {first}");
}

/// `viper serve --port 0`: logs the address it listens on, answers a chat completion over HTTP with
/// the ids `viper generate` gives for the same question, and exits cleanly on SIGTERM.
#[test]
fn serve_answers_like_generate_and_stops_on_sigterm() {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    const BOUND: std::time::Duration = std::time::Duration::from_secs(120);
    let dir = reference("mamba-s1");
    let model = dir.to_str().unwrap();
    let question = "What is shown here?";
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("out.json");
    let generated = viper_bounded(&[
        "generate",
        "--model",
        model,
        "--prompt",
        question,
        "--max-new-tokens",
        "5",
        "--ignore-eos",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_viper"))
        .args(["serve", "--model", model, "--port", "0", "--model-name", "tiny"])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    // The address line, read on a thread so that a silent server fails the test instead of hanging it.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addr = match rx.recv_timeout(BOUND) {
        Ok(addr) => addr,
        Err(_) => {
            child.kill().unwrap();
            panic!("viper serve did not report its address within {BOUND:?}");
        }
    };
    let body = serde_json::json!({
        "model": "tiny",
        "messages": [{ "role": "user", "content": question }],
        "max_tokens": 5,
        "ignore_eos": true,
        "return_token_ids": true,
    })
    .to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    let got: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(got["model"], "tiny");
    assert_eq!(got["viper_stats"]["prompt_ids"], want["input_ids"]);
    assert_eq!(got["viper_stats"]["completion_ids"], want["generated_ids"]);
    assert_eq!(got["choices"][0]["message"]["content"], want["text"]);

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > BOUND {
            child.kill().unwrap();
            panic!("viper serve did not stop on SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "viper serve exited with {status}");
}

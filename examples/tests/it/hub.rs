//! The `hub` feature against a local server that speaks the part of the HuggingFace hub's HTTP API
//! hf-hub 0.4 uses: the repository listing (`/api/models/<repo>/revision/<rev>`), file metadata and
//! ranged transfers (`/<repo>/resolve/<rev>/<file>`; weights redirected to a content URL as the hub
//! does for LFS files), and the hub's error statuses with their `x-error-code` header.
//!
//! Cases: a checkpoint by hub id (the CLI's `--json` equals the local directory's), a frozen vision
//! tower fetched from its own repository, an interrupted transfer resumed (`Range: bytes=N-`, the
//! file byte-identical, fewer than two files' worth of bytes served), missing repositories and files
//! as typed errors and as one CLI error line, and progress on stderr.
#![cfg(feature = "hub")]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use viper_examples::hub::{Hub, HubError, HubOptions};

// ---------------------------------------------------------------------------------------------------
// The server.

#[derive(Clone, Default)]
struct FakeRepo {
    files: BTreeMap<String, Arc<Vec<u8>>>,
    /// Listed in the repository info but answered with 404 (a listing out of step with the files).
    listed_missing: Vec<String>,
    /// Every request for the repository answered with this status and `x-error-code`.
    refuse: Option<(u16, &'static str)>,
    /// Files answered with this status.
    file_status: HashMap<String, u16>,
}

#[derive(Clone, Debug)]
struct Logged {
    method: String,
    path: String,
    range: Option<String>,
    status: u16,
    /// Body bytes written.
    sent: usize,
}

#[derive(Default)]
struct State {
    repos: Mutex<HashMap<String, FakeRepo>>,
    log: Mutex<Vec<Logged>>,
    /// Content etag → cut the connection once this many bytes of the file have been sent (once).
    cuts: Mutex<HashMap<String, usize>>,
    /// Connections accepted and not yet logged: a client can read its response before the serving
    /// thread logs it, so [`FakeHub::log`] waits for this to reach 0.
    in_flight: AtomicUsize,
}

struct FakeHub {
    addr: SocketAddr,
    state: Arc<State>,
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn etag(data: &[u8]) -> String {
    format!("{:016x}{:016x}", fnv(data), data.len())
}

fn commit(repo: &str) -> String {
    format!("{:040x}", fnv(repo.as_bytes()) as u128 * 31)
}

/// Weights go through a redirect to a content URL (the hub's LFS files); the rest is served in place.
fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors")
}

impl FakeHub {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                state.in_flight.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = serve(stream, addr, &state);
                    state.in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, state }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn add(&self, id: &str, repo: FakeRepo) {
        self.state.repos.lock().unwrap().insert(id.to_string(), repo);
    }

    /// The next transfer of `repo`'s `file` stops after `after` bytes of the file.
    fn cut(&self, repo: &str, file: &str, after: usize) {
        let data = self.state.repos.lock().unwrap()[repo].files[file].clone();
        self.state.cuts.lock().unwrap().insert(etag(&data), after);
    }

    fn log(&self) -> Vec<Logged> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.state.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.state.log.lock().unwrap().clone()
    }

    fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Where the bytes of `repo`'s `file` are served from.
    fn content_path(&self, repo: &str, file: &str) -> String {
        if is_lfs(file) {
            let data = self.state.repos.lock().unwrap()[repo].files[file].clone();
            format!("/lfs/{}", etag(&data))
        } else {
            format!("/{repo}/resolve/{}/{file}", commit(repo))
        }
    }

    /// The transfers of a file's bytes (hf-hub's `bytes=0-0` metadata probes left out).
    fn transfers(&self, repo: &str, file: &str) -> Vec<Logged> {
        let path = self.content_path(repo, file);
        self.log().into_iter().filter(|l| l.path == path && l.range.as_deref() != Some("bytes=0-0")).collect()
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    /// Bytes of the body to send before cutting the connection.
    cut_at: Option<usize>,
}

impl Response {
    fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Arc::new(Vec::new()), cut_at: None }
    }

    fn header(mut self, name: &str, value: impl ToString) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn json(status: u16, value: serde_json::Value) -> Self {
        let mut r = Self::new(status).header("content-type", "application/json");
        r.body = Arc::new(value.to_string().into_bytes());
        r
    }

    fn error(status: u16, code: &str, message: &str) -> Self {
        Self::json(status, serde_json::json!({ "error": message })).header("x-error-code", code)
    }
}

fn serve(stream: TcpStream, addr: SocketAddr, state: &State) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    let response = route(&path, range.as_deref(), addr, state);
    let head = method == "HEAD";
    // Logged even when the client hangs up mid-response (a client may read an error's head and close):
    // the request reached the hub either way.
    let written = write_response(stream, &response, head);
    let sent = *written.as_ref().unwrap_or(&0);
    state.log.lock().unwrap().push(Logged { method, path, range, status: response.status, sent });
    written.map(|_| ())
}

fn route(path: &str, range: Option<&str>, addr: SocketAddr, state: &State) -> Response {
    let repos = state.repos.lock().unwrap();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "models", owner, name, "revision", _rev] => {
            let id = format!("{owner}/{name}");
            let Some(repo) = repos.get(&id) else {
                return Response::error(404, "RepositoryNotFound", "Repository not found");
            };
            if let Some((status, code)) = repo.refuse {
                return Response::error(status, code, "refused");
            }
            let mut listed: Vec<&String> = repo.files.keys().chain(&repo.listed_missing).collect();
            listed.sort();
            let siblings: Vec<_> = listed.iter().map(|f| serde_json::json!({ "rfilename": f })).collect();
            Response::json(200, serde_json::json!({ "id": id, "sha": commit(&id), "siblings": siblings }))
        }
        [owner, name, "resolve", _rev, file @ ..] => {
            let (id, file) = (format!("{owner}/{name}"), file.join("/"));
            let Some(repo) = repos.get(&id) else {
                return Response::error(404, "RepositoryNotFound", "Repository not found");
            };
            if let Some((status, code)) = repo.refuse {
                return Response::error(status, code, "refused");
            }
            if let Some(&status) = repo.file_status.get(&file) {
                return Response::error(status, "", "server error");
            }
            let Some(data) = repo.files.get(&file) else {
                return Response::error(404, "EntryNotFound", "Entry not found");
            };
            let tag = etag(data);
            if is_lfs(&file) {
                Response::new(302)
                    .header("location", format!("http://{addr}/lfs/{tag}"))
                    .header("x-repo-commit", commit(&id))
                    .header("x-linked-etag", format!("\"{tag}\""))
                    .header("x-linked-size", data.len())
            } else {
                ranged(data.clone(), range, state, &tag)
                    .header("x-repo-commit", commit(&id))
                    .header("etag", format!("\"{tag}\""))
            }
        }
        ["lfs", tag] => {
            let data = repos.values().flat_map(|r| r.files.values()).find(|d| etag(d) == *tag);
            match data {
                Some(data) => ranged(data.clone(), range, state, tag).header("etag", format!("\"{tag}\"")),
                None => Response::error(404, "EntryNotFound", "no such content"),
            }
        }
        _ => Response::error(404, "", "not found"),
    }
}

/// `data`, or the part of it that `Range: bytes=a-[b]` asks for, cut short when a cut is armed.
fn ranged(data: Arc<Vec<u8>>, range: Option<&str>, state: &State, tag: &str) -> Response {
    let len = data.len();
    let bounds = range.and_then(|r| r.strip_prefix("bytes=")).and_then(|r| {
        let (a, b) = r.split_once('-')?;
        let a: usize = a.parse().ok()?;
        let b: usize = if b.is_empty() { len.saturating_sub(1) } else { b.parse::<usize>().ok()?.min(len - 1) };
        Some((a, b))
    });
    let mut response = match bounds {
        None => {
            let mut r = Response::new(200);
            r.body = data;
            r
        }
        Some((a, _)) if a >= len => return Response::new(416).header("content-range", format!("bytes */{len}")),
        Some((a, b)) => {
            let mut r = Response::new(206).header("content-range", format!("bytes {a}-{b}/{len}"));
            r.body = Arc::new(data[a..=b].to_vec());
            r
        }
    };
    response = response.header("accept-ranges", "bytes").header("content-type", "application/octet-stream");
    let start = bounds.map_or(0, |(a, _)| a);
    let probe = bounds.is_some_and(|(a, b)| a == 0 && b == 0);
    if !probe {
        if let Some(after) = state.cuts.lock().unwrap().remove(tag) {
            response.cut_at = Some(after.saturating_sub(start).min(response.body.len()));
        }
    }
    response
}

fn write_response(mut stream: TcpStream, r: &Response, head: bool) -> std::io::Result<usize> {
    let reason = match r.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    };
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", r.status);
    for (name, value) in &r.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", r.body.len()));
    stream.write_all(out.as_bytes())?;
    let mut sent = 0;
    if !head {
        let body = &r.body[..r.cut_at.unwrap_or(r.body.len())];
        stream.write_all(body)?;
        sent = body.len();
    }
    stream.flush()?;
    stream.shutdown(Shutdown::Both)?;
    Ok(sent)
}

// ---------------------------------------------------------------------------------------------------
// The repositories: the reference checkpoint, a copy with a frozen tower, and that tower.

const MAMBA: &str = "viper/mamba-s1";
const FROZEN: &str = "viper/mamba-s1-frozen";
const TOWER: &str = "viper/clip-s1";
/// Where the first transfer of the weights is cut.
const CUT: usize = 400_000;

fn reference() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference/mamba-s1")
}

/// Every file under `dir` by its relative path, but the reference outputs.
fn files_of(dir: &Path) -> BTreeMap<String, Arc<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Arc<Vec<u8>>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                if !rel.starts_with("reference.") {
                    out.insert(rel, Arc::new(std::fs::read(&path).unwrap()));
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The checkpoint as a frozen-tower release: config naming the tower's hub id, weights without it.
fn frozen_checkpoint() -> BTreeMap<String, Arc<Vec<u8>>> {
    let mut files = files_of(&reference());
    files.retain(|f, _| !f.starts_with("vision_tower/") && !f.starts_with("images/"));
    let mut config: serde_json::Value = serde_json::from_slice(&files["config.json"]).unwrap();
    config["mm_vision_tower"] = TOWER.into();
    config["unfreeze_mm_vision_tower"] = false.into();
    files.insert("config.json".into(), Arc::new(serde_json::to_vec_pretty(&config).unwrap()));
    let weights = files["model.safetensors"].clone();
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let kept: Vec<_> = st.tensors().into_iter().filter(|(k, _)| !k.contains(".vision_tower.vision_tower.")).collect();
    assert!(kept.len() < st.len(), "the reference checkpoint stores its tower");
    files.insert("model.safetensors".into(), Arc::new(safetensors::serialize(kept, None).unwrap()));
    files
}

fn fake_hub() -> FakeHub {
    let hub = FakeHub::start();
    hub.add(MAMBA, FakeRepo { files: files_of(&reference()), ..Default::default() });
    hub.add(FROZEN, FakeRepo { files: frozen_checkpoint(), ..Default::default() });
    hub.add(TOWER, FakeRepo { files: files_of(&reference().join("vision_tower")), ..Default::default() });
    hub
}

fn options(hub: &FakeHub, cache: &Path, retries: usize) -> HubOptions {
    HubOptions {
        endpoint: hub.endpoint(),
        cache_dir: cache.join("hub"),
        token: None,
        progress: false,
        retries,
        retry_wait: Duration::from_millis(10),
    }
}

fn fixture(file: &str) -> Vec<u8> {
    std::fs::read(reference().join(file)).unwrap()
}

// ---------------------------------------------------------------------------------------------------
// The CLI.

fn viper(hub: &FakeHub, home: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_viper"));
    cmd.args(args).env("RUST_LOG", "error").env("HF_ENDPOINT", hub.endpoint()).env("HF_HOME", home);
    // ureq takes proxies from the environment and has no NO_PROXY: the server is local.
    for var in ["HF_TOKEN", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        cmd.env_remove(var);
    }
    cmd.output().expect("runs")
}

/// `viper generate --json` on the reference's first image case; the JSON it wrote (less its timings), and
/// its stderr.
fn generate(hub: &FakeHub, home: &Path, model: &str) -> (serde_json::Value, String) {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference().join("reference.json")).unwrap()).unwrap();
    let case = &meta["cases"][0];
    let image = reference().join(case["image"].as_str().unwrap());
    let json = home.join(format!("{}.json", model.replace('/', "_")));
    let out = viper(
        hub,
        home,
        &[
            "generate",
            "--model",
            model,
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            case["question"].as_str().unwrap(),
            "--max-new-tokens",
            "8",
            "--ignore-eos",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{model}: {stderr}");
    let mut got: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // Timings differ from run to run; ids, text and logits must not.
    got.as_object_mut().unwrap().remove("stats").expect("--json carries stats");
    (got, stderr)
}

fn cli_error(hub: &FakeHub, home: &Path, model: &str) -> String {
    let out = viper(hub, home, &["generate", "--model", model, "--prompt", "hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{model} succeeded");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.lines().last().unwrap_or_default().to_string()
}

/// (a) checkpoint by hub id, its weights' transfer cut once and resumed within the run, (b) a frozen
/// tower fetched from its own repository: the same `--json` as from the local directory.
#[test]
fn cli_by_hub_id_matches_the_local_directory() {
    let hub = fake_hub();
    let home = tempfile::tempdir().unwrap();
    let (local, _) = generate(&hub, home.path(), reference().to_str().unwrap());
    assert!(hub.log().is_empty(), "a local directory needs no hub");

    hub.cut(MAMBA, "model.safetensors", CUT);
    let (by_id, stderr) = generate(&hub, home.path(), MAMBA);
    assert_eq!(by_id, local, "{stderr}");
    // Progress on stderr (a pipe here, so lines rather than bars), including the resume.
    let size = fixture("model.safetensors").len();
    assert!(stderr.contains(&format!("{MAMBA}/model.safetensors: transfer interrupted at {CUT} bytes")), "{stderr}");
    assert!(
        stderr.contains(&format!("downloaded {MAMBA}/model.safetensors ({size} bytes, resumed at {CUT})")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("downloaded {MAMBA}/tokenizer.json (")), "{stderr}");
    let ranges: Vec<_> = hub.transfers(MAMBA, "model.safetensors").into_iter().map(|l| l.range).collect();
    assert_eq!(ranges, [Some("bytes=0-".to_string()), Some(format!("bytes={CUT}-"))]);
    // Only checkpoint files: the images listed in the repository are not fetched.
    assert!(!hub.log().iter().any(|l| l.path.contains("images/")), "{:?}", hub.log());
    // hf-hub 0.4 asks for metadata with a one-byte ranged GET, never HEAD.
    assert!(hub.log().iter().all(|l| l.method == "GET"), "{:?}", hub.log());

    hub.clear_log();
    let (frozen, stderr) = generate(&hub, home.path(), FROZEN);
    assert_eq!(frozen, local, "{stderr}");
    assert!(stderr.contains(&format!("downloaded {TOWER}/model.safetensors (")), "{stderr}");
    assert_eq!(hub.transfers(TOWER, "model.safetensors").len(), 1);
}

/// (c) An interrupted transfer, with no retries left, is a `Transfer` error that keeps what arrived;
/// the next call asks for the rest only, and the file is byte-identical.
#[test]
fn interrupted_download_resumes_on_the_next_call() {
    let hub = fake_hub();
    let cache = tempfile::tempdir().unwrap();
    let api = Hub::new(options(&hub, cache.path(), 0)).unwrap();
    hub.cut(MAMBA, "model.safetensors", CUT);
    match api.checkpoint(MAMBA) {
        Err(HubError::Transfer { repo, file, attempts: 1, .. }) => {
            assert_eq!((repo.as_str(), file.as_str()), (MAMBA, "model.safetensors"))
        }
        other => panic!("expected a transfer error, got {other:?}"),
    }
    let parts: Vec<u64> = walk_files(cache.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert_eq!(parts, [CUT as u64], "the partial file keeps what arrived");

    let snapshot = api.checkpoint(MAMBA).unwrap();
    let weights = fixture("model.safetensors");
    let fetched = snapshot.files.iter().find(|f| f.file == "model.safetensors").unwrap();
    let transfer = fetched.transfer.clone().unwrap();
    assert_eq!(
        (transfer.size, transfer.resumed_from, transfer.received),
        (weights.len() as u64, CUT as u64, (weights.len() - CUT) as u64)
    );
    assert_eq!(std::fs::read(&fetched.path).unwrap(), weights, "byte-identical");
    let served = hub.transfers(MAMBA, "model.safetensors");
    let ranges: Vec<_> = served.iter().map(|l| l.range.clone().unwrap_or_default()).collect();
    assert_eq!(ranges, ["bytes=0-".to_string(), format!("bytes={CUT}-")]);
    assert_eq!(served.iter().map(|l| l.sent).sum::<usize>(), weights.len(), "each byte sent once");
    // The snapshot holds the checkpoint's files, byte for byte.
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json", "vision_tower/model.safetensors"] {
        assert_eq!(std::fs::read(snapshot.dir.join(file)).unwrap(), fixture(file), "{file}");
    }
    assert!(!snapshot.dir.join("images").exists());

    // A third call finds everything in the cache: only the listing is asked for.
    hub.clear_log();
    let again = api.checkpoint(MAMBA).unwrap();
    assert!(again.files.iter().all(|f| f.transfer.is_none()));
    assert_eq!(again.dir, snapshot.dir);
    let paths: Vec<_> = hub.log().into_iter().map(|l| l.path).collect();
    assert_eq!(paths, [format!("/api/models/{MAMBA}/revision/main")]);
}

/// (c) Within one call, a retry resumes from the partial file.
#[test]
fn interrupted_download_resumes_within_one_call() {
    let hub = fake_hub();
    let cache = tempfile::tempdir().unwrap();
    let api = Hub::new(options(&hub, cache.path(), 2)).unwrap();
    hub.cut(MAMBA, "model.safetensors", CUT);
    let fetched = api.file(MAMBA, "model.safetensors").unwrap();
    let transfer = fetched.transfer.unwrap();
    assert_eq!((transfer.attempts, transfer.resumed_from), (2, CUT as u64));
    let weights = fixture("model.safetensors");
    assert_eq!(std::fs::read(&fetched.path).unwrap(), weights);
    let served: usize = hub.transfers(MAMBA, "model.safetensors").iter().map(|l| l.sent).sum();
    assert!(served < 2 * weights.len() && served == weights.len(), "{served} bytes served");
}

/// (b) The frozen tower named by a checkpoint's config, at the library level.
#[test]
fn frozen_vision_tower_is_fetched_from_its_repository() {
    let hub = fake_hub();
    let cache = tempfile::tempdir().unwrap();
    let api = Hub::new(options(&hub, cache.path(), 0)).unwrap();
    // The reference stores its (trained) tower: nothing to fetch.
    assert!(api.frozen_vision_tower(&reference()).unwrap().is_none());
    assert!(hub.log().is_empty());

    let checkpoint = api.checkpoint(FROZEN).unwrap();
    let tower = api.frozen_vision_tower(&checkpoint.dir).unwrap().expect("a frozen tower by hub id");
    assert_eq!(tower.repo, TOWER);
    for file in ["config.json", "preprocessor_config.json", "model.safetensors"] {
        assert_eq!(std::fs::read(tower.dir.join(file)).unwrap(), fixture(&format!("vision_tower/{file}")), "{file}");
    }
}

/// (d), (e) Missing repositories and files, refusals and server errors are typed; the CLI prints one
/// error line and exits non-zero.
#[test]
fn missing_repo_and_file_are_typed_errors() {
    let hub = fake_hub();
    let config = Arc::new(fixture("config.json"));
    let mut broken = FakeRepo::default();
    broken.files.insert("config.json".into(), config.clone());
    broken.listed_missing.push("model.safetensors".into());
    hub.add("viper/broken", broken);
    let mut no_config = FakeRepo::default();
    no_config.files.insert("model.safetensors".into(), Arc::new(fixture("model.safetensors")));
    hub.add("viper/no-config", no_config);
    hub.add("viper/private", FakeRepo { refuse: Some((401, "RepositoryNotFound")), ..Default::default() });
    hub.add("viper/gated", FakeRepo { refuse: Some((403, "GatedRepo")), ..Default::default() });
    let mut flaky = FakeRepo::default();
    flaky.files.insert("config.json".into(), config.clone());
    flaky.file_status.insert("config.json".into(), 503);
    hub.add("viper/flaky", flaky);
    let mut orphan: serde_json::Value = serde_json::from_slice(&config).unwrap();
    orphan["mm_vision_tower"] = "viper/no-such-tower".into();
    orphan["unfreeze_mm_vision_tower"] = false.into();
    let mut tower_missing = FakeRepo { files: frozen_checkpoint(), ..Default::default() };
    tower_missing.files.insert("config.json".into(), Arc::new(orphan.to_string().into_bytes()));
    hub.add("viper/tower-missing", tower_missing);

    let cache = tempfile::tempdir().unwrap();
    let api = Hub::new(options(&hub, cache.path(), 1)).unwrap();
    let missing_repo = |r: Result<_, HubError>, want: &str| match r {
        Err(HubError::RepoNotFound { repo, endpoint }) => {
            assert_eq!((repo, endpoint), (want.to_string(), hub.endpoint()))
        }
        other => panic!("{want}: expected RepoNotFound, got {other:?}"),
    };
    let missing_file = |r: Result<_, HubError>, want: (&str, &str)| match r {
        Err(HubError::FileNotFound { repo, file }) => assert_eq!((repo.as_str(), file.as_str()), want),
        other => panic!("{want:?}: expected FileNotFound, got {other:?}"),
    };
    missing_repo(api.checkpoint("viper/missing").map(|_| ()), "viper/missing");
    missing_repo(api.file("viper/missing", "config.json").map(|_| ()), "viper/missing");
    // The hub answers 401 + RepositoryNotFound for a private repository without a token.
    missing_repo(api.checkpoint("viper/private").map(|_| ()), "viper/private");
    missing_file(api.file(MAMBA, "nope.json").map(|_| ()), (MAMBA, "nope.json"));
    missing_file(api.checkpoint("viper/broken").map(|_| ()), ("viper/broken", "model.safetensors"));
    missing_file(api.checkpoint("viper/no-config").map(|_| ()), ("viper/no-config", "config.json"));
    assert!(matches!(api.checkpoint("viper/gated"), Err(HubError::Unauthorized { status: 403, .. })));
    // A server error is retried, then reported with its status.
    hub.clear_log();
    match api.checkpoint("viper/flaky") {
        Err(HubError::Status { repo, file, status: 503 }) => {
            assert_eq!((repo.as_str(), file.as_str()), ("viper/flaky", "config.json"))
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    assert_eq!(hub.log().iter().filter(|l| l.status == 503).count(), 2, "one retry");
    // Nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let nowhere =
        Hub::new(HubOptions { endpoint: format!("http://{closed}"), ..options(&hub, cache.path(), 0) }).unwrap();
    assert!(matches!(nowhere.checkpoint(MAMBA), Err(HubError::Unreachable { attempts: 1, .. })));

    let home = tempfile::tempdir().unwrap();
    let line = cli_error(&hub, home.path(), "viper/missing");
    assert_eq!(
        line,
        format!("error: hub repository `viper/missing` not found at {} (a private one needs HF_TOKEN)", hub.endpoint())
    );
    let line = cli_error(&hub, home.path(), "viper/no-config");
    assert_eq!(line, "error: `config.json` not found in hub repository `viper/no-config`");
    let line = cli_error(&hub, home.path(), "viper/broken");
    assert_eq!(line, "error: `model.safetensors` not found in hub repository `viper/broken`");
    let line = cli_error(&hub, home.path(), "viper/tower-missing");
    assert!(line.starts_with("error: hub repository `viper/no-such-tower` not found"), "{line}");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn only_owner_slash_name_goes_to_the_hub() {
    use viper_examples::hub::is_repo_id;
    for id in
        ["tiiuae/falcon-mamba-7b-instruct", "openai/clip-vit-large-patch14-336", "a/b", "ai21labs/AI21-Jamba-1.5-Mini"]
    {
        assert!(is_repo_id(id), "{id}");
    }
    for path in
        ["/nonexistent/viper", "./viper/x", "../a/b", "viper", "a/b/c", "a/", "/a", ".a/b", "a/..", "a b/c", "~/x"]
    {
        assert!(!is_repo_id(path), "{path}");
    }
}

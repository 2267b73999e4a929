//! Checkpoints by HuggingFace hub id (feature `hub`): the repository's listing, then its weights,
//! configs and templates into the hub cache, pinned to the listed commit, with resumable transfers.
//!
//! The transfers are hf-hub's (0.4, `ureq`): each file goes to `blobs/<etag>.part` and a new attempt
//! asks for `Range: bytes=<part length>-`, so an interrupted download continues where it stopped,
//! within [`HubOptions::retries`] attempts of one call or on the next run. hf-hub's own error type is
//! mapped to [`HubError`] by what happened (repository or file missing, access denied, transfer cut,
//! cache not writable), reading the hub's `x-error-code` header where the status alone is ambiguous.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};

/// The public hub, unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What went wrong fetching from the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The repository does not exist (or is private and no token was given: the hub answers both alike).
    #[error("hub repository `{repo}` not found at {endpoint} (a private one needs HF_TOKEN)")]
    RepoNotFound { repo: String, endpoint: String },
    /// The repository exists but has no such file at the listed commit.
    #[error("`{file}` not found in hub repository `{repo}`")]
    FileNotFound { repo: String, file: String },
    /// The hub refused access (gated or private repository).
    #[error("the hub refused access to `{repo}` (HTTP {status}): set HF_TOKEN or accept the repository's terms")]
    Unauthorized { repo: String, status: u16 },
    /// Another HTTP error status; `file` is empty for the repository listing.
    #[error("hub repository `{repo}`{}: HTTP {status}", of(.file))]
    Status { repo: String, file: String, status: u16 },
    /// The hub could not be reached for the repository listing.
    #[error("cannot reach the hub at {endpoint} for `{repo}` ({attempts} attempt(s)): {source}")]
    Unreachable {
        repo: String,
        endpoint: String,
        attempts: usize,
        #[source]
        source: ApiError,
    },
    /// The transfer of a file failed (connection cut, reset, timed out) on every attempt; what arrived
    /// is kept in the cache and the next attempt resumes from there.
    #[error("downloading `{file}` of hub repository `{repo}` failed after {attempts} attempt(s) (run again to resume): {source}")]
    Transfer {
        repo: String,
        file: String,
        attempts: usize,
        #[source]
        source: ApiError,
    },
    /// The hub's answer lacks what the download needs (headers, JSON), or a partial file is corrupt.
    #[error("unexpected answer from the hub for `{repo}`{}: {source}", of(.file))]
    Protocol {
        repo: String,
        file: String,
        #[source]
        source: ApiError,
    },
    /// The hub cache cannot be written (permissions, disk full).
    #[error("hub cache {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process is downloading the same file into the cache.
    #[error("{} is locked by another download", path.display())]
    Locked { path: PathBuf },
    /// Neither `HF_HOME` nor a home directory tells where the cache goes.
    #[error("no hub cache directory: set HF_HOME")]
    NoCacheDir,
}

/// `, `file`` after the repository's name, nothing for the repository listing.
fn of(file: &str) -> String {
    if file.is_empty() {
        String::new()
    } else {
        format!(", `{file}`")
    }
}

impl HubError {
    /// Worth another attempt: the connection, or the server, failed rather than the request.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transfer { .. } | Self::Unreachable { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Where and how to download.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Base URL of the hub (no trailing slash).
    pub endpoint: String,
    /// The hub cache (`$HF_HOME/hub`), laid out as hf-hub and Python's `huggingface_hub` do.
    pub cache_dir: PathBuf,
    /// Bearer token for private or gated repositories.
    pub token: Option<String>,
    /// Show progress on stderr: a bar per file on a terminal, one line per file otherwise.
    pub progress: bool,
    /// Further attempts after a transient failure (each resumes the partial file).
    pub retries: usize,
    /// Wait before the first further attempt; doubled for each next one.
    pub retry_wait: Duration,
}

impl HubOptions {
    /// `HF_ENDPOINT` (default [`DEFAULT_ENDPOINT`]), `HF_HOME` (cache in `$HF_HOME/hub`, default
    /// `~/.cache/huggingface/hub`), `HF_TOKEN` (default: the `token` file next to the cache), 3 retries.
    pub fn from_env(progress: bool) -> Result<Self, HubError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let cache_dir = match std::env::var_os("HF_HOME").filter(|h| !h.is_empty()) {
            Some(home) => PathBuf::from(home).join("hub"),
            None => {
                let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or(HubError::NoCacheDir)?;
                PathBuf::from(home).join(".cache").join("huggingface").join("hub")
            }
        };
        let token = var("HF_TOKEN").or_else(|| Cache::new(cache_dir.clone()).token());
        Ok(Self { endpoint, cache_dir, token, progress, retries: 3, retry_wait: Duration::from_millis(500) })
    }
}

/// One file of a [`Snapshot`].
#[derive(Clone, Debug)]
pub struct Fetched {
    /// Path in the repository.
    pub file: String,
    /// Path in the cache (a link into `blobs/`).
    pub path: PathBuf,
    /// `None` when the file was already in the cache.
    pub transfer: Option<Transfer>,
}

/// How a file arrived.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// The file's size as the hub reported it.
    pub size: u64,
    /// Where the last attempt started (non-zero: it resumed a partial file).
    pub resumed_from: u64,
    /// Bytes received over all attempts.
    pub received: u64,
    /// Attempts made (1 when nothing failed).
    pub attempts: usize,
}

/// A repository's files at one commit, in the cache.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub repo: String,
    /// The commit the files were fetched at.
    pub commit: String,
    /// The snapshot folder (`<cache>/models--<owner>--<name>/snapshots/<commit>`).
    pub dir: PathBuf,
    pub files: Vec<Fetched>,
}

/// Files a checkpoint needs: weights, configs, tokenizer and chat templates.
pub fn is_checkpoint_file(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".json") || file.ends_with(".jinja")
}

/// A downloader for one hub endpoint and cache.
pub struct Hub {
    api: Api,
    options: HubOptions,
}

impl Hub {
    pub fn new(mut options: HubOptions) -> Result<Self, HubError> {
        options.endpoint = options.endpoint.trim_end_matches('/').to_string();
        std::fs::create_dir_all(&options.cache_dir)
            .map_err(|source| HubError::Cache { path: options.cache_dir.clone(), source })?;
        // Retries are made here (hf-hub's own resume from the stream position after a failed first
        // attempt of a resumed file restarts at 0); progress goes through `Reporter`.
        let api = ApiBuilder::from_cache(Cache::new(options.cache_dir.clone()))
            .with_endpoint(options.endpoint.clone())
            .with_token(options.token.clone())
            .with_progress(false)
            .with_retries(0)
            .build()
            .map_err(|source| HubError::Protocol { repo: String::new(), file: String::new(), source })?;
        Ok(Self { api, options })
    }

    /// [`HubOptions::from_env`].
    pub fn from_env(progress: bool) -> Result<Self, HubError> {
        Self::new(HubOptions::from_env(progress)?)
    }

    pub fn options(&self) -> &HubOptions {
        &self.options
    }

    /// The repository's commit and file list (`GET /api/models/<repo>/revision/main`).
    pub fn info(&self, repo: &str) -> Result<(String, Vec<String>), HubError> {
        let api = self.api.model(repo.to_string());
        let info = self.attempts(|_| {
            api.info().map_err(|e| match self.classify(e, repo, "") {
                HubError::Transfer { repo, source, .. } => {
                    HubError::Unreachable { repo, endpoint: self.options.endpoint.clone(), attempts: 0, source }
                }
                other => other,
            })
        })?;
        Ok((info.sha, info.siblings.into_iter().map(|s| s.rfilename).collect()))
    }

    /// Every checkpoint file of `repo` ([`is_checkpoint_file`]) at its current commit; files already
    /// in the cache at that commit are not fetched again.
    pub fn checkpoint(&self, repo: &str) -> Result<Snapshot, HubError> {
        let (commit, listed) = self.info(repo)?;
        if !listed.iter().any(|f| f == "config.json") {
            return Err(HubError::FileNotFound { repo: repo.to_string(), file: "config.json".into() });
        }
        let wanted: Vec<&String> = listed.iter().filter(|f| is_checkpoint_file(f)).collect();
        let mut files = Vec::with_capacity(wanted.len());
        for file in wanted {
            files.push(self.fetch(repo, &commit, file)?);
        }
        // `refs/main`, as a download by branch would leave it, for other readers of the cache.
        let cache = Cache::new(self.options.cache_dir.clone()).model(repo.to_string());
        cache.create_ref(&commit).map_err(|source| HubError::Cache { path: self.options.cache_dir.clone(), source })?;
        let config = files.iter().find(|f| f.file == "config.json").map(|f| f.path.clone());
        let dir =
            config.and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| self.snapshot_dir(repo, &commit));
        Ok(Snapshot { repo: repo.to_string(), commit, dir, files })
    }

    /// One file of `repo` at its current commit.
    pub fn file(&self, repo: &str, file: &str) -> Result<Fetched, HubError> {
        let (commit, _) = self.info(repo)?;
        self.fetch(repo, &commit, file)
    }

    /// The CLIP tower named by `mm_vision_tower` in `checkpoint/config.json`, when the tower is frozen
    /// (`unfreeze_mm_vision_tower` false, so its weights are not in the checkpoint), its name is a hub
    /// id and no folder of that name is in the checkpoint. `None` otherwise, or when the config cannot
    /// be read (loading the checkpoint reports that).
    pub fn frozen_vision_tower(&self, checkpoint: &Path) -> Result<Option<Snapshot>, HubError> {
        match frozen_tower_id(checkpoint) {
            Some(id) => self.checkpoint(&id).map(Some),
            None => Ok(None),
        }
    }

    fn snapshot_dir(&self, repo: &str, commit: &str) -> PathBuf {
        let folder = Repo::new(repo.to_string(), RepoType::Model).folder_name();
        self.options.cache_dir.join(folder).join("snapshots").join(commit)
    }

    /// Downloads `file` at `commit` unless the snapshot already holds it.
    fn fetch(&self, repo: &str, commit: &str, file: &str) -> Result<Fetched, HubError> {
        let cached = self.snapshot_dir(repo, commit).join(file);
        if cached.is_file() {
            return Ok(Fetched { file: file.to_string(), path: cached, transfer: None });
        }
        let api = self.api.repo(Repo::with_revision(repo.to_string(), RepoType::Model, commit.to_string()));
        let label = format!("{repo}/{file}");
        let mut transfer = Transfer::default();
        let mut position = 0;
        let path = self.attempts(|attempt| {
            transfer.attempts = attempt;
            let reporter = Reporter::new(&label, self.options.progress, &mut transfer, &mut position);
            api.download_with_progress(file, reporter).map_err(|e| {
                let err = self.classify(e, repo, file);
                if self.options.progress && err.is_transient() {
                    eprintln!("{label}: transfer interrupted at {position} bytes: {err}");
                }
                err
            })
        })?;
        if self.options.progress && !std::io::stderr().is_terminal() {
            let resumed = match transfer.resumed_from {
                0 => String::new(),
                n => format!(", resumed at {n}"),
            };
            eprintln!("downloaded {label} ({} bytes{resumed})", transfer.size);
        }
        Ok(Fetched { file: file.to_string(), path, transfer: Some(transfer) })
    }

    /// Runs `op` (given the attempt number, from 1) until it succeeds, fails for good, or the retries
    /// are spent; the last error carries the number of attempts.
    fn attempts<T>(&self, mut op: impl FnMut(usize) -> Result<T, HubError>) -> Result<T, HubError> {
        let mut attempt = 1;
        loop {
            match op(attempt) {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() && attempt <= self.options.retries => {
                    std::thread::sleep(self.options.retry_wait * 2u32.saturating_pow(attempt as u32 - 1));
                    attempt += 1;
                }
                Err(mut e) => {
                    if let HubError::Transfer { attempts, .. } | HubError::Unreachable { attempts, .. } = &mut e {
                        *attempts = attempt;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Maps hf-hub's error for `file` of `repo` (`file` empty: the repository listing).
    fn classify(&self, e: ApiError, repo: &str, file: &str) -> HubError {
        let (repo_s, file_s) = (repo.to_string(), file.to_string());
        match e {
            ApiError::RequestError(boxed) => match *boxed {
                ureq::Error::Status(status, response) => {
                    let code = response.header("x-error-code").unwrap_or_default();
                    let listing = file.is_empty();
                    if code == "RepositoryNotFound" || (listing && status == 404) {
                        HubError::RepoNotFound { repo: repo_s, endpoint: self.options.endpoint.clone() }
                    } else if code == "EntryNotFound" || status == 404 {
                        HubError::FileNotFound { repo: repo_s, file: file_s }
                    } else if matches!(status, 401 | 403) || code == "GatedRepo" {
                        HubError::Unauthorized { repo: repo_s, status }
                    } else {
                        HubError::Status { repo: repo_s, file: file_s, status }
                    }
                }
                transport @ ureq::Error::Transport(_) => {
                    HubError::Transfer { repo: repo_s, file: file_s, attempts: 0, source: Box::new(transport).into() }
                }
            },
            ApiError::IoError(io) if is_cache_error(&io) => {
                HubError::Cache { path: self.options.cache_dir.clone(), source: io }
            }
            source @ ApiError::IoError(_) if !file.is_empty() => {
                HubError::Transfer { repo: repo_s, file: file_s, attempts: 0, source }
            }
            ApiError::LockAcquisition(path) => HubError::Locked { path },
            ApiError::TooManyRetries(inner) => self.classify(*inner, repo, file),
            source => HubError::Protocol { repo: repo_s, file: file_s, source },
        }
    }
}

/// The hub id of a frozen vision tower that `checkpoint` does not hold ([`Hub::frozen_vision_tower`]).
pub fn frozen_tower_id(checkpoint: &Path) -> Option<String> {
    let text = viper_io::read_capped_to_string(&checkpoint.join("config.json"), viper_io::MAX_CONFIG_BYTES).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let frozen = !config["unfreeze_mm_vision_tower"].as_bool().unwrap_or(false);
    let name = config["mm_vision_tower"].as_str()?;
    (frozen && is_repo_id(name) && !checkpoint.join(name).exists()).then(|| name.to_string())
}

/// Whether `name` has the hub's `owner/name` shape (one `/`, each side of `[A-Za-z0-9._-]`, not starting
/// with `.` or `-`), so that a path such as `/data/viper` or `./viper` is never sent to the hub.
pub fn is_repo_id(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['.', '-'])
            && !p.contains("..")
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    matches!(name.split_once('/'), Some((owner, repo)) if part(owner) && part(repo) && !repo.contains('/'))
}

/// The local side of a failed write or rename, as opposed to a cut connection.
fn is_cache_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        PermissionDenied
            | ReadOnlyFilesystem
            | StorageFull
            | QuotaExceeded
            | NotFound
            | AlreadyExists
            | IsADirectory
            | NotADirectory
            | DirectoryNotEmpty
            | FileTooLarge
    )
}

/// hf-hub's progress hooks: a bar on a terminal, and the transfer's figures for [`Transfer`].
/// hf-hub calls `init` (twice per attempt), then `update` with the offset the attempt starts at,
/// then `update` with each chunk read, then `finish` on success.
struct Reporter<'a> {
    label: &'a str,
    bar: Option<ProgressBar>,
    transfer: &'a mut Transfer,
    /// Bytes of the file on disk so far.
    position: &'a mut u64,
    offset_next: bool,
}

impl<'a> Reporter<'a> {
    fn new(label: &'a str, progress: bool, transfer: &'a mut Transfer, position: &'a mut u64) -> Self {
        let bar = (progress && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} ({eta})")
                    .expect("static template"),
            );
            bar.set_message(label.to_string());
            bar
        });
        Self { label, bar, transfer, position, offset_next: false }
    }
}

impl hf_hub::api::Progress for Reporter<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.transfer.size = size as u64;
        self.offset_next = true;
        if let Some(bar) = &self.bar {
            bar.set_length(size as u64);
            bar.set_position(0);
        }
    }

    fn update(&mut self, size: usize) {
        if std::mem::take(&mut self.offset_next) {
            self.transfer.resumed_from = size as u64;
            *self.position = size as u64;
        } else {
            self.transfer.received += size as u64;
            *self.position += size as u64;
        }
        if let Some(bar) = &self.bar {
            bar.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(format!("{} done", self.label));
        }
    }
}

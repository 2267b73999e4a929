//! Memory-mapped safetensors checkpoints, loaded into Burn tensors one at a time.
//!
//! A [`Checkpoint`] is a single `model.safetensors`, a sharded set described by
//! `model.safetensors.index.json`, or any list of safetensors files. Every file is memory-mapped and its
//! header validated up front (offsets, sizes); tensor bytes are read only when a tensor is requested and
//! converted on the host to the float type the caller asks for, so loading never holds more than the
//! mapped file plus one converted tensor.
//!
//! [`Weights`] is a view of the checkpoint under a key prefix (`backbone.layers.3.mixer.`), which lets
//! model code read like the checkpoint's key tree:
//!
//! ```no_run
//! # use burn::backend::NdArray;
//! # fn f() -> Result<(), viper_checkpoint::CheckpointError> {
//! let ckpt = viper_checkpoint::Checkpoint::open("path/to/checkpoint")?;
//! let w = ckpt.weights(Default::default());
//! let device = Default::default();
//! let a_log = w.pp("backbone.layers.0.mixer").tensor::<NdArray, 2>("A_log", [8192, 16], &device)?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType, TensorData};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

/// Name of the index file of a sharded HuggingFace checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of a single-file HuggingFace checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Errors raised while opening a checkpoint or reading tensors from it.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not a regular file (a FIFO, a device, a directory) or is beyond its size cap; it was
    /// not read.
    #[error(transparent)]
    File(viper_io::FileError),
    /// A safetensors file is corrupt: truncated, bad header, offsets that do not match the data.
    #[error("{path} is not a valid safetensors file: {reason}")]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `model.safetensors.index.json` is malformed or names missing shards.
    #[error("invalid checkpoint index {path}: {reason}")]
    InvalidIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A directory holds no safetensors files.
    #[error("no safetensors weights found in {0} (expected {SINGLE_FILE}, {INDEX_FILE} or *.safetensors)")]
    NoWeights(PathBuf),
    /// A tensor the model needs is absent.
    #[error("tensor `{key}` is missing from the checkpoint{hint}")]
    MissingTensor {
        /// The full key.
        key: String,
        /// Keys with a similar ending, to help spot a prefix mismatch.
        hint: String,
    },
    /// A tensor has a different shape from what the configuration implies.
    #[error("tensor `{key}` has shape {found:?} in the checkpoint but the config implies {expected:?}")]
    ShapeMismatch {
        /// The full key.
        key: String,
        /// The shape derived from config.json.
        expected: Vec<usize>,
        /// The shape stored in the checkpoint.
        found: Vec<usize>,
    },
    /// A tensor is stored with an element type that cannot be used as model weights.
    #[error("tensor `{key}` is stored as {dtype}, which cannot be read as this kind of tensor")]
    UnsupportedDtype {
        /// The full key.
        key: String,
        /// The stored dtype.
        dtype: String,
    },
    /// The same key appears in two shards.
    #[error("tensor `{key}` appears in both {first} and {second}")]
    DuplicateKey {
        /// The key.
        key: String,
        /// The first file holding it.
        first: PathBuf,
        /// The second file holding it.
        second: PathBuf,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, CheckpointError>;

impl From<viper_io::FileError> for CheckpointError {
    fn from(e: viper_io::FileError) -> Self {
        match e {
            viper_io::FileError::Io { path, source } => CheckpointError::Io { path, source },
            other => CheckpointError::File(other),
        }
    }
}

/// Element type and shape of a stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Stored element type.
    pub dtype: Dtype,
    /// Stored shape.
    pub shape: Vec<usize>,
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

/// An opened checkpoint: one or more memory-mapped safetensors files.
pub struct Checkpoint {
    shards: Vec<Shard>,
    /// key → shard index
    keys: HashMap<String, usize>,
    /// keys handed out so far, to report unused tensors after loading
    used: Mutex<BTreeSet<String>>,
    /// where loading spends its time, for [`Checkpoint::load_times`]
    times: Mutex<LoadTimes>,
    /// bytes handed to the backend so far, for a caller's progress display
    progress: Option<LoadProgress>,
}

/// A shared counter of the bytes loaded so far and of the bytes to load, which a caller (a progress bar
/// on another thread) polls while [`Weights::tensor`] advances it. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct LoadProgress(std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>);

impl LoadProgress {
    /// Bytes read and handed to the backend so far.
    pub fn loaded(&self) -> u64 {
        self.0[0].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of every tensor in the checkpoints attached so far (0 until one is attached).
    pub fn total(&self) -> u64 {
        self.0[1].load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add_loaded(&self, bytes: u64) {
        self.0[0].fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn add_total(&self, bytes: u64) {
        self.0[1].fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where the tensors read so far spent their time: reading the mapped file and converting the elements
/// (page faults included), and handing the data to the backend (`Tensor::from_data`: the copy to the
/// device on GPU backends).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadTimes {
    /// Reading and converting, seconds.
    pub read_s: f64,
    /// `Tensor::from_data`, seconds.
    pub upload_s: f64,
    /// Bytes read from the files.
    pub bytes: u64,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("files", &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>())
            .field("tensors", &self.keys.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens a checkpoint from a directory (sharded index, `model.safetensors`, or every
    /// `*.safetensors` file in it) or from a single safetensors file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_dir() {
            return Self::from_files(&[path.to_path_buf()]);
        }
        // `exists`, not `is_file`: a FIFO or directory under these names is an error, not skipped.
        let index = path.join(INDEX_FILE);
        if index.exists() {
            return Self::from_index(&index);
        }
        let single = path.join(SINGLE_FILE);
        if single.exists() {
            return Self::from_files(&[single]);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(CheckpointError::NoWeights(path.to_path_buf()));
        }
        Self::from_files(&files)
    }

    /// Opens the shards listed in a `model.safetensors.index.json`.
    pub fn from_index(index: &Path) -> Result<Self> {
        let bad = |reason: String| CheckpointError::InvalidIndex { path: index.to_path_buf(), reason };
        let text = viper_io::read_capped_to_string(index, viper_io::MAX_CONFIG_BYTES)?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map =
            json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no `weight_map` object".into()))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files = BTreeSet::new();
        for (key, file) in map {
            let file = file.as_str().ok_or_else(|| bad(format!("`{key}` maps to a non-string")))?;
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(bad(format!("shard name `{file}` leaves the checkpoint directory")));
            }
            files.insert(dir.join(file));
        }
        let files: Vec<PathBuf> = files.into_iter().collect();
        let ckpt = Self::from_files(&files)?;
        for (key, file) in map {
            let shard = ckpt.keys.get(key).map(|&i| &ckpt.shards[i].path);
            let listed = dir.join(file.as_str().unwrap_or_default());
            if shard != Some(&listed) {
                return Err(bad(format!("`{key}` is listed in {} but not stored there", listed.display())));
            }
        }
        Ok(ckpt)
    }

    /// Opens and validates the given safetensors files as one checkpoint.
    pub fn from_files(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut keys = HashMap::new();
        for path in files {
            let shard = Shard::open(path)?;
            let index = shards.len();
            for key in shard.metadata.tensors().into_keys() {
                if let Some(prev) = keys.insert(key.clone(), index) {
                    let shards: &Vec<Shard> = &shards;
                    return Err(CheckpointError::DuplicateKey {
                        key,
                        first: shards[prev].path.clone(),
                        second: path.clone(),
                    });
                }
            }
            shards.push(shard);
        }
        log::debug!("opened {} safetensors file(s) with {} tensors", shards.len(), keys.len());
        Ok(Self { shards, keys, used: Mutex::new(BTreeSet::new()), times: Mutex::default(), progress: None })
    }

    /// All tensor keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    /// Whether the checkpoint stores `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Stored dtype and shape of `key`.
    pub fn meta(&self, key: &str) -> Option<TensorMeta> {
        let shard = &self.shards[*self.keys.get(key)?];
        let info = shard.metadata.info(key)?;
        Some(TensorMeta { dtype: info.dtype, shape: info.shape.clone() })
    }

    /// The prefix (possibly empty) under which `suffix` is stored, if exactly one key ends with it.
    ///
    /// Used to find where a sub-model lives (`backbone.` in a FalconMamba checkpoint, `` in a bare one).
    pub fn prefix_of(&self, suffix: &str) -> Option<String> {
        let mut found =
            self.keys.keys().filter_map(|k| k.strip_suffix(suffix)).filter(|p| p.is_empty() || p.ends_with('.'));
        let first = found.next()?;
        found.next().is_none().then(|| first.to_string())
    }

    /// Reads a float tensor (F64/F32/F16/BF16) to host f32 values and its shape.
    pub fn read_f32(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (info, bytes) = self.bytes(key).ok_or_else(|| self.missing(key))?;
        Ok((to_f32s(key, info.dtype, bytes)?, info.shape.clone()))
    }

    /// Reads an integer tensor (I64/I32/U32/I16/U16/I8/U8) to host i64 values and its shape.
    pub fn read_i64(&self, key: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let (info, bytes) = self.bytes(key).ok_or_else(|| self.missing(key))?;
        let v: Vec<i64> = match info.dtype {
            Dtype::I64 => bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(),
            Dtype::I32 => {
                bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")).into()).collect()
            }
            Dtype::U32 => {
                bytes.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")).into()).collect()
            }
            Dtype::I16 => bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]).into()).collect(),
            Dtype::U16 => bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]).into()).collect(),
            Dtype::I8 => bytes.iter().map(|&b| (b as i8).into()).collect(),
            Dtype::U8 => bytes.iter().map(|&b| b.into()).collect(),
            other => {
                return Err(CheckpointError::UnsupportedDtype { key: key.to_string(), dtype: format!("{other:?}") })
            }
        };
        Ok((v, info.shape.clone()))
    }

    /// A view of the whole checkpoint that converts floats as `options` says.
    pub fn weights(&self, options: LoadOptions) -> Weights<'_> {
        Weights { ckpt: self, prefix: String::new(), options }
    }

    /// Reports the bytes of every tensor read from now on to `progress`, and adds this checkpoint's
    /// stored bytes to its total.
    pub fn with_progress(mut self, progress: LoadProgress) -> Self {
        progress.add_total(self.stored_bytes());
        self.progress = Some(progress);
        self
    }

    /// Bytes of every tensor stored in the checkpoint.
    pub fn stored_bytes(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.metadata.tensors().into_values())
            .map(|info| (info.data_offsets.1 - info.data_offsets.0) as u64)
            .sum()
    }

    /// The time spent so far reading tensors and handing them to the backend.
    pub fn load_times(&self) -> LoadTimes {
        *self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys never read through a [`Weights`] view, optionally ignoring those matching `ignore`.
    pub fn unused_keys(&self, ignore: impl Fn(&str) -> bool) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        self.keys().into_iter().filter(|k| !used.contains(*k) && !ignore(k)).map(String::from).collect()
    }

    fn bytes(&self, key: &str) -> Option<(&TensorMetaRef, &[u8])> {
        let shard = &self.shards[*self.keys.get(key)?];
        let info = shard.metadata.info(key)?;
        let (s, e) = info.data_offsets;
        // Offsets were validated against the file length when the shard was opened.
        let bytes = &shard.mmap[shard.data_start + s..shard.data_start + e];
        self.used.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string());
        Some((info, bytes))
    }

    /// Drops the mapped pages of `key` from the process's resident set once it has been converted,
    /// so loading a checkpoint keeps about one copy of the weights resident, not two.
    fn release(&self, key: &str) {
        #[cfg(unix)]
        if let Some((shard, info)) =
            self.keys.get(key).map(|&i| &self.shards[i]).and_then(|s| Some((s, s.metadata.info(key)?)))
        {
            let page = 4096;
            let start = (shard.data_start + info.data_offsets.0).next_multiple_of(page);
            let end = (shard.data_start + info.data_offsets.1) / page * page;
            if end > start {
                // SAFETY: a read-only shared file mapping re-reads dropped pages from the file on the next
                // access, so no borrow can observe different bytes; only whole pages of this tensor are hit.
                let dropped = unsafe {
                    shard.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
                };
                if let Err(e) = dropped {
                    log::debug!("madvise(DONTNEED) on `{key}` failed: {e}");
                }
            }
        }
    }

    fn missing(&self, key: &str) -> CheckpointError {
        let tail = key.rsplit('.').take(2).collect::<Vec<_>>();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join(".");
        let mut similar: Vec<&str> = self.keys.keys().filter(|k| k.ends_with(&tail)).map(String::as_str).collect();
        similar.sort_unstable();
        similar.truncate(3);
        let hint = if similar.is_empty() { String::new() } else { format!(" (similar keys: {})", similar.join(", ")) };
        CheckpointError::MissingTensor { key: key.to_string(), hint }
    }
}

type TensorMetaRef = safetensors::tensor::TensorInfo;

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
        // A regular file only, opened without blocking: a FIFO named `*.safetensors` is an error, not a hang.
        let (file, _) = viper_io::open_regular(path)?;
        // SAFETY: the map is read-only; a checkpoint modified while loaded is the caller's problem,
        // and every read is bounds-checked against offsets validated below.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (n, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| CheckpointError::InvalidFile { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(Self { path: path.to_path_buf(), mmap, data_start: 8 + n, metadata })
    }
}

/// How stored floats are converted when loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Float type of the loaded tensors; `None` uses the backend's default float type.
    pub dtype: Option<FloatDType>,
}

/// A view of a [`Checkpoint`] under a key prefix.
#[derive(Clone)]
pub struct Weights<'a> {
    ckpt: &'a Checkpoint,
    prefix: String,
    options: LoadOptions,
}

impl<'a> Weights<'a> {
    /// The view under `self.prefix + name + "."` (push a path segment).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = format!("{}{name}.", self.prefix);
        Self { ckpt: self.ckpt, prefix, options: self.options }
    }

    /// A view at an absolute prefix (`""` for the root, otherwise ending with `.`).
    pub fn at(&self, prefix: &str) -> Self {
        Self { ckpt: self.ckpt, prefix: prefix.to_string(), options: self.options }
    }

    /// The same view with a different float conversion.
    pub fn with_options(&self, options: LoadOptions) -> Self {
        Self { options, ..self.clone() }
    }

    /// The full key of `name` in this view.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The prefix of this view (ends with `.` unless empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlying checkpoint.
    pub fn checkpoint(&self) -> &'a Checkpoint {
        self.ckpt
    }

    /// Whether `name` exists under this view.
    pub fn contains(&self, name: &str) -> bool {
        self.ckpt.contains(&self.key(name))
    }

    /// Stored shape of `name`, or a missing-tensor error.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let key = self.key(name);
        self.ckpt.meta(&key).map(|m| m.shape).ok_or_else(|| self.ckpt.missing(&key))
    }

    /// Reads `name`, checks its shape and returns it as a float tensor on `device`.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let key = self.key(name);
        let (info, bytes) = self.ckpt.bytes(&key).ok_or_else(|| self.ckpt.missing(&key))?;
        if info.shape != shape {
            return Err(CheckpointError::ShapeMismatch { key, expected: shape.to_vec(), found: info.shape.clone() });
        }
        let target = self.options.dtype.map(DType::from).unwrap_or_else(|| {
            // The default float dtype of the device's policy, read off a scalar tensor.
            Tensor::<B, 1>::zeros([1], device).dtype()
        });
        let start = std::time::Instant::now();
        let data = convert(&key, info.dtype, bytes, shape.to_vec(), target)?;
        self.ckpt.release(&key);
        let read = start.elapsed();
        let tensor = Tensor::from_data(data, (device, target));
        let mut times = self.ckpt.times.lock().unwrap_or_else(|e| e.into_inner());
        times.read_s += read.as_secs_f64();
        times.upload_s += (start.elapsed() - read).as_secs_f64();
        times.bytes += bytes.len() as u64;
        if let Some(progress) = &self.ckpt.progress {
            progress.add_loaded(bytes.len() as u64);
        }
        Ok(tensor)
    }

    /// A causal LM's output head `{name}.weight` (`[vocab, hidden]`) when stored; otherwise, when
    /// `tied` (transformers' `tie_word_embeddings`), the embedding matrix itself. Absent and untied is
    /// a missing-tensor error naming the key.
    pub fn lm_head<B: Backend>(&self, name: &str, embeddings: &Tensor<B, 2>, tied: bool) -> Result<Linear<B>> {
        let [vocab, hidden] = embeddings.dims();
        if self.contains(&format!("{name}.weight")) || !tied {
            return self.linear(name, hidden, vocab, false, &embeddings.device());
        }
        Ok(Linear { weight: Param::from_tensor(embeddings.clone().transpose()), bias: None })
    }

    /// Reads a PyTorch `nn.Linear` (`{name}.weight` of shape `[d_out, d_in]`, optional `{name}.bias`).
    ///
    /// The weight is kept in PyTorch's layout and used transposed, as Burn's `LinearLayout::Col` does.
    pub fn linear<B: Backend>(
        &self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        let w = self.pp(name);
        let weight = w.tensor::<B, 2>("weight", [d_out, d_in], device)?.transpose();
        let bias = if bias { Some(Param::from_tensor(w.tensor::<B, 1>("bias", [d_out], device)?)) } else { None };
        Ok(Linear { weight: Param::from_tensor(weight), bias })
    }
}

/// The fidelity metric of viper's tests: `(max |ours − reference|, that divided by max |reference|)`.
///
/// Returns `None` when the lengths differ, the reference is all zeros, or a value is not finite, so a
/// degenerate comparison cannot pass by accident.
pub fn max_errors(ours: &[f32], reference: &[f32]) -> Option<(f32, f32)> {
    if ours.len() != reference.len() {
        return None;
    }
    let abs =
        ours.iter()
            .zip(reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) });
    let scale = reference.iter().map(|b| b.abs()).fold(0f32, f32::max);
    (abs.is_finite() && scale > 0.0).then(|| (abs, abs / scale))
}

/// Decodes stored little-endian floats to f32.
fn to_f32s(key: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        other => return Err(CheckpointError::UnsupportedDtype { key: key.to_string(), dtype: format!("{other:?}") }),
    })
}

/// Converts stored little-endian bytes into `TensorData` of the `target` float type.
fn convert(key: &str, dtype: Dtype, bytes: &[u8], shape: Vec<usize>, target: DType) -> Result<TensorData> {
    let halves = |b: &[u8]| [b[0], b[1]];
    Ok(match (dtype, target) {
        // Same type on both sides: no rounding through f32.
        (Dtype::BF16, DType::BF16) => {
            TensorData::new(bytes.chunks_exact(2).map(|b| bf16::from_le_bytes(halves(b))).collect(), shape)
        }
        (Dtype::F16, DType::F16) => {
            TensorData::new(bytes.chunks_exact(2).map(|b| f16::from_le_bytes(halves(b))).collect(), shape)
        }
        (_, DType::BF16) => {
            TensorData::new(to_f32s(key, dtype, bytes)?.into_iter().map(bf16::from_f32).collect(), shape)
        }
        (_, DType::F16) => TensorData::new(to_f32s(key, dtype, bytes)?.into_iter().map(f16::from_f32).collect(), shape),
        _ => TensorData::new(to_f32s(key, dtype, bytes)?, shape),
    })
}

#[cfg(test)]
mod tests;

//! `ViperModel`: CLIP tower → projector → spatial_unpad merge → splice into the prompt → language
//! model (docs/spec.md §2, §4.3, §8.1), for both families.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use viper_chat_template::IMAGE_TOKEN_INDEX;
use viper_checkpoint::{Checkpoint, LoadOptions, LoadProgress};
use viper_moe::{JambaCache, JambaForCausalLM};
use viper_processor::{ProcessedImage, Processor};
use viper_ssm::SsmBackend;
use viper_vision::{
    spatial_unpad_merge, vision_model_prefix, ClipVisionConfig, ClipVisionTower, FeatureSelect, MmProjector,
    SelectFeature,
};

use crate::config::{LanguageConfig, ViperConfig};
use crate::error::{ModelError, Result};
use crate::falcon_mamba::{FalconMambaCache, FalconMambaForCausalLM};
use crate::lm::{LanguageModel, Logits};
use crate::stats::LoadStats;

/// The language model of a Viper checkpoint.
#[derive(Module, Debug)]
pub enum Language<B: Backend> {
    /// Viper-Mamba: FalconMamba.
    FalconMamba(FalconMambaForCausalLM<B>),
    /// Viper-Jamba: Jamba.
    Jamba(JambaForCausalLM<B>),
}

/// The cache of either family.
#[derive(Debug, Clone)]
pub enum ViperCache<B: Backend> {
    /// Per-layer Mamba state.
    FalconMamba(FalconMambaCache<B>),
    /// KV + Mamba state.
    Jamba(JambaCache<B>),
}

impl<B: Backend> ViperCache<B> {
    /// Elements the cache's tensors hold (× the dtype's size: its bytes).
    pub fn num_elements(&self) -> usize {
        match self {
            ViperCache::FalconMamba(c) => c.num_elements(),
            ViperCache::Jamba(c) => c.num_elements(),
        }
    }

    /// Whether caches of this family stack into one batch ([`cat`](Self::cat)): FalconMamba's do;
    /// Jamba's KV caches of different lengths would need a padding mask, so they do not.
    pub fn batches(&self) -> bool {
        matches!(self, ViperCache::FalconMamba(_))
    }

    /// FalconMamba caches of separate sequences as one batch, in order, for one decode step over all
    /// of them; `None` for an empty list or a Jamba cache (see [`batches`](Self::batches)).
    pub fn cat(caches: Vec<Self>) -> Option<Self> {
        let mut parts = Vec::with_capacity(caches.len());
        for cache in caches {
            match cache {
                ViperCache::FalconMamba(c) => parts.push(c),
                ViperCache::Jamba(_) => return None,
            }
        }
        (!parts.is_empty()).then(|| ViperCache::FalconMamba(FalconMambaCache::cat(parts)))
    }

    /// The inverse of [`cat`](Self::cat): consecutive batches of `sizes` sequences.
    pub fn split(self, sizes: &[usize]) -> Vec<Self> {
        match self {
            ViperCache::FalconMamba(c) => c.split(sizes).into_iter().map(ViperCache::FalconMamba).collect(),
            ViperCache::Jamba(c) if sizes.len() == 1 => vec![ViperCache::Jamba(c)],
            ViperCache::Jamba(_) => panic!("Jamba caches are not split: they are never stacked"),
        }
    }
}

/// CLIP tower, projector and `image_newline`.
#[derive(Module, Debug)]
pub struct VisionSide<B: Backend> {
    /// `…vision_tower.vision_tower.vision_model.*` (or a separate CLIP checkpoint).
    pub vision_tower: ClipVisionTower<B>,
    /// `…mm_projector.*`.
    pub mm_projector: MmProjector<B>,
    /// `…image_newline`, `[H]`.
    pub image_newline: Param<Tensor<B, 1>>,
}

/// Where the weights come from and in which float type they run.
#[derive(Debug, Clone, Default)]
pub struct ViperLoadOptions {
    /// Float type of the weights on the device (`None`: the backend's default; NdArray needs f32).
    pub dtype: Option<FloatDType>,
    /// A CLIP checkpoint (directory or file) for towers that are not stored in the Viper checkpoint
    /// (`unfreeze_mm_vision_tower: false`).
    pub vision_tower: Option<PathBuf>,
    /// Refuse prompts longer than `tokenizer_model_max_length` instead of truncating them as upstream does.
    pub strict_context: bool,
    /// Counts the bytes loaded (and to load) while [`ViperModel::load`] runs, for a progress display.
    pub progress: Option<LoadProgress>,
}

/// The intermediate tensors of the image path, for inspection and parity checks.
#[derive(Debug, Clone)]
pub struct ImageEncoding<B: Backend> {
    /// Tower output per crop, `[crops, P, C]` (all images concatenated).
    pub clip_features: Tensor<B, 3>,
    /// Projector output, `[crops, P, H]`.
    pub projected_features: Tensor<B, 3>,
    /// The merged sequence of each image, `[n_img, H]`.
    pub image_features: Vec<Tensor<B, 2>>,
}

/// A loaded Viper model: language model plus (for multimodal checkpoints) the vision side and the
/// image preprocessing that matches it.
#[derive(Debug)]
pub struct ViperModel<B: SsmBackend> {
    /// The checkpoint's config.
    pub config: ViperConfig,
    /// The language model.
    pub language: Language<B>,
    /// Tower, projector, newline (`None` for a text-only checkpoint).
    pub vision: Option<VisionSide<B>>,
    /// AnyRes preprocessing for this tower (`None` for a text-only checkpoint).
    pub processor: Option<Processor>,
    options: ViperLoadOptions,
    device: B::Device,
    /// How long [`load`](Self::load) took and how many bytes of tensors it read.
    pub load_stats: LoadStats,
}

/// Known tensors that a Viper model deliberately does not read.
/// (`pos_emb.*`: the Jamba wrapper's rotary table, never used in forward; docs/spec.md §7.8.)
fn known_unused(key: &str) -> bool {
    key.starts_with("pos_emb.")
}

impl<B: SsmBackend> ViperModel<B> {
    /// Loads `dir` (a HuggingFace checkpoint directory: config.json + safetensors, single or sharded).
    pub fn load(dir: impl AsRef<Path>, options: ViperLoadOptions, device: &B::Device) -> Result<Self> {
        let start = Instant::now();
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(ModelError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint directory not found"),
            });
        }
        let config = ViperConfig::from_file(&dir.join("config.json"))?;
        let mut ckpt = Checkpoint::open(dir)?;
        if let Some(progress) = &options.progress {
            ckpt = ckpt.with_progress(progress.clone());
        }
        let load = LoadOptions { dtype: options.dtype };
        log::info!("loading {} from {}", config.llava.model_type, dir.display());
        // The weights go to the backend's persistent memory pool: on CubeCL backends, allocations of
        // the step's intermediates otherwise scan pools that also hold hundreds of small weight
        // tensors, which cost decode ~30 % of its speed (BENCHMARKS.md, call 6).
        let (language, vision, processor) = B::memory_persistent_allocations(device, (), |()| -> Result<_> {
            let language = match &config.language {
                LanguageConfig::FalconMamba(c) => {
                    Language::FalconMamba(FalconMambaForCausalLM::load(c, &ckpt, load, device)?)
                }
                LanguageConfig::Jamba(c) => Language::Jamba(JambaForCausalLM::load(c, &ckpt, load, device)?),
            };
            let (vision, processor) = if config.is_multimodal() {
                let (v, p) = load_vision(&config, dir, &ckpt, &options, device)?;
                (Some(v), Some(p))
            } else {
                (None, None)
            };
            Ok((language, vision, processor))
        })?;
        // Upstream ignores a frozen tower's copy in the checkpoint; a loaded tower skips its later layers.
        let tower = vision.as_ref().map(|v| &v.vision_tower);
        let frozen = !config.llava.unfreeze_mm_vision_tower;
        let unused = ckpt.unused_keys(|key| {
            let clip_key = key.split_once(".vision_tower.vision_tower.vision_model.").map(|(_, rel)| rel);
            known_unused(key) || clip_key.is_some_and(|rel| frozen || tower.is_some_and(|t| t.is_unused_key(rel)))
        });
        if !unused.is_empty() {
            log::warn!("{} checkpoint tensors were not used, e.g. {:?}", unused.len(), &unused[..unused.len().min(5)]);
        }
        let bytes = ckpt
            .keys()
            .iter()
            .filter_map(|k| ckpt.meta(k))
            .map(|m| m.shape.iter().product::<usize>() * m.dtype.bitsize() / 8)
            .sum::<usize>();
        let load_stats = LoadStats { seconds: start.elapsed().as_secs_f64(), bytes: bytes as u64 };
        let times = ckpt.load_times();
        log::info!(
            "loaded {:.2} GB in {:.2} s: reading and converting {:.2} s, handing to the device {:.2} s ({:.2} GB read)",
            bytes as f64 / 1e9,
            load_stats.seconds,
            times.read_s,
            times.upload_s,
            times.bytes as f64 / 1e9
        );
        Ok(Self { config, language, vision, processor, options, device: device.clone(), load_stats })
    }

    /// The device the model lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Float type of the weights.
    pub fn dtype(&self) -> DType {
        match &self.language {
            Language::FalconMamba(m) => m.backbone.embeddings.weight.val().dtype(),
            Language::Jamba(m) => m.model.embed_tokens.weight.val().dtype(),
        }
    }

    /// Runs every crop of every image through the tower in one batch, projects, and merges each
    /// image's features with `image_newline` (docs/spec.md §4.3, §8.1).
    pub fn encode_images(&self, images: &[ProcessedImage]) -> Result<ImageEncoding<B>> {
        let vision =
            self.vision.as_ref().ok_or_else(|| ModelError::Input("this checkpoint has no vision tower".into()))?;
        if images.is_empty() {
            return Err(ModelError::Input("encode_images needs at least one image".into()));
        }
        let crops: Vec<Tensor<B, 4>> = images
            .iter()
            .map(|im| {
                Tensor::<B, 4>::from_data(
                    TensorData::new(im.pixel_values.clone(), im.shape),
                    (&self.device, DType::F32),
                )
            })
            .collect();
        // Upstream casts pixel values to the model dtype before the tower (README: bf16).
        let pixels = Tensor::cat(crops, 0).cast(FloatDType::from(self.dtype()));
        let clip_features = vision.vision_tower.forward(pixels)?;
        let projected_features = vision.mm_projector.forward(clip_features.clone())?;
        let mut start = 0;
        let image_features = images
            .iter()
            .map(|im| {
                let n = im.shape[0];
                let feats = projected_features.clone().narrow(0, start, n);
                start += n;
                // The processor's geometry of this image, as it computed it.
                Ok(spatial_unpad_merge(feats, &im.geometry, vision.image_newline.val())?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageEncoding { clip_features, projected_features, image_features })
    }

    /// Text embeddings of `ids` with each [`IMAGE_TOKEN_INDEX`] replaced by the next image's
    /// features, then cut to `tokenizer_model_max_length` as upstream does (or refused, with
    /// `strict_context`). Returns `[1, L, H]`.
    ///
    /// `ids` are the tokens of a rendered prompt, with one [`IMAGE_TOKEN_INDEX`] per entry of `images`:
    /// the marker count is checked once, where the markers meet the images, by
    /// [`ChatTemplate::render`](viper_chat_template::ChatTemplate::render)
    /// (`viper_chat_template::Error::ImageCount`), and not again here.
    pub fn embed_prompt(&self, ids: &[i64], images: &[Tensor<B, 2>]) -> Result<Tensor<B, 3>> {
        let vocab = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id != IMAGE_TOKEN_INDEX && (id < 0 || id as usize >= vocab)) {
            return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let mut parts: Vec<Tensor<B, 2>> = Vec::new();
        let mut images = images.iter();
        for (i, segment) in ids.split(|&id| id == IMAGE_TOKEN_INDEX).enumerate() {
            if i > 0 {
                parts.extend(images.next().cloned());
            }
            if !segment.is_empty() {
                let t =
                    Tensor::<B, 2, Int>::from_data(TensorData::new(segment.to_vec(), [1, segment.len()]), &self.device);
                parts.push(self.embed(t).reshape([segment.len(), self.hidden_size()]));
            }
        }
        if parts.is_empty() {
            return Err(ModelError::Input("empty prompt".into()));
        }
        let dtype = FloatDType::from(self.dtype());
        let mut embeds = Tensor::cat(parts.into_iter().map(|p| p.cast(dtype)).collect(), 0);
        let len = embeds.dims()[0];
        if let Some(max) = self.config.llava.tokenizer_model_max_length.filter(|&m| len > m) {
            if self.options.strict_context {
                return Err(ModelError::Input(format!(
                    "the prompt is {len} positions long, beyond tokenizer_model_max_length {max}"
                )));
            }
            log::warn!("prompt of {len} positions truncated to tokenizer_model_max_length {max}, as upstream does");
            embeds = embeds.narrow(0, 0, max);
        }
        Ok(embeds.unsqueeze())
    }
}

/// Finds the tower config (folder named by `mm_vision_tower`, then `vision_config`, then a known
/// name), loads tower, projector and newline, and builds the matching image processor.
fn load_vision<B: SsmBackend>(
    config: &ViperConfig,
    dir: &Path,
    ckpt: &Checkpoint,
    options: &ViperLoadOptions,
    device: &B::Device,
) -> Result<(VisionSide<B>, Processor)> {
    let llava = &config.llava;
    let tower_dir =
        llava.mm_vision_tower.as_deref().map(|name| dir.join(name)).filter(|p| p.join("config.json").is_file());
    let clip = match (&tower_dir, &llava.vision_config, &llava.mm_vision_tower) {
        (Some(td), _, _) => ClipVisionConfig::from_file(td.join("config.json"))?,
        (None, Some(v), _) => ClipVisionConfig::from_value(v)?,
        (None, None, Some(name)) => ClipVisionConfig::from_name(name)?,
        (None, None, None) => {
            return Err(ModelError::Config("multimodal config without mm_vision_tower or vision_config".into()))
        }
    };
    if let Some(mm) = llava.mm_hidden_size.filter(|&mm| mm != clip.hidden_size) {
        return Err(ModelError::Config(format!(
            "mm_hidden_size {mm} differs from the vision tower's hidden_size {}",
            clip.hidden_size
        )));
    }
    let select = FeatureSelect {
        layer: llava.mm_vision_select_layer,
        feature: llava.mm_vision_select_feature.parse::<SelectFeature>()?,
    };
    let load = LoadOptions { dtype: options.dtype };

    // docs/spec.md §9.4: a trained (unfrozen) tower is stored in the checkpoint; a frozen one is the CLIP release.
    let external;
    let (tower_ckpt, source) = if llava.unfreeze_mm_vision_tower {
        (ckpt, dir.to_path_buf())
    } else {
        let path = options
            .vision_tower
            .clone()
            .or_else(|| tower_dir.clone().filter(|p| Checkpoint::open(p).is_ok()))
            .ok_or_else(|| {
                ModelError::Config(format!(
                    "the vision tower `{}` is frozen (unfreeze_mm_vision_tower is false), so its weights are not in the checkpoint: pass a CLIP checkpoint as the vision tower",
                    llava.mm_vision_tower.as_deref().unwrap_or("?")
                ))
            })?;
        external = match &options.progress {
            Some(progress) => Checkpoint::open(&path)?.with_progress(progress.clone()),
            None => Checkpoint::open(&path)?,
        };
        (&external, path)
    };
    let prefix = vision_model_prefix(tower_ckpt)?;
    log::info!("vision tower from {} under `{prefix}`", source.display());
    let vision_tower = ClipVisionTower::load(&clip, select, &tower_ckpt.weights(load).at(&prefix), device)?;

    let lm_root = ckpt.prefix_of("image_newline").ok_or_else(|| viper_checkpoint::CheckpointError::MissingTensor {
        key: "backbone.image_newline".into(),
        hint: " (no key ends with `image_newline`)".into(),
    })?;
    let w = ckpt.weights(load).at(&lm_root);
    let h = config.hidden_size();
    let mm_projector = MmProjector::load(&llava.mm_projector_type, clip.hidden_size, h, &w, device)?;
    let image_newline = Param::from_tensor(w.tensor("image_newline", [h], device)?);

    // The one resolution of the preprocessing config (aspect ratio, pinpoints, normalisation, sizes).
    let processor = llava.anyres.resolve(clip.image_size as u32, clip.patch_size as u32, tower_dir.as_deref())?;
    match llava.mm_patch_merge_type.as_deref() {
        Some("spatial_unpad") | None => {}
        Some(other) => {
            return Err(ModelError::Config(format!(
                "mm_patch_merge_type `{other}` is not supported (Viper uses spatial_unpad)"
            )))
        }
    }
    Ok((VisionSide { vision_tower, mm_projector, image_newline }, processor))
}

impl<B: SsmBackend> LanguageModel<B> for ViperModel<B> {
    type Cache = ViperCache<B>;

    fn vocab_size(&self) -> usize {
        match &self.language {
            Language::FalconMamba(m) => m.vocab_size(),
            Language::Jamba(m) => m.vocab_size(),
        }
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size()
    }

    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match &self.language {
            Language::FalconMamba(m) => m.embed(ids),
            Language::Jamba(m) => m.embed(ids),
        }
    }

    fn new_cache(&self, batch: usize) -> ViperCache<B> {
        match &self.language {
            Language::FalconMamba(m) => ViperCache::FalconMamba(m.new_cache(batch)),
            Language::Jamba(m) => ViperCache::Jamba(m.new_cache(batch)),
        }
    }

    fn forward(&self, embeds: Tensor<B, 3>, cache: &mut ViperCache<B>, logits: Logits) -> Tensor<B, 3> {
        match (&self.language, cache) {
            (Language::FalconMamba(m), ViperCache::FalconMamba(c)) => m.forward(embeds, c, logits),
            (Language::Jamba(m), ViperCache::Jamba(c)) => m.forward(embeds, c, logits),
            _ => unreachable!("a ViperCache is only created by the model it belongs to"),
        }
    }
}

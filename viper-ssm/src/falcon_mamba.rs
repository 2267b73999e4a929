//! FalconMamba causal LM (docs/spec.md §6; transformers' `modeling_falcon_mamba.py`), the language side of
//! Viper-Mamba-7B, and its config. Field names mirror the checkpoint:
//! `backbone.{embeddings, layers.{i}.{norm, mixer}, norm_f}`, `lm_head`.

use std::path::Path;

use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::DType;
use serde::Deserialize;
use viper_checkpoint::{Checkpoint, LoadOptions};

use crate::backend::SsmBackend;
use crate::config::{AutoSize, MambaConfig, MambaVariant};
use crate::error::LmError;
use crate::lm::{lm_logits, LanguageModel, LmLayout, LmParts, LmShape, Logits};
use crate::mixer::{MambaMixer, MambaState};
use crate::norm::RmsNorm;

fn default_true() -> bool {
    true
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_mixer_rms_eps() -> f64 {
    1e-6
}

/// transformers' `FalconMambaConfig` (the fields inference needs; others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct FalconMambaConfig {
    /// Model width.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Vocabulary size (the embedding's row count is read from the weights).
    pub vocab_size: usize,
    /// SSM state size N.
    pub state_size: usize,
    /// Conv width K.
    pub conv_kernel: usize,
    /// dt rank R (`"auto"` = ceil(hidden/16)).
    pub time_step_rank: AutoSize,
    /// Inner width; wins over `expand` (the 7B config's `expand` is wrong).
    pub intermediate_size: Option<usize>,
    /// Used only when `intermediate_size` is absent.
    #[serde(default)]
    pub expand: Option<usize>,
    /// Block and final norm eps.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_epsilon: f64,
    /// Eps of the weightless dt/B/C RMS norms.
    #[serde(default = "default_mixer_rms_eps")]
    pub mixer_rms_eps: f64,
    /// in_proj/out_proj bias.
    #[serde(default)]
    pub use_bias: bool,
    /// conv1d bias.
    #[serde(default = "default_true")]
    pub use_conv_bias: bool,
    /// Residual stream kept in f32.
    #[serde(default = "default_true")]
    pub residual_in_fp32: bool,
    /// lm_head shares the embedding matrix (transformers' default when absent: true).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// End-of-sequence id(s) from config.json.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

impl FalconMambaConfig {
    /// Reads `config.json` (a regular file of at most [`viper_io::MAX_CONFIG_BYTES`], its sizes within
    /// [`CONFIG_LIMITS`](crate::limits::CONFIG_LIMITS)).
    pub fn from_file(path: &Path) -> Result<Self, LmError> {
        let text = viper_io::read_capped_to_string(path, viper_io::MAX_CONFIG_BYTES)?;
        let parse = |e: serde_json::Error| LmError::ConfigParse { path: path.to_path_buf(), reason: e.to_string() };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(parse)?;
        crate::limits::check_config_limits(&json)?;
        let c: Self = serde_json::from_value(json).map_err(parse)?;
        c.validate()?;
        Ok(c)
    }

    /// Inner width I.
    pub fn d_inner(&self) -> usize {
        self.intermediate_size.unwrap_or(self.expand.unwrap_or(2) * self.hidden_size)
    }

    /// The mixer's shapes.
    pub fn mamba(&self) -> MambaConfig {
        MambaConfig {
            d_model: self.hidden_size,
            d_inner: self.d_inner(),
            d_state: self.state_size,
            d_conv: self.conv_kernel,
            dt_rank: self.time_step_rank.resolve(self.hidden_size),
            conv_bias: self.use_conv_bias,
            proj_bias: self.use_bias,
            variant: MambaVariant::FalconMamba { rms_eps: self.mixer_rms_eps },
        }
    }

    /// Rejects configs that cannot describe a model.
    pub fn validate(&self) -> Result<(), LmError> {
        if self.num_hidden_layers == 0 {
            return Err(LmError::Config("num_hidden_layers must be positive".into()));
        }
        if self.vocab_size == 0 {
            return Err(LmError::Config("vocab_size must be positive".into()));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return Err(LmError::Config(format!(
                "layer_norm_epsilon must be positive, got {}",
                self.layer_norm_epsilon
            )));
        }
        self.mamba().validate()?;
        Ok(())
    }
}

/// One residual block: `h + mixer(norm(h))`.
#[derive(Module, Debug)]
pub struct FalconMambaBlock<B: Backend> {
    /// Pre-norm, eps `layer_norm_epsilon`.
    pub norm: RmsNorm<B>,
    /// The Mamba mixer (FalconMamba variant).
    pub mixer: MambaMixer<B>,
}

/// `backbone.*`: embeddings, blocks, final norm.
#[derive(Module, Debug)]
pub struct FalconMambaModel<B: Backend> {
    /// `embeddings.weight`, `[V, H]`.
    pub embeddings: Embedding<B>,
    /// `layers.{i}`.
    pub layers: Vec<FalconMambaBlock<B>>,
    /// `norm_f`.
    pub norm_f: RmsNorm<B>,
}

/// `FalconMambaForCausalLM`.
#[derive(Module, Debug)]
pub struct FalconMambaForCausalLM<B: Backend> {
    /// `backbone.*`.
    pub backbone: FalconMambaModel<B>,
    /// `lm_head` (shares the embedding matrix when tied).
    pub lm_head: Linear<B>,
    /// The config it was built from.
    #[module(skip)]
    pub config: FalconMambaConfig,
}

/// Per-layer recurrent state.
#[derive(Debug, Clone)]
pub struct FalconMambaCache<B: Backend> {
    /// One state per block.
    pub layers: Vec<MambaState<B>>,
}

impl<B: Backend> FalconMambaCache<B> {
    /// Sequences in this cache (its batch size).
    pub fn batch(&self) -> usize {
        self.layers.first().map_or(0, MambaState::batch)
    }

    /// Several caches as one batch, stacked along the batch dimension in order, so that one
    /// [`forward`](LanguageModel::forward) steps all their sequences ([`MambaState::cat`] per layer).
    /// Panics on an empty list.
    pub fn cat(caches: Vec<Self>) -> Self {
        let depth = caches.first().map_or(0, |c| c.layers.len());
        let mut per_layer: Vec<Vec<MambaState<B>>> = (0..depth).map(|_| Vec::with_capacity(caches.len())).collect();
        for cache in caches {
            for (layer, state) in per_layer.iter_mut().zip(cache.layers) {
                layer.push(state);
            }
        }
        Self { layers: per_layer.into_iter().map(MambaState::cat).collect() }
    }

    /// The inverse of [`cat`](Self::cat): consecutive batches of `sizes` sequences.
    pub fn split(self, sizes: &[usize]) -> Vec<Self> {
        let mut out: Vec<Self> = sizes.iter().map(|_| Self { layers: Vec::new() }).collect();
        for state in self.layers {
            for (cache, part) in out.iter_mut().zip(state.split(sizes)) {
                cache.layers.push(part);
            }
        }
        out
    }

    /// Elements held by all layers' states.
    pub fn num_elements(&self) -> usize {
        self.layers.iter().map(MambaState::num_elements).sum()
    }
}

/// Where FalconMamba's shared parts sit.
const LAYOUT: LmLayout =
    LmLayout { family: "FalconMamba", backbone: "backbone.", embeddings: "embeddings", final_norm: "norm_f" };

impl<B: SsmBackend> FalconMambaForCausalLM<B> {
    /// Loads the LM from a checkpoint whose keys sit under any prefix (`backbone.` for a plain
    /// `FalconMambaForCausalLM` and a Viper checkpoint alike).
    pub fn load(
        config: &FalconMambaConfig,
        ckpt: &Checkpoint,
        options: LoadOptions,
        device: &B::Device,
    ) -> Result<Self, LmError> {
        config.validate()?;
        let (h, eps) = (config.hidden_size, config.layer_norm_epsilon);
        let shape = LmShape {
            hidden_size: h,
            vocab_size: config.vocab_size,
            norm_eps: eps,
            tie_word_embeddings: config.tie_word_embeddings,
        };
        let mamba = config.mamba();
        let (LmParts { embeddings, final_norm, lm_head }, layers) = LAYOUT.load(ckpt, options, shape, device, |w| {
            (0..config.num_hidden_layers)
                .map(|i| {
                    let l = w.pp(format_args!("layers.{i}"));
                    Ok(FalconMambaBlock {
                        norm: RmsNorm::load(&l.pp("norm"), h, eps, device)?,
                        mixer: MambaMixer::load(&mamba, &l.pp("mixer"), device)?,
                    })
                })
                .collect::<Result<Vec<_>, LmError>>()
        })?;
        Ok(Self {
            backbone: FalconMambaModel { embeddings, layers, norm_f: final_norm },
            lm_head,
            config: config.clone(),
        })
    }

    fn weight_dtype(&self) -> DType {
        self.backbone.embeddings.weight.val().dtype()
    }
}

impl<B: SsmBackend> LanguageModel<B> for FalconMambaForCausalLM<B> {
    type Cache = FalconMambaCache<B>;

    fn vocab_size(&self) -> usize {
        self.backbone.embeddings.weight.dims()[0]
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.backbone.embeddings.forward(ids)
    }

    fn new_cache(&self, batch: usize) -> Self::Cache {
        FalconMambaCache { layers: self.backbone.layers.iter().map(|l| l.mixer.zero_state(batch)).collect() }
    }

    fn forward(&self, embeds: Tensor<B, 3>, cache: &mut Self::Cache, logits: Logits) -> Tensor<B, 3> {
        let dtype = self.weight_dtype();
        let [b, l, d] = embeds.dims();
        let mut h = embeds;
        // docs/spec.md §6.2: the stream is f32 with residual_in_fp32; each block normalises it in the weight
        // dtype. The residual add of a block is fused with the next norm (the last one with norm_f).
        let stream = if self.config.residual_in_fp32 { DType::F32 } else { h.dtype() };
        let mut pending: Option<Tensor<B, 3>> = None;
        for (layer, state) in self.backbone.layers.iter().zip(cache.layers.iter_mut()) {
            let x = match pending.take() {
                None => layer.norm.forward_as(h.clone(), dtype),
                Some(y) => {
                    let (s, x) = layer.norm.forward_add(h, y, stream, dtype);
                    h = s;
                    x
                }
            };
            let y = if l == 1 {
                let (y, s) = layer.mixer.step(x.reshape([b, d]), state.clone());
                *state = s;
                y.reshape([b, 1, d])
            } else {
                let (y, s) = layer.mixer.forward(x, Some(state.clone()));
                *state = s;
                y
            };
            pending = Some(y);
        }
        // norm_f normalises the stream in the stream's dtype.
        let y = match pending {
            None => self.backbone.norm_f.forward(logits.select(h)),
            Some(y) => self.backbone.norm_f.forward_add(logits.select(h), logits.select(y), stream, stream).1,
        };
        lm_logits(&self.lm_head, y.cast(dtype))
    }
}

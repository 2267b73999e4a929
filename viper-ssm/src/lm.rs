//! The contract generation needs from a causal language model, and what both families (FalconMamba
//! here, Jamba in `viper-moe`) share around their layers: the logits selection, the loading of the
//! embedding matrix, the final norm and `lm_head`, and the head's product.

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::FloatDType;
use viper_checkpoint::{Checkpoint, CheckpointError, LoadOptions, Weights};

use crate::backend::{linear, SsmBackend};
use crate::norm::RmsNorm;

/// Which positions' logits [`LanguageModel::forward`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every position (`[b, l, V]`): tests and scoring.
    All,
    /// Only the last position (`[b, 1, V]`): generation (transformers' `num_logits_to_keep = 1`).
    Last,
}

impl Logits {
    /// The positions of `x` (`[b, l, …]`) whose logits are wanted; both models select before the
    /// final norm, so the norm and `lm_head` run only on them.
    pub fn select<B: Backend>(self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Logits::All => x,
            Logits::Last => {
                let l = x.dims()[1];
                x.narrow(1, l - 1, 1)
            }
        }
    }
}

/// A causal LM that runs over embeddings and carries a cache between calls.
pub trait LanguageModel<B: Backend> {
    /// Recurrent state and/or KV cache of one batch.
    type Cache: Clone;

    /// Rows of the embedding matrix (ids must be below this).
    fn vocab_size(&self) -> usize;
    /// Width of the embeddings.
    fn hidden_size(&self) -> usize;
    /// Token embeddings, `[b, l] → [b, l, H]` in the model's dtype.
    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3>;
    /// An empty cache for `batch` sequences.
    fn new_cache(&self, batch: usize) -> Self::Cache;
    /// Runs `embeds` (`[b, l, H]`) after whatever `cache` holds and updates it; returns f32 logits.
    /// A call with `l = 1` is a decode step and takes the single-token path.
    fn forward(&self, embeds: Tensor<B, 3>, cache: &mut Self::Cache, logits: Logits) -> Tensor<B, 3>;
}

/// Where a causal LM's embedding matrix and final norm sit in its checkpoint: under
/// `{root}{backbone}`, with `lm_head` (when stored) at `{root}`, for any `root` (`""` for a plain
/// `…ForCausalLM`, the same for a Viper checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LmLayout {
    /// The family, for the error when the checkpoint holds no such model.
    pub family: &'static str,
    /// The base model's prefix: `backbone.` (FalconMamba) or `model.` (Jamba).
    pub backbone: &'static str,
    /// The embedding module: `embeddings` or `embed_tokens`.
    pub embeddings: &'static str,
    /// The final norm: `norm_f` or `final_layernorm`.
    pub final_norm: &'static str,
}

/// The sizes [`LmLayout::load`] needs from a family's config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmShape {
    /// Width H.
    pub hidden_size: usize,
    /// `vocab_size` of config.json (only compared with the embedding's rows, which win).
    pub vocab_size: usize,
    /// Eps of the final norm.
    pub norm_eps: f64,
    /// `tie_word_embeddings`: `lm_head` is the embedding matrix when not stored.
    pub tie_word_embeddings: bool,
}

/// The parts every causal LM here loads the same way: token embeddings, final norm, output head.
#[derive(Debug)]
pub struct LmParts<B: Backend> {
    /// `[V, H]`.
    pub embeddings: Embedding<B>,
    /// The final RMS norm, `[H]`.
    pub final_norm: RmsNorm<B>,
    /// `[H, V]` (used as `x · W`): stored, or the embedding matrix when tied.
    pub lm_head: Linear<B>,
}

impl LmLayout {
    /// Finds the model under any prefix and loads, in this order, the embedding matrix (its rows are
    /// the vocabulary), the layers (`layers`, given the backbone's view), the final norm and
    /// `lm_head` ([`Weights::lm_head`]: stored, else the embedding matrix when tied).
    pub fn load<B: Backend, L, E: From<CheckpointError>>(
        &self,
        ckpt: &Checkpoint,
        options: LoadOptions,
        shape: LmShape,
        device: &B::Device,
        layers: impl FnOnce(&Weights<'_>) -> Result<L, E>,
    ) -> Result<(LmParts<B>, L), E> {
        let norm_key = format!("{}.weight", self.final_norm);
        let prefix = ckpt.prefix_of(&norm_key).ok_or_else(|| CheckpointError::MissingTensor {
            key: format!("{}{norm_key}", self.backbone),
            hint: format!(" (no key ends with `{norm_key}`: not a {} checkpoint?)", self.family),
        })?;
        let root = prefix.strip_suffix(self.backbone).unwrap_or(&prefix).to_string();
        let all = ckpt.weights(options);
        let w = all.at(&prefix);
        let h = shape.hidden_size;
        let vocab = w.shape(&format!("{}.weight", self.embeddings))?.first().copied().unwrap_or(0);
        if vocab != shape.vocab_size {
            log::warn!("embedding matrix has {vocab} rows but config.json says vocab_size {}", shape.vocab_size);
        }
        let emb = w.pp(self.embeddings).tensor::<B, 2>("weight", [vocab, h], device)?;
        let layers = layers(&w)?;
        let final_norm = RmsNorm::load(&w.pp(self.final_norm), h, shape.norm_eps, device)?;
        let lm_head = all.at(&root).lm_head("lm_head", &emb, shape.tie_word_embeddings)?;
        Ok((LmParts { embeddings: Embedding { weight: Param::from_tensor(emb) }, final_norm, lm_head }, layers))
    }
}

/// `lm_head` on the final norm's output `y` (`[b, l, H]`, in the head's dtype) through
/// [`SsmBackend::projection`], as f32 logits.
pub fn lm_logits<B: SsmBackend>(lm_head: &Linear<B>, y: Tensor<B, 3>) -> Tensor<B, 3> {
    linear(lm_head, y).cast(FloatDType::F32)
}

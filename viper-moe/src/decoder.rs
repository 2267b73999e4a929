//! The Jamba decoder (docs/spec.md §7.2) and causal LM with its hybrid cache. Field names mirror the keys:
//! `model.{embed_tokens, layers.{i}.{input_layernorm, self_attn | mamba, pre_ff_layernorm, feed_forward},
//! final_layernorm}`, `lm_head`.

use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use viper_checkpoint::{Checkpoint, LoadOptions, Weights};
use viper_ssm::{
    lm_logits, LanguageModel, LmLayout, LmParts, LmShape, Logits, MambaMixer, MambaState, RmsNorm, SsmBackend,
};

use crate::attention::{JambaAttention, KvCache};
use crate::config::{JambaConfig, LayerKind};
use crate::moe::{JambaMlp, SparseMoe};
use crate::{Error, Result};

/// A layer's feed-forward: dense gated MLP or mixture of experts.
// One per layer, built once: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum FeedForward<B: Backend> {
    /// `feed_forward.{gate,up,down}_proj`.
    Dense(JambaMlp<B>),
    /// `feed_forward.{router, experts.*}`.
    Moe(SparseMoe<B>),
}

impl<B: SsmBackend> FeedForward<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            FeedForward::Dense(mlp) => mlp.forward(x),
            FeedForward::Moe(moe) => moe.forward(x),
        }
    }
}

/// One pre-norm decoder layer: `h + mixer(norm(h))`, then `h + ffn(norm(h))`, residual in the model dtype.
#[derive(Module, Debug)]
pub struct JambaDecoderLayer<B: Backend> {
    /// Norm before the mixer.
    pub input_layernorm: RmsNorm<B>,
    /// Attention mixer (attention layers).
    pub self_attn: Option<JambaAttention<B>>,
    /// Mamba mixer (all other layers).
    pub mamba: Option<MambaMixer<B>>,
    /// Norm before the feed-forward.
    pub pre_ff_layernorm: RmsNorm<B>,
    /// Dense MLP or MoE.
    pub feed_forward: FeedForward<B>,
}

/// Cache of one layer.
#[derive(Debug, Clone)]
pub enum LayerCache<B: Backend> {
    /// Keys and values so far (`None` before the first token).
    Attention(Option<KvCache<B>>),
    /// Conv window and SSM state.
    Mamba(MambaState<B>),
}

/// The hybrid cache: KV for attention layers, recurrent state for Mamba layers.
#[derive(Debug, Clone)]
pub struct JambaCache<B: Backend> {
    /// One entry per layer.
    pub layers: Vec<LayerCache<B>>,
}

impl<B: Backend> JambaCache<B> {
    /// Elements the cache holds: every Mamba layer's state and every attention layer's allocated
    /// keys and values (the whole capacity, filled or not), for sizing caches of caches.
    ///
    /// Jamba caches are not stacked into batches: sequences with KV caches of different lengths would
    /// need a padding mask in attention, so a server steps them one by one.
    pub fn num_elements(&self) -> usize {
        self.layers
            .iter()
            .map(|layer| match layer {
                LayerCache::Attention(None) => 0,
                LayerCache::Attention(Some(kv)) => kv.k.shape().num_elements() + kv.v.shape().num_elements(),
                LayerCache::Mamba(state) => state.num_elements(),
            })
            .sum()
    }
}

impl<B: SsmBackend> JambaDecoderLayer<B> {
    fn load(c: &JambaConfig, i: usize, w: &Weights, device: &B::Device) -> Result<Self> {
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        let (self_attn, mamba) = match c.layer_kind(i) {
            LayerKind::Attention => (Some(JambaAttention::load(c, &w.pp("self_attn"), device)?), None),
            LayerKind::Mamba => (None, Some(MambaMixer::load(&c.mamba(), &w.pp("mamba"), device)?)),
        };
        let ff = w.pp("feed_forward");
        let feed_forward = if c.is_moe(i) {
            FeedForward::Moe(SparseMoe::load(
                &ff,
                h,
                c.intermediate_size,
                c.num_experts,
                c.num_experts_per_tok,
                device,
            )?)
        } else {
            FeedForward::Dense(JambaMlp::load(&ff, h, c.intermediate_size, device)?)
        };
        Ok(Self {
            input_layernorm: RmsNorm::load(&w.pp("input_layernorm"), h, eps, device)?,
            self_attn,
            mamba,
            pre_ff_layernorm: RmsNorm::load(&w.pp("pre_ff_layernorm"), h, eps, device)?,
            feed_forward,
        })
    }

    /// Runs the layer over `x` (`[b, l, H]`), reading and updating its cache entry.
    pub fn forward(&self, x: Tensor<B, 3>, cache: &mut LayerCache<B>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let normed = self.input_layernorm.forward(x.clone()).cast(dtype);
        let mixed = match (cache, &self.self_attn, &self.mamba) {
            (LayerCache::Attention(kv), Some(attn), _) => attn.forward(normed, kv),
            (LayerCache::Mamba(state), _, Some(mamba)) => {
                let [b, l, h] = normed.dims();
                let (y, s) = if l == 1 {
                    let (y, s) = mamba.step(normed.reshape([b, h]), state.clone());
                    (y.reshape([b, 1, h]), s)
                } else {
                    mamba.forward(normed, Some(state.clone()))
                };
                *state = s;
                y
            }
            _ => unreachable!("cache entries are created from the layers they belong to"),
        };
        let h = x + mixed;
        let normed = self.pre_ff_layernorm.forward(h.clone()).cast(dtype);
        h + self.feed_forward.forward(normed)
    }
}

/// `model.*`.
#[derive(Module, Debug)]
pub struct JambaModel<B: Backend> {
    /// `embed_tokens.weight`, `[V, H]`.
    pub embed_tokens: Embedding<B>,
    /// `layers.{i}`.
    pub layers: Vec<JambaDecoderLayer<B>>,
    /// `final_layernorm`.
    pub final_layernorm: RmsNorm<B>,
}

/// `JambaForCausalLM`.
#[derive(Module, Debug)]
pub struct JambaForCausalLM<B: Backend> {
    /// `model.*`.
    pub model: JambaModel<B>,
    /// `lm_head`.
    pub lm_head: Linear<B>,
    /// The config it was built from.
    #[module(skip)]
    pub config: JambaConfig,
}

/// Where Jamba's shared parts sit.
const LAYOUT: LmLayout =
    LmLayout { family: "Jamba", backbone: "model.", embeddings: "embed_tokens", final_norm: "final_layernorm" };

impl<B: SsmBackend> JambaForCausalLM<B> {
    /// Loads the LM from a checkpoint whose keys sit under any prefix (`model.` in a plain
    /// `JambaForCausalLM` and in a Viper checkpoint).
    pub fn load(config: &JambaConfig, ckpt: &Checkpoint, options: LoadOptions, device: &B::Device) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        let shape = LmShape {
            hidden_size: config.hidden_size,
            vocab_size: config.vocab_size,
            norm_eps: config.rms_norm_eps,
            tie_word_embeddings: config.tie_word_embeddings,
        };
        let (LmParts { embeddings, final_norm, lm_head }, layers) = LAYOUT.load(ckpt, options, shape, device, |w| {
            (0..config.num_hidden_layers)
                .map(|i| JambaDecoderLayer::load(config, i, &w.pp(format_args!("layers.{i}")), device))
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(Self {
            model: JambaModel { embed_tokens: embeddings, layers, final_layernorm: final_norm },
            lm_head,
            config: config.clone(),
        })
    }
}

impl<B: SsmBackend> LanguageModel<B> for JambaForCausalLM<B> {
    type Cache = JambaCache<B>;

    /// Rows of the embedding matrix.
    fn vocab_size(&self) -> usize {
        self.model.embed_tokens.weight.dims()[0]
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Token embeddings `[b, l] → [b, l, H]`.
    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.model.embed_tokens.forward(ids)
    }

    /// An empty hybrid cache for `batch` sequences.
    fn new_cache(&self, batch: usize) -> JambaCache<B> {
        let layers = self
            .model
            .layers
            .iter()
            .map(|l| match &l.mamba {
                Some(m) => LayerCache::Mamba(m.zero_state(batch)),
                None => LayerCache::Attention(None),
            })
            .collect();
        JambaCache { layers }
    }

    /// Runs `embeds` (`[b, l, H]`) after the cache's contents; returns f32 logits of the positions
    /// `logits` selects (docs/spec.md §7.7).
    fn forward(&self, embeds: Tensor<B, 3>, cache: &mut JambaCache<B>, logits: Logits) -> Tensor<B, 3> {
        let mut h = embeds;
        for (layer, c) in self.model.layers.iter().zip(cache.layers.iter_mut()) {
            h = layer.forward(h, c);
        }
        let h = logits.select(h);
        let dtype = h.dtype();
        let y = self.model.final_layernorm.forward(h).cast(dtype);
        lm_logits(&self.lm_head, y)
    }
}

//! FalconMamba causal LM (spec §6; transformers' `modeling_falcon_mamba.py`), the language side of
//! Viper-Mamba-7B. Field names mirror the checkpoint: `backbone.{embeddings, layers.{i}.{norm, mixer}, norm_f}`,
//! `lm_head`.

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use viper_checkpoint::{Checkpoint, CheckpointError, LoadOptions};
use viper_ssm::{MambaMixer, MambaState, RmsNorm, SsmBackend};

use crate::config::FalconMambaConfig;
use crate::error::Result;
use crate::lm::{LanguageModel, Logits};

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

impl<B: SsmBackend> FalconMambaForCausalLM<B> {
    /// Loads the LM from a checkpoint whose keys sit under any prefix (`backbone.` for a plain
    /// `FalconMambaForCausalLM` and a Viper checkpoint alike).
    pub fn load(
        config: &FalconMambaConfig,
        ckpt: &Checkpoint,
        options: LoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        let prefix = ckpt.prefix_of("norm_f.weight").ok_or_else(|| CheckpointError::MissingTensor {
            key: "backbone.norm_f.weight".into(),
            hint: " (no key ends with `norm_f.weight`: not a FalconMamba checkpoint?)".into(),
        })?;
        let root = prefix.strip_suffix("backbone.").unwrap_or(&prefix).to_string();
        let all = ckpt.weights(options);
        let w = all.at(&prefix);
        let h = config.hidden_size;
        let vocab = w.shape("embeddings.weight")?.first().copied().unwrap_or(0);
        if vocab != config.vocab_size {
            log::warn!("embedding matrix has {vocab} rows but config.json says vocab_size {}", config.vocab_size);
        }
        let emb = w.pp("embeddings").tensor::<B, 2>("weight", [vocab, h], device)?;
        let mamba = config.mamba();
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = w.pp(format_args!("layers.{i}"));
                Ok(FalconMambaBlock {
                    norm: RmsNorm::load(&l.pp("norm"), h, config.layer_norm_epsilon, device)?,
                    mixer: MambaMixer::load(&mamba, &l.pp("mixer"), device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm_f = RmsNorm::load(&w.pp("norm_f"), h, config.layer_norm_epsilon, device)?;
        let lm_head = all.at(&root).lm_head("lm_head", &emb, config.tie_word_embeddings)?;
        Ok(Self {
            backbone: FalconMambaModel { embeddings: Embedding { weight: Param::from_tensor(emb) }, layers, norm_f },
            lm_head,
            config: config.clone(),
        })
    }

    fn weight_dtype(&self) -> burn::tensor::DType {
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
        // Spec §6.2: the stream is f32 with residual_in_fp32; each block normalises it in the weight
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
        let last = |t: Tensor<B, 3>| if logits == Logits::Last { t.narrow(1, l - 1, 1) } else { t };
        // norm_f normalises the stream in the stream's dtype.
        let y = match pending {
            None => self.backbone.norm_f.forward(last(h)),
            Some(y) => self.backbone.norm_f.forward_add(last(h), last(y), stream, stream).1,
        };
        viper_ssm::linear(&self.lm_head, y.cast(dtype)).cast(FloatDType::F32)
    }
}

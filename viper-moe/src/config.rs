//! transformers' `JambaConfig`, deserialised from a checkpoint's `config.json`.

use serde::Deserialize;
use viper_ssm::{AutoSize, MambaConfig, MambaVariant};

fn default_true() -> bool {
    true
}
fn default_eps() -> f64 {
    1e-6
}
fn one() -> usize {
    1
}

/// The fields of `JambaConfig` inference needs (others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct JambaConfig {
    /// Model width H.
    pub hidden_size: usize,
    /// Width of the dense MLP and of each expert.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA; 1 = MQA).
    pub num_key_value_heads: usize,
    /// Vocabulary size (the embedding's rows are read from the weights).
    pub vocab_size: usize,
    /// Experts per MoE layer.
    #[serde(default = "one")]
    pub num_experts: usize,
    /// Experts each token is routed to.
    #[serde(default = "one")]
    pub num_experts_per_tok: usize,
    /// MoE on layers with `i % expert_layer_period == expert_layer_offset`.
    pub expert_layer_period: usize,
    /// See `expert_layer_period`.
    pub expert_layer_offset: usize,
    /// Attention on layers with `i % attn_layer_period == attn_layer_offset`, Mamba elsewhere.
    pub attn_layer_period: usize,
    /// See `attn_layer_period`.
    pub attn_layer_offset: usize,
    /// SSM state size N.
    pub mamba_d_state: usize,
    /// Conv width K.
    pub mamba_d_conv: usize,
    /// I = expand · H.
    pub mamba_expand: usize,
    /// dt rank R (`"auto"` = ceil(H / 16)).
    pub mamba_dt_rank: AutoSize,
    /// conv1d bias.
    #[serde(default = "default_true")]
    pub mamba_conv_bias: bool,
    /// in_proj/out_proj bias.
    #[serde(default)]
    pub mamba_proj_bias: bool,
    /// Eps of every RMSNorm, dt/B/C norms included.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// lm_head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// Mixer of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Grouped-query attention without positional encoding.
    Attention,
    /// Mamba mixer (Jamba variant).
    Mamba,
}

impl JambaConfig {
    /// Attention or Mamba for layer `i` (docs/spec.md §7.1).
    pub fn layer_kind(&self, i: usize) -> LayerKind {
        if i % self.attn_layer_period == self.attn_layer_offset {
            LayerKind::Attention
        } else {
            LayerKind::Mamba
        }
    }

    /// Whether layer `i`'s feed-forward is a mixture of experts (docs/spec.md §7.1).
    pub fn is_moe(&self, i: usize) -> bool {
        self.num_experts > 1 && i % self.expert_layer_period == self.expert_layer_offset
    }

    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Shapes of the Mamba layers.
    pub fn mamba(&self) -> MambaConfig {
        MambaConfig {
            d_model: self.hidden_size,
            d_inner: self.mamba_expand * self.hidden_size,
            d_state: self.mamba_d_state,
            d_conv: self.mamba_d_conv,
            dt_rank: self.mamba_dt_rank.resolve(self.hidden_size),
            conv_bias: self.mamba_conv_bias,
            proj_bias: self.mamba_proj_bias,
            variant: MambaVariant::Jamba { rms_eps: self.rms_norm_eps },
        }
    }

    /// Rejects configs that cannot describe a model; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("vocab_size", self.vocab_size),
            ("num_experts", self.num_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("expert_layer_period", self.expert_layer_period),
            ("attn_layer_period", self.attn_layer_period),
            ("mamba_expand", self.mamba_expand),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.num_experts_per_tok > self.num_experts {
            return Err(format!(
                "num_experts_per_tok {} exceeds num_experts {}",
                self.num_experts_per_tok, self.num_experts
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!("rms_norm_eps must be positive, got {}", self.rms_norm_eps));
        }
        self.mamba().validate().map_err(|e| e.0)
    }
}

//! Language-model configs, deserialised straight from a checkpoint's `config.json`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use viper_ssm::{AutoSize, MambaConfig, MambaVariant};

use crate::error::{ModelError, Result};

/// Reads and parses a JSON config file into `T`, with the file name in every error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| ModelError::ConfigParse { path: path.to_path_buf(), reason: e.to_string() })
}

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
    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
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
    pub fn validate(&self) -> Result<()> {
        if self.num_hidden_layers == 0 {
            return Err(ModelError::Config("num_hidden_layers must be positive".into()));
        }
        if self.vocab_size == 0 {
            return Err(ModelError::Config("vocab_size must be positive".into()));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return Err(ModelError::Config(format!("layer_norm_epsilon must be positive, got {}", self.layer_norm_epsilon)));
        }
        self.mamba().validate()?;
        Ok(())
    }
}

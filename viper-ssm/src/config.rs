//! Mixer hyper-parameters, derived from a FalconMamba or Jamba `config.json` by the model crates.

use serde::Deserialize;

/// How dt, B and C are normalised after `x_proj` (the one difference between the two variants).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MambaVariant {
    /// FalconMamba: weightless RMS normalisation with `mixer_rms_eps`.
    FalconMamba {
        /// `mixer_rms_eps`.
        rms_eps: f64,
    },
    /// Jamba: learned `dt_layernorm`, `b_layernorm`, `c_layernorm` with `rms_norm_eps`.
    Jamba {
        /// `rms_norm_eps`.
        rms_eps: f64,
    },
    /// Plain Mamba-1: no normalisation of dt, B, C.
    Mamba,
}

/// Shapes of one Mamba mixer (docs/spec.md §6.5 glossary: D_m, I, N, R, K).
#[derive(Debug, Clone, PartialEq)]
pub struct MambaConfig {
    /// Model width D_m (`hidden_size`).
    pub d_model: usize,
    /// Inner width I (`intermediate_size`, or `mamba_expand * hidden_size`).
    pub d_inner: usize,
    /// State size N (`state_size` / `mamba_d_state`).
    pub d_state: usize,
    /// Convolution width K (`conv_kernel` / `mamba_d_conv`).
    pub d_conv: usize,
    /// Rank R of the dt projection (`time_step_rank` / `mamba_dt_rank`).
    pub dt_rank: usize,
    /// Whether `conv1d` has a bias.
    pub conv_bias: bool,
    /// Whether `in_proj` and `out_proj` have biases.
    pub proj_bias: bool,
    /// dt/B/C normalisation.
    pub variant: MambaVariant,
}

/// A configuration value that cannot describe a working mixer.
#[derive(Debug, thiserror::Error)]
#[error("invalid Mamba config: {0}")]
pub struct ConfigError(pub String);

impl MambaConfig {
    /// Checks that every size is usable (non-zero; a causal conv needs K ≥ 2 to carry a window).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sizes = [
            ("hidden_size", self.d_model),
            ("intermediate_size", self.d_inner),
            ("state_size", self.d_state),
            ("dt_rank", self.dt_rank),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError(format!("{name} must be positive")));
        }
        if self.d_conv < 2 {
            return Err(ConfigError(format!("conv kernel must be at least 2, got {}", self.d_conv)));
        }
        if let MambaVariant::FalconMamba { rms_eps } | MambaVariant::Jamba { rms_eps } = self.variant {
            if !(rms_eps.is_finite() && rms_eps > 0.0) {
                return Err(ConfigError(format!("rms eps must be positive, got {rms_eps}")));
            }
        }
        Ok(())
    }
}

/// A size that may be given as `"auto"` (transformers' `time_step_rank` / `mamba_dt_rank`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AutoSize {
    /// An explicit value.
    Value(usize),
    /// `"auto"`: `ceil(hidden_size / 16)`.
    Auto(AutoTag),
}

/// The literal string `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoTag {
    /// `"auto"`.
    Auto,
}

impl AutoSize {
    /// The value, resolving `"auto"` against the hidden size.
    pub fn resolve(self, hidden: usize) -> usize {
        match self {
            AutoSize::Value(v) => v,
            AutoSize::Auto(_) => hidden.div_ceil(16),
        }
    }
}

//! Jamba, the language side of Viper-Jamba-52B: Mamba layers (through `viper-ssm`), attention layers
//! without positional encoding, and sparse mixture-of-experts feed-forwards, with a hybrid cache.
//! [`JambaForCausalLM`] implements `viper-ssm`'s [`LanguageModel`] (re-exported here with [`Logits`]),
//! loads its embeddings, final norm and `lm_head` through [`viper_ssm::LmLayout`], and runs its
//! products through [`viper_ssm::linear`] (the decode step's expert products, gathered by id on the
//! device, excepted: see [`SparseMoe::forward_routed`]).

pub mod attention;
pub mod config;
pub mod decoder;
pub mod moe;

pub use attention::{JambaAttention, KvCache};
pub use config::{JambaConfig, LayerKind};
pub use decoder::{FeedForward, JambaCache, JambaDecoderLayer, JambaForCausalLM, JambaModel, LayerCache};
pub use moe::{JambaMlp, SparseMoe};
pub use viper_ssm::{LanguageModel, Logits};

/// Errors of Jamba construction.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `config.json` describes no working model.
    #[error("invalid Jamba config: {0}")]
    Config(String),
    /// Weights could not be read or do not fit the config.
    #[error(transparent)]
    Checkpoint(#[from] viper_checkpoint::CheckpointError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

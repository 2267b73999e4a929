//! The error of reading a FalconMamba config and loading the model.

use std::path::PathBuf;

use viper_checkpoint::CheckpointError;

use crate::config::ConfigError;

/// Everything that can go wrong reading `config.json` or building the FalconMamba LM from weights.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// `config.json` is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `config.json` does not parse or lacks a field.
    #[error("{path}: {reason}")]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// What serde said, with the line and column.
        reason: String,
    },
    /// `config.json` parses but describes no working model.
    #[error("invalid config: {0}")]
    Config(String),
    /// Weights could not be read or do not fit the config.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

impl From<ConfigError> for LmError {
    fn from(e: ConfigError) -> Self {
        LmError::Config(e.0)
    }
}

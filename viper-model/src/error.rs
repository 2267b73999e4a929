//! The error type of model construction and inference.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
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
    /// A config file is not a regular file (a FIFO, a device such as `/dev/zero`) or is beyond its size
    /// cap; it was not read.
    #[error(transparent)]
    File(viper_io::FileError),
    /// A size in `config.json` is outside the range this crate accepts
    /// ([`CONFIG_LIMITS`](viper_ssm::limits::CONFIG_LIMITS)); checked before the config is used.
    #[error("config field `{field}` is {value}, outside the supported range {min}..={max}")]
    ConfigLimit {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Smallest value accepted.
        min: u64,
        /// Largest value accepted.
        max: u64,
    },
    /// `config.json` parses but describes no working model.
    #[error("invalid config: {0}")]
    Config(String),
    /// Weights could not be read or do not fit the config.
    #[error(transparent)]
    Checkpoint(#[from] viper_checkpoint::CheckpointError),
    /// The Jamba language model could not be built.
    #[error(transparent)]
    Jamba(#[from] viper_moe::Error),
    /// The vision tower or projector could not be built or run.
    #[error(transparent)]
    Vision(#[from] viper_vision::VisionError),
    /// An image could not be read or preprocessed.
    #[error(transparent)]
    Image(#[from] viper_processor::ProcessorError),
    /// The tokenizer or chat template failed.
    #[error(transparent)]
    Prompt(#[from] viper_chat_template::Error),
    /// A request the model cannot serve (token id out of range, empty prompt, context too long…).
    #[error("invalid input: {0}")]
    Input(String),
}

impl From<viper_io::FileError> for ModelError {
    fn from(e: viper_io::FileError) -> Self {
        match e {
            viper_io::FileError::Io { path, source } => ModelError::Io { path, source },
            other => ModelError::File(other),
        }
    }
}

impl From<viper_ssm::ConfigError> for ModelError {
    fn from(e: viper_ssm::ConfigError) -> Self {
        ModelError::Config(e.0)
    }
}

/// The FalconMamba LM's errors keep their kind: the same variants as before it moved to `viper-ssm`.
impl From<viper_ssm::LmError> for ModelError {
    fn from(e: viper_ssm::LmError) -> Self {
        match e {
            viper_ssm::LmError::Io { path, source } => ModelError::Io { path, source },
            viper_ssm::LmError::ConfigParse { path, reason } => ModelError::ConfigParse { path, reason },
            viper_ssm::LmError::File(e) => ModelError::File(e),
            viper_ssm::LmError::ConfigLimit { field, value, min, max } => {
                ModelError::ConfigLimit { field, value, min, max }
            }
            viper_ssm::LmError::Config(reason) => ModelError::Config(reason),
            viper_ssm::LmError::Checkpoint(e) => ModelError::Checkpoint(e),
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

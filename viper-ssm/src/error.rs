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
    /// `config.json` is not a regular file (a FIFO, a device such as `/dev/zero`) or is beyond its size
    /// cap; it was not read.
    #[error(transparent)]
    File(viper_io::FileError),
    /// A size in `config.json` is outside the range accepted
    /// ([`CONFIG_LIMITS`](crate::limits::CONFIG_LIMITS)); checked before the config is used.
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
    Checkpoint(#[from] CheckpointError),
}

impl From<viper_io::FileError> for LmError {
    fn from(e: viper_io::FileError) -> Self {
        match e {
            viper_io::FileError::Io { path, source } => LmError::Io { path, source },
            other => LmError::File(other),
        }
    }
}

impl From<ConfigError> for LmError {
    fn from(e: ConfigError) -> Self {
        LmError::Config(e.0)
    }
}

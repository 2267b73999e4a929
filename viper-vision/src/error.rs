//! The error type of this crate.

use std::path::PathBuf;

use viper_checkpoint::CheckpointError;

/// Everything that can go wrong configuring, loading or running the image path.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// A config file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A config file is not a regular file (a FIFO, a device) or is beyond its size cap; it was not read.
    #[error(transparent)]
    File(viper_io::FileError),
    /// A config does not parse: not JSON, a field of the wrong type, a negative size.
    #[error("{origin}: {reason}")]
    ConfigParse {
        /// The file, or `JSON` for an in-memory value.
        origin: String,
        /// What serde said.
        reason: String,
    },
    /// A config parses but describes nothing this crate can run.
    #[error("invalid vision config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending key (`hidden_size`, `hidden_act`, `mm_projector_type`, …).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// [`ClipVisionConfig::from_name`](crate::ClipVisionConfig::from_name) does not know the model.
    #[error("unknown CLIP vision model `{0}` (known: {known})", known = crate::hub::KNOWN_MODELS.join(", "))]
    UnknownModel(String),
    /// `mm_projector_type` and the projector tensors in the checkpoint describe different projectors.
    #[error("mm_projector_type `{config}` does not match the checkpoint, which stores {found}")]
    ProjectorMismatch {
        /// The type named by the config.
        config: String,
        /// What the tensor names say.
        found: String,
    },
    /// Weights are missing, misshapen or stored in an unusable type.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// `pixel_values` do not have the shape the tower was configured for.
    #[error("pixel_values have shape {found:?}, expected [n >= 1, {channels}, {size}, {size}]")]
    PixelShape {
        /// The shape passed in.
        found: Vec<usize>,
        /// `num_channels`.
        channels: usize,
        /// `image_size`.
        size: usize,
    },
    /// Tensors or geometry passed to the projector or the merge that do not fit together.
    #[error("invalid input: {0}")]
    Input(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, VisionError>;

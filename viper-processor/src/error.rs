//! The crate's error type.

use std::fmt;
use std::path::PathBuf;

/// Where an image came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file on disk.
    File(PathBuf),
    /// Bytes or pixels handed over in memory.
    Memory,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Memory => f.write_str("in-memory image"),
        }
    }
}

/// Everything that can go wrong while decoding or preprocessing an image.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// The file could not be opened or read.
    #[error("{origin}: cannot read: {source}")]
    Io {
        /// The file.
        origin: Origin,
        /// The cause.
        source: std::io::Error,
    },
    /// The path is not a regular file (a FIFO, a device, a directory); it was not opened for reading.
    #[error(transparent)]
    File(viper_io::FileError),
    /// The encoded image is larger than allowed ([`ImageLoader::max_bytes`](crate::ImageLoader::max_bytes));
    /// nothing was decoded.
    #[error("{origin}: {bytes} bytes of encoded image or more, beyond the limit of {max_bytes} bytes")]
    TooManyBytes {
        /// The input.
        origin: Origin,
        /// Its size (for a file that grows while read, what was read before the limit was passed).
        bytes: u64,
        /// The limit in force.
        max_bytes: u64,
    },
    /// The header declares a width or height beyond
    /// [`ImageLoader::max_dimension`](crate::ImageLoader::max_dimension); nothing was decoded.
    #[error("{origin}: {width}x{height} image is beyond the limit of {max_dimension} pixels per side")]
    DimensionTooLarge {
        /// The input.
        origin: Origin,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit in force.
        max_dimension: u32,
    },
    /// The input holds no bytes at all.
    #[error("{origin}: empty input, no image data")]
    Empty {
        /// The input.
        origin: Origin,
    },
    /// The bytes do not start with the signature of a supported format.
    #[error("{origin}: unsupported image format ({format}); expected PNG, JPEG, WebP, GIF, BMP or TIFF")]
    UnsupportedFormat {
        /// The input.
        origin: Origin,
        /// The format that was recognised, or "unrecognised signature".
        format: String,
    },
    /// The image header declares a width or height of zero.
    #[error("{origin}: {width}x{height} image has no pixels")]
    NoPixels {
        /// The input.
        origin: Origin,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// The header declares more pixels than allowed (a possible decompression bomb); nothing was decoded.
    #[error("{origin}: {width}x{height} image has {} pixels, more than the limit of {max_pixels} (possible decompression bomb)", u64::from(*width) * u64::from(*height))]
    TooManyPixels {
        /// The input.
        origin: Origin,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit in force.
        max_pixels: u64,
    },
    /// The decoder rejected the data: truncated or corrupt file, or an allocation limit was hit.
    #[error("{origin}: cannot decode {format}: {source}")]
    Decode {
        /// The input.
        origin: Origin,
        /// The format being decoded.
        format: String,
        /// The decoder's error.
        source: image::ImageError,
    },
    /// `image_grid_pinpoints` is malformed.
    #[error("invalid image_grid_pinpoints {value}: {reason}")]
    Pinpoints {
        /// The value as found in the configuration.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is beyond what this crate accepts; checked before anything is allocated
    /// for it.
    #[error("{field} is {value}, beyond the limit of {limit}")]
    Limit {
        /// What is limited, e.g. "the number of image_grid_pinpoints".
        field: &'static str,
        /// The value found (for a range of pinpoints, the number it would expand to).
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// The preprocessing configuration is inconsistent or asks for something this crate does not do.
    #[error("invalid preprocessing configuration: {0}")]
    Config(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ProcessorError>;

//! Bounded reads of the files a checkpoint or a user supplies, and atomic writes of outputs.
//!
//! Every loader of viper reads its files through [`read_capped`] (or opens them with
//! [`open_regular`]): a path is followed through symlinks and must name a regular file, checked
//! *before* it is opened, so a FIFO, a socket, a device such as `/dev/zero` or a directory is a
//! [`FileError::NotAFile`] instead of a hang or an endless read. The file is then opened non-blocking
//! (on unix), so one swapped for a FIFO between the check and the open cannot block either, and
//! checked again through its handle. At most `cap` bytes are read; a larger file is a
//! [`FileError::TooLarge`] naming the cap, whether its size is known up front or it grows while read.
//!
//! The caps of the files a checkpoint directory holds are the constants of this crate, so every crate
//! applies the same ones: [`MAX_CONFIG_BYTES`], [`MAX_TOKENIZER_BYTES`], [`MAX_TEMPLATE_BYTES`].
//!
//! [`write_atomic`] writes an output through a temporary file in the same directory renamed over the
//! target, so a run killed at any moment leaves either the old file or the complete new one;
//! [`check_output_file`] tells, before any work starts, whether a path can be written that way.
//!
//! ```no_run
//! # fn f() -> Result<(), viper_io::FileError> {
//! let text = viper_io::read_capped_to_string("checkpoint/config.json".as_ref(), viper_io::MAX_CONFIG_BYTES)?;
//! viper_io::check_output_file("out/answer.json".as_ref())?;
//! viper_io::write_atomic("out/answer.json".as_ref(), text.as_bytes())?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Cap of a JSON configuration file: `config.json`, `tokenizer_config.json`,
/// `special_tokens_map.json`, `preprocessor_config.json`, `model.safetensors.index.json` (16 MiB;
/// published ones are a few KB, a tokenizer config with every added token a few MB).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Cap of `tokenizer.json` (64 MiB; the largest published tokenizers are about 35 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;
/// Cap of a Jinja chat template file, `chat_template.jinja` (1 MiB; published ones are a few KB).
pub const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// What a path names when it is not a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A FIFO (named pipe): reading it blocks until a writer comes, and may never end.
    Fifo,
    /// A unix socket.
    Socket,
    /// A character device such as `/dev/zero` or a terminal.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// Anything else the platform reports.
    Other,
}

impl FileKind {
    fn of(metadata: &Metadata) -> Self {
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            return Self::Directory;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if file_type.is_fifo() {
                return Self::Fifo;
            }
            if file_type.is_socket() {
                return Self::Socket;
            }
            if file_type.is_char_device() {
                return Self::CharDevice;
            }
            if file_type.is_block_device() {
                return Self::BlockDevice;
            }
        }
        Self::Other
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Directory => "a directory",
            Self::Fifo => "a FIFO (named pipe)",
            Self::Socket => "a socket",
            Self::CharDevice => "a character device",
            Self::BlockDevice => "a block device",
            Self::Other => "not a plain file",
        })
    }
}

/// Why a file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The operating system refused: missing file, permissions, invalid UTF-8 where text is expected…
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The path names something other than a regular file (checked before opening it).
    #[error("{} is {kind}, not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: FileKind,
    },
    /// The file holds more bytes than the cap for its kind; nothing beyond the cap was read.
    #[error("{} holds {size} bytes or more, beyond the limit of {cap} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size, or how much was read before the cap was passed.
        size: u64,
        /// The cap in force.
        cap: u64,
    },
    /// An output cannot be written: its directory is missing or unwritable, or the write failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The output path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl FileError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::NotAFile { path, .. }
            | Self::TooLarge { path, .. }
            | Self::Write { path, .. } => path,
        }
    }
}

/// Opens `path` for reading if it is a regular file, returning the file and its length.
///
/// The type is checked on the path (following symlinks) before opening, then again on the handle;
/// on unix the file is opened with `O_NONBLOCK`, which changes nothing for a regular file and keeps a
/// FIFO swapped in between the two checks from blocking the open.
pub fn open_regular(path: &Path) -> Result<(File, u64), FileError> {
    let io = |source| FileError::Io { path: path.to_path_buf(), source };
    let regular = |metadata: Metadata| {
        if metadata.is_file() {
            Ok(metadata.len())
        } else {
            Err(FileError::NotAFile { path: path.to_path_buf(), kind: FileKind::of(&metadata) })
        }
    };
    regular(std::fs::metadata(path).map_err(io)?)?;
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(io)?;
    let len = regular(file.metadata().map_err(io)?)?;
    Ok((file, len))
}

/// Reads the regular file at `path` whole, if it holds at most `cap` bytes.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, FileError> {
    let (file, len) = open_regular(path)?;
    let too_large = |size| FileError::TooLarge { path: path.to_path_buf(), size, cap };
    if len > cap {
        return Err(too_large(len));
    }
    // The length can lie (procfs reports 0) or grow while reading: read one byte past the cap to tell.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Io { path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > cap {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read_capped`] for a UTF-8 text file.
pub fn read_capped_to_string(path: &Path, cap: u64) -> Result<String, FileError> {
    String::from_utf8(read_capped(path, cap)?).map_err(|e| FileError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("not valid UTF-8: {e}")),
    })
}

/// The directory an output file goes to (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Checks, before any work starts, that [`write_atomic`] can write `path`: if it exists it must be a
/// regular file (not a directory, FIFO or device), and its directory must exist and accept a new
/// file (a temporary file is created there and removed).
pub fn check_output_file(path: &Path) -> Result<(), FileError> {
    let write = |source| FileError::Write { path: path.to_path_buf(), source };
    match std::fs::metadata(path) {
        Ok(metadata) if !metadata.is_file() => {
            return Err(FileError::NotAFile { path: path.to_path_buf(), kind: FileKind::of(&metadata) })
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write(e)),
    }
    let dir = parent_dir(path);
    match std::fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => {
            return Err(write(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", dir.display()),
            )))
        }
        Err(e) => return Err(write(io::Error::new(e.kind(), format!("directory {}: {e}", dir.display())))),
    }
    temporary_in(dir, path).map(drop).map_err(write)
}

fn temporary_in(dir: &Path, target: &Path) -> io::Result<tempfile::NamedTempFile> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // What `File::create` gives (0666 less the umask), not the temporary file's private 0600.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same directory, flushed to disk,
/// then renamed over `path`. Killed at any moment, this leaves either the old file or the new one
/// whole (and at worst a stray `.NAME.*.tmp` beside it); on error the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// [`write_atomic`] with the content produced by `write` into the temporary file.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> Result<(), FileError> {
    let error = |source| FileError::Write { path: path.to_path_buf(), source };
    if let Ok(metadata) = std::fs::metadata(path) {
        if !metadata.is_file() {
            return Err(FileError::NotAFile { path: path.to_path_buf(), kind: FileKind::of(&metadata) });
        }
    }
    let mut temporary = temporary_in(parent_dir(path), path).map_err(error)?;
    write(temporary.as_file_mut()).map_err(error)?;
    temporary.as_file().sync_all().map_err(error)?;
    temporary.persist(path).map_err(|e| error(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests;

//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading a tokenizer, rendering a conversation or
/// tokenising a prompt. Every variant names what failed and where (file, template, turn).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required file does not exist.
    #[error("missing file {path}")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A file is not a regular file (a FIFO, a device such as `/dev/zero`, a directory) or is beyond
    /// its size cap; it was not read.
    #[error(transparent)]
    File(viper_io::FileError),
    /// A JSON configuration file does not parse or has fields of the wrong type.
    #[error("{path} is not a valid tokenizer configuration: {source}")]
    Json {
        /// The file being parsed.
        path: PathBuf,
        /// The underlying parse error (with line and column).
        source: serde_json::Error,
    },
    /// A configuration file parses but its content cannot be used.
    #[error("{path}: {message}")]
    Config {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The `tokenizers` library failed: `tokenizer.json` does not parse, or encoding/decoding failed.
    #[error("tokenizer: {context}: {source}")]
    Tokenizer {
        /// What was being done (loading which file, encoding which chunk, ...).
        context: String,
        /// The error reported by `tokenizers`.
        source: tokenizers::Error,
    },
    /// The `tokenizers` library panicked (its regex engine fails that way, e.g. on a pathological
    /// pre-tokenizer pattern); the panic was caught.
    #[error("tokenizer: {context}: the tokenizers library failed: {message}")]
    TokenizerPanic {
        /// What was being done.
        context: String,
        /// The panic message.
        message: String,
    },
    /// A chat template does not compile or fails while rendering.
    #[error("chat template {template}: {source}")]
    Template {
        /// Where the template came from (file path or built-in name).
        template: String,
        /// The minijinja error, which carries the template line.
        source: minijinja::Error,
    },
    /// A chat template used up its instruction budget ([`RenderBudget::fuel`](crate::RenderBudget)):
    /// a loop far too long, or nested loops.
    #[error("chat template {template} ran out of its budget of {fuel} instructions")]
    TemplateBudget {
        /// Where the template came from.
        template: String,
        /// The budget in force.
        fuel: u64,
    },
    /// A chat template rendered more than
    /// [`RenderBudget::max_output_bytes`](crate::RenderBudget); rendering stopped there.
    #[error("chat template {template} rendered more than the limit of {limit} bytes")]
    PromptTooLarge {
        /// Where the template came from.
        template: String,
        /// The limit in force.
        limit: usize,
    },
    /// A chat template called `raise_exception(message)`.
    #[error("chat template {template} raised an exception: {message}")]
    TemplateException {
        /// Where the template came from (file path or built-in name).
        template: String,
        /// The message passed to `raise_exception`.
        message: String,
    },
    /// The number of `<image>` markers does not match the number of attached images.
    #[error("{location}: {markers} `<image>` marker(s) but {images} image(s)")]
    ImageCount {
        /// Which turn (or the rendered prompt) has the mismatch.
        location: String,
        /// `<image>` markers found in the text.
        markers: usize,
        /// Images attached.
        images: usize,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads a regular file of at most `cap` bytes, telling a missing file from other I/O errors.
pub(crate) fn read_file(path: PathBuf, cap: u64) -> Result<String> {
    viper_io::read_capped_to_string(&path, cap).map_err(|e| match e {
        viper_io::FileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::MissingFile { path }
        }
        viper_io::FileError::Io { source, .. } => Error::Io { path, source },
        other => Error::File(other),
    })
}

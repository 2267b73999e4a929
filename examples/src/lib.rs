/// Checkpoints by HuggingFace hub id: typed errors, resumable transfers, progress.
#[cfg(feature = "hub")]
pub mod hub;

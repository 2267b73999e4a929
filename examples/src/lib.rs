//! Shared code of the example binaries: the benchmarks' command lines ([`bench_args`]) and their
//! timing and report writer ([`timing`]), and (feature `hub`) checkpoints by hub id.

pub mod bench_args;
/// Checkpoints by HuggingFace hub id: typed errors, resumable transfers, progress.
#[cfg(feature = "hub")]
pub mod hub;
pub mod timing;

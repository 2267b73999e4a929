//! Shared code of the example binaries: the benchmarks' command lines ([`bench_args`]) and their
//! timing and report writer ([`timing`]), and (feature `hub`) checkpoints by hub id.

// `publish = false`: code shared by this crate's binaries, not a library API; the workspace's
// `missing_docs` is for the library crates.
#![allow(missing_docs)]

pub mod bench_args;
#[cfg(feature = "hub")]
pub mod hub;
pub mod timing;

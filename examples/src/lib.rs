//! Shared code of the example binaries: the benchmarks' command lines ([`bench_args`]) and their
//! timing and report writer ([`timing`]).

pub mod bench_args;
pub mod timing;

//! The CLI and its helpers, one test binary (one link of the CLI's dependency tree).
//!
//! Cargo builds and links each file under `tests/` as its own binary; one binary per crate keeps
//! CI's build of the test suite short (`.ci/run`).

mod bench_args;
mod cli;
mod hub;

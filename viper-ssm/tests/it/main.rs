//! viper-ssm's integration tests but `load_memory` (which reads the process's own memory counters), one test binary.
//!
//! Cargo builds and links each file under `tests/` as its own binary; one binary per crate keeps
//! CI's build of the test suite short (`.ci/run`).

mod falcon_mamba;
mod kernels;
mod mixer;

//! The processor's integration tests, one test binary.
//!
//! Cargo builds and links each file under `tests/` as its own binary; one binary per crate keeps
//! CI's build of the test suite short (`.ci/run`).

mod bad_input;
mod parallel;
mod pillow_parity;

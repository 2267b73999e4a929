//! End-to-end parity tests live in `tests/`; this library is empty.

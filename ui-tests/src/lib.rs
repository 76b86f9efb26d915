//! Compile-fail and compile-pass cases for the transport macros; see `tests/ui.rs`.

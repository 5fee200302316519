//! The bodies of the fuzz targets, shared with the smoke tests.
//!
//! Each target module has a `Target` type: `Target::new()` sets up what every input
//! needs (a scratch folder, a fixed tokenizer…) and `Target::run(&[u8])` feeds one input
//! to the library's own entry points. A target passes when `run` returns, whatever the
//! entry points answered: `Err` is the right answer to bad bytes, a panic, an abort
//! (a failed allocation under the memory cap) or a hang is a bug.
//!
//! The fuzz targets in `fuzz_targets/` call these through this library; the smoke tests
//! (`crates/attn/tests/fuzz_smoke.rs`, `crates/attn-serve/tests/fuzz_smoke.rs`) include
//! the same files with `#[path]`, so the modules refer to each other as `crate::…` and
//! use nothing but the public APIs of `attn` and `attn-serve`.

pub mod known;
pub mod labelled;
pub mod model_folder;
pub mod mutate;
pub mod request_json;
pub mod scratch;
pub mod smoke;
pub mod tokenizer_json;

//! Reading, cleaning and splitting text, and cutting it into language-model batches.

pub mod dedup;
pub mod labelled;
pub mod lm;
pub mod minhash;
pub mod pii;
pub mod shards;
pub mod span;
pub mod stats;
pub mod stream;
mod text;

pub use lm::LmSplits;
pub use text::{normalize, read_corpus, read_text, Encoding};

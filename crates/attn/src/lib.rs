//! # attn
//!
//! Transformer language models in Rust: read and clean a corpus, train a tokenizer,
//! build a GPT-2-style model, train it with AdamW, save it as a Hugging Face folder,
//! generate from it and measure its perplexity. The command-line tool `attn` is a thin
//! shell over this library.
//!
//! ```no_run
//! use attn::train::{DataSpec, TrainConfig, Trainer};
//! use attn::data::Encoding;
//! # fn main() -> attn::Result<()> {
//! let config = TrainConfig::preset("shakespeare-char-cpu")?;
//! let data = DataSpec::text(vec!["input.txt".into()], Encoding::Utf8);
//! let mut trainer = Trainer::new(config, data, "out".as_ref())?;
//! let summary = trainer.run(&mut |_event| {})?;
//! println!("best validation loss {:?}", summary.best_val_loss);
//! # Ok(()) }
//! ```

pub mod checkpoint;
pub mod data;
pub mod engine;
mod error;
pub mod generate;
pub mod guard;
pub mod kernels;
pub mod metrics;
pub mod models;
pub mod rng;
pub mod tasks;
pub mod tokenizer;
mod tokenizer_fast;
pub mod train;

pub use error::{Error, Result};

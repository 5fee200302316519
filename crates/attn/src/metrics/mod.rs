//! Evaluation metrics.

pub mod perplexity;

pub use perplexity::{perplexity, Perplexity};

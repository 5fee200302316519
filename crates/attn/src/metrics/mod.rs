//! Evaluation metrics.

pub mod classification;
pub mod perplexity;

pub use classification::{classification_report, ClassificationReport};
pub use perplexity::{perplexity, Perplexity};

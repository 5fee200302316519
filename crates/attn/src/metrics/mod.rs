//! Evaluation metrics.

pub mod bleu;
pub mod chrf;
pub mod classification;
pub mod perplexity;
pub mod porter;
pub mod rouge;
pub mod sacre_tokenize;

pub use classification::{classification_report, ClassificationReport};
pub use perplexity::{perplexity, Perplexity};

//! `attn embed`: sentence embeddings from a BERT-style encoder (BERT, RoBERTa, XLM-RoBERTa, DistilBERT), one text per input line.

use std::path::PathBuf;

use attn::checkpoint::load_bert;
use attn::data::{read_text, Encoding};
use attn::{Error, Result};
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
pub enum Pooling {
    /// Mean of the token vectors over the attention mask (sentence-transformers).
    Mean,
    /// The first token's vector ([CLS]).
    Cls,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Model folder (an HF BERT, RoBERTa, XLM-RoBERTa or DistilBERT model, e.g. a sentence-transformers folder).
    #[arg(long)]
    model: PathBuf,
    /// Text file, one text per line.
    #[arg(long)]
    input: PathBuf,
    #[arg(long, default_value = "utf8")]
    encoding: Encoding,
    #[arg(long, value_enum, default_value_t = Pooling::Mean)]
    pooling: Pooling,
    /// Scale each embedding to unit length.
    #[arg(long)]
    normalize: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Print {"embeddings": [[...], ...]} (the default output is the same JSON).
    #[arg(long)]
    json: bool,
}

pub fn run(a: EmbedArgs) -> Result<()> {
    if a.batch_size == 0 {
        return Err(Error::invalid("batch-size", "must be at least 1"));
    }
    let loaded = load_bert(&a.model)?;
    let text = read_text(&a.input, a.encoding)?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return Err(Error::bad_file(&a.input, "no lines to embed"));
    }
    let mut encoded = Vec::with_capacity(lines.len());
    for line in &lines {
        encoded.push(loaded.tokenizer.encode_for_model(line, loaded.max_len)?);
    }
    let pooling = match a.pooling {
        Pooling::Mean => attn::engine::Pooling::Mean,
        Pooling::Cls => attn::engine::Pooling::Cls,
    };
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(lines.len());
    for chunk in encoded.chunks(a.batch_size) {
        let seqs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        out.extend(loaded.encoder.embed(&seqs, pooling, a.normalize)?);
    }
    crate::print_json(&serde_json::json!({ "embeddings": out }));
    Ok(())
}

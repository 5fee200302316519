//! `attn embed`: sentence embeddings from a BERT encoder, one text per input line.

use std::path::PathBuf;

use attn::checkpoint::load_bert;
use attn::data::{read_text, Encoding};
use attn::models::bert::{l2_normalize, mean_pool};
use attn::nn::{default_device, Mode};
use attn::{Error, Result};
use candle_core::Tensor;
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
    /// Model folder (an HF BERT model, e.g. a sentence-transformers folder).
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
    let loaded = load_bert(&a.model, &default_device())?;
    let text = read_text(&a.input, a.encoding)?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return Err(Error::bad_file(&a.input, "no lines to embed"));
    }
    let mut encoded = Vec::with_capacity(lines.len());
    for line in &lines {
        encoded.push(loaded.tokenizer.encode_for_model(line, loaded.max_len)?);
    }
    let pad = loaded.model.config.pad_token_id.unwrap_or(0);
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(lines.len());
    let dev = default_device();
    for chunk in encoded.chunks(a.batch_size) {
        let t = chunk.iter().map(|e| e.len()).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(chunk.len() * t);
        let mut mask = Vec::with_capacity(chunk.len() * t);
        for e in chunk {
            ids.extend(e.iter().copied().chain(std::iter::repeat(pad)).take(t));
            mask.extend((0..t).map(|i| u32::from(i < e.len())));
        }
        let ids = Tensor::from_vec(ids, (chunk.len(), t), &dev)?;
        let mask = Tensor::from_vec(mask, (chunk.len(), t), &dev)?;
        let o = loaded.model.forward(&ids, &mask, None, &mut Mode::Eval)?;
        let pooled = match a.pooling {
            Pooling::Mean => mean_pool(&o.last_hidden_state, &mask)?,
            Pooling::Cls => o.last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let pooled = if a.normalize {
            l2_normalize(&pooled)?
        } else {
            pooled
        };
        out.extend(pooled.to_vec2::<f32>()?);
    }
    crate::print_json(&serde_json::json!({ "embeddings": out }));
    Ok(())
}

//! `attn data`: corpus preparation commands (streaming, both cores).

use std::io::Write;
use std::path::PathBuf;

use attn::data::minhash::{MinHasher, Scheme, Shingle};
use attn::data::stream::LineBatches;
use attn::{Error, Result};
use clap::{Args, Subcommand};
use rayon::prelude::*;

#[derive(Subcommand)]
pub enum DataCommand {
    /// MinHash signatures of each line of a file, equal to the `datasketch` package's:
    /// one JSON line `{"signature": [...]}` per input line.
    Minhash(MinhashArgs),
}

#[derive(Args)]
pub struct MinhashArgs {
    /// Text file, one document per line (UTF-8).
    #[arg(long)]
    input: PathBuf,
    /// Permutations (values per signature).
    #[arg(long, default_value_t = 128)]
    num_perm: usize,
    /// Seed of the permutations (NumPy's RandomState seed, as datasketch uses it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Shingle size in words or characters.
    #[arg(long, default_value_t = 5)]
    ngram: usize,
    /// Shingles of words (k consecutive whitespace-separated words joined by one space)
    /// or of characters.
    #[arg(long, default_value = "word")]
    shingle: String,
    /// datasketch's permutation scheme: affine32 (its default since 2.0) or legacy.
    #[arg(long, default_value = "affine32")]
    scheme: String,
    /// One JSON object per line (the only output format).
    #[arg(long)]
    json: bool,
}

pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Minhash(a) => minhash(a),
    }
}

fn minhash(a: MinhashArgs) -> Result<()> {
    crate::at_least_1("--ngram", a.ngram)?;
    let kind = Shingle::parse(&a.shingle)?;
    let hasher = MinHasher::new(a.num_perm, a.seed, Scheme::parse(&a.scheme)?)?;
    let mut lines = LineBatches::open(&a.input)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| Error::io("stdout", e);
    loop {
        let batch = lines.next_batch(4096)?;
        if batch.is_empty() {
            break;
        }
        let rows: Vec<String> = batch
            .par_iter()
            .map(|t| {
                let sig = hasher.signature_of(t, a.ngram, kind);
                serde_json::json!({ "signature": sig }).to_string()
            })
            .collect();
        for r in rows {
            writeln!(out, "{r}").map_err(io)?;
        }
    }
    out.flush().map_err(io)
}

//! `attn tokenizer train`.

use std::path::PathBuf;

use attn::data::{read_corpus, Encoding};
use attn::tokenizer::Tokenizer;
use attn::Result;
use clap::{Args, Subcommand, ValueEnum};

#[derive(Subcommand)]
pub enum TokenizerCommand {
    /// Train a tokenizer on text files and save it as DIR/tokenizer.json.
    Train(TrainTokenizerArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    /// Byte-level BPE (GPT-2's scheme).
    Bpe,
    /// One token per character seen (vocabulary size is whatever the corpus has).
    Char,
}

#[derive(Args)]
pub struct TrainTokenizerArgs {
    /// Text files to learn from.
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// Vocabulary size for BPE (bytes and special tokens included).
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// Byte-level BPE, or one token per character.
    #[arg(long, value_enum, default_value_t = Kind::Bpe)]
    kind: Kind,
    /// Encoding of the data files: utf8 or latin1.
    #[arg(long, default_value = "utf8")]
    encoding: Encoding,
    /// Output folder (DIR/tokenizer.json is written).
    #[arg(long)]
    out: PathBuf,
    /// Write into a folder that already holds a model or tokenizer, replacing its
    /// tokenizer.json (a model with a new tokenizer no longer reads its own ids).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(cmd: TokenizerCommand) -> Result<()> {
    let TokenizerCommand::Train(a) = cmd;
    let inputs: Vec<&std::path::Path> = a.data.iter().map(|p| p.as_path()).collect();
    attn::guard::OutputDir::check("--out", &a.out, &inputs, a.overwrite)?;
    if matches!(a.kind, Kind::Bpe) {
        attn::train::check_bpe_size("--vocab-size", &a.vocab_size.to_string())?;
    }
    let corpus = read_corpus(&a.data, a.encoding)?;
    let tok = match a.kind {
        Kind::Bpe => Tokenizer::train_bpe(&corpus, a.vocab_size)?,
        Kind::Char => Tokenizer::train_char(&corpus)?,
    };
    let path = a.out.join("tokenizer.json");
    tok.save(&path)?;
    let n = tok.encode(&corpus)?.len();
    eprintln!(
        "saved {} ({} tokens; the corpus is {} characters, {} tokens)",
        path.display(),
        tok.vocab_size(),
        corpus.chars().count(),
        n
    );
    Ok(())
}

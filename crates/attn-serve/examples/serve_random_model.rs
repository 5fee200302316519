//! Write a model folder with a preset's shape and random (GPT-2-initialised) weights,
//! for serving tests and load figures without a training run:
//!
//! ```sh
//! cargo run --release -p attn-serve --example serve_random_model -- \
//!     gpt2-small /work/shared/data/tinyshakespeare/input.txt runs/gpt2-small-random [BPE_VOCAB]
//! ```
//!
//! The tokenizer is trained on the given text: char-level for the `shakespeare-char*`
//! presets; for `gpt2-small` a byte-level BPE of `BPE_VOCAB` tokens (default 8192) while
//! the model keeps GPT-2's vocabulary of 50257, so every step computes the full-size
//! output head (ids past the tokenizer's are never sampled).

use std::path::PathBuf;

use attn::checkpoint::save_random_gpt2;
use attn::models::gpt2::Gpt2Config;
use attn::tokenizer::Tokenizer;
use attn::train::TrainConfig;

fn main() -> attn::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: serve_random_model PRESET TEXT_FILE OUT_DIR [BPE_VOCAB]");
        std::process::exit(2);
    }
    let preset = TrainConfig::preset(&args[0])?;
    let text = std::fs::read_to_string(&args[1]).map_err(|e| attn::Error::io(&args[1], e))?;
    let out = PathBuf::from(&args[2]);
    let (tok, vocab) = if preset.tokenizer == "char" {
        let tok = Tokenizer::train_char(&text)?;
        let v = tok.vocab_size();
        (tok, v)
    } else {
        let bpe: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(8192);
        (Tokenizer::train_bpe(&text, bpe)?, 50257)
    };
    let mut cfg = Gpt2Config::new(
        vocab,
        preset.block_size,
        preset.n_embd,
        preset.n_layer,
        preset.n_head,
    );
    cfg.set_dropout(0.0);
    cfg.eos_token_id = tok.eos_id();
    cfg.bos_token_id = tok.eos_id();
    let n_params = save_random_gpt2(&out, &cfg, &tok, 1234)?;
    eprintln!(
        "wrote {}: {} layers, {} wide, context {}, vocab {} (tokenizer {}), {:.1}M parameters",
        out.display(),
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_positions,
        cfg.vocab_size,
        tok.vocab_size(),
        n_params as f64 / 1e6
    );
    Ok(())
}

//! Generation past the context window: once the cache holds `context` tokens, the most
//! recent half is kept and re-read. Every token generated that way (by the engine, with
//! its cache) must be the one a plain, cache-free forward pass over the same
//! window gives, drawn by the same seeded sampler (greedy decoding of these random
//! models repeats one token, which would prove nothing).

use std::path::PathBuf;

use attn::engine::Decoder;
use attn::generate::{generate_ids, Sampler, SamplingConfig};
use attn::models::CausalLm;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn sampling() -> SamplingConfig {
    SamplingConfig {
        temperature: 1.0,
        seed: 7,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Tokens by the documented rule, each from a full forward pass of its window.
fn by_the_rule(model: &dyn CausalLm, prompt: &[u32], n: usize, keep: usize) -> Vec<u32> {
    let ctx = model.context();
    let mut sampler = Sampler::new(sampling(), model.vocab_size());
    let mut history = prompt.to_vec();
    let mut window = prompt.to_vec();
    let mut out = vec![];
    while out.len() < n {
        let logits = model.logits_all(&[&window]).unwrap().remove(0);
        let v = model.vocab_size();
        let mut last = logits[(window.len() - 1) * v..].to_vec();
        let next = sampler.sample(&mut last, &history);
        out.push(next);
        history.push(next);
        if window.len() >= ctx {
            window = history[history.len() - keep..].to_vec();
        } else {
            window.push(next);
        }
    }
    out
}

#[test]
fn tokens_past_the_window_are_those_of_the_kept_window() {
    let engine = Decoder::load(&fixture("gpt2-tiny"), None).unwrap();
    let ctx = engine.context();
    assert_eq!(ctx, 64);
    let prompt: Vec<u32> = (0..10).map(|i| (i * 7 + 3) % 99).collect();
    // Three refills of the window: 10 + 180 tokens through a context of 64.
    let n = 180;
    let want = by_the_rule(&engine, &prompt, n, ctx / 2);
    let (got, _) = generate_ids(&engine, &prompt, n, &sampling(), &mut |_| true).unwrap();
    assert_eq!(got.len(), n);
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "first difference at token {first_diff:?}");
    // The check has teeth: the tokens vary, and keeping a window one token longer or
    // shorter after each refill gives another sequence.
    let mut distinct = want.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 20, "{want:?}");
    assert_ne!(by_the_rule(&engine, &prompt, n, ctx / 2 + 1), want);
    assert_ne!(by_the_rule(&engine, &prompt, n, ctx / 2 - 1), want);
}

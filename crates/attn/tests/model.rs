//! A GPT-2 through the interface generation, evaluation and the server use
//! ([`CausalLm`]: whole sequences and decoding sessions): causal masking, the KV cache,
//! the generation loop, and the model folder round trip.

mod common;

use attn::checkpoint;
use attn::engine::{Decoder, DecoderSpec};
use attn::generate::{full_logits, generate, SamplingConfig};
use attn::models::gpt2::Gpt2Config;
use attn::models::CausalLm;
use attn::tokenizer::Tokenizer;
use attn::train::native::NativeDecoder;

/// A head count that is not a power of two, and an odd vocabulary size.
fn tiny_config() -> Gpt2Config {
    let mut cfg = Gpt2Config::new(11, 16, 12, 2, 3);
    cfg.set_dropout(0.0);
    cfg
}

/// The tiny GPT-2 with weights from seed 42, on the engine.
fn tiny() -> Decoder {
    let cfg = tiny_config();
    let spec = DecoderSpec::from_gpt2(&cfg).unwrap();
    let w = NativeDecoder::init(&spec, (0.0, 0.0, 0.0), 42, 0.02)
        .unwrap()
        .tensors();
    Decoder::from_tensors(cfg.to_hf_json(), w, attn::kernels::WeightType::F32).unwrap()
}

/// Changing token t+1 never changes the logits at positions ≤ t.
#[test]
fn causal_mask_hides_the_future() {
    let model = tiny();
    let base: Vec<u32> = vec![1, 5, 2, 9, 10, 0, 3, 7];
    let before = rows(full_logits(&model, &base).unwrap(), base.len());
    for t in 0..base.len() - 1 {
        let mut changed = base.clone();
        changed[t + 1] = (changed[t + 1] + 3) % 11;
        let after = rows(full_logits(&model, &changed).unwrap(), changed.len());
        for p in 0..=t {
            for (a, b) in before[p].iter().zip(&after[p]) {
                assert!(
                    (a - b).abs() <= 1e-6,
                    "position {p} changed when token {} changed",
                    t + 1
                );
            }
        }
        // And the changed position itself does move.
        let moved = before[t + 1]
            .iter()
            .zip(&after[t + 1])
            .any(|(a, b)| (a - b).abs() > 1e-4);
        assert!(moved, "position {} ignored its own token", t + 1);
    }
}

/// Greedy decoding through a session (the KV cache) gives the tokens and logits of
/// full recomputation.
#[test]
fn kv_cache_equals_full_recompute() {
    let model = tiny();
    let mut ids: Vec<u32> = vec![3, 1, 4];
    let mut session = model.session();
    let mut step_input = ids.clone();
    for _ in 0..10 {
        let cached_last = session.feed(&step_input).unwrap();
        let full = rows(full_logits(&model, &ids).unwrap(), ids.len())
            .pop()
            .unwrap();
        let diff = cached_last
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-5, "cached logits differ by {diff}");
        let next_cached = argmax(&cached_last);
        assert_eq!(next_cached, argmax(&full));
        ids.push(next_cached);
        step_input = vec![next_cached];
        assert_eq!(session.len(), ids.len() - 1);
    }
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
        .unwrap() as u32
}

/// The generation loop (with cache) produces what greedy full recomputation produces.
#[test]
fn generate_matches_greedy_recompute_through_the_tokenizer() {
    let text = "abcdefghij\n";
    let tok = Tokenizer::train_char(text).unwrap();
    let model = tiny();
    let greedy = SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    };
    let mut streamed = String::new();
    let out = generate(&model, &tok, "abc", 9, &greedy, &[], &mut |s| {
        streamed.push_str(s);
        true
    })
    .unwrap();
    let mut ids = tok.encode("abc").unwrap();
    for _ in 0..9 {
        let logits = rows(full_logits(&model, &ids).unwrap(), ids.len())
            .pop()
            .unwrap();
        ids.push(argmax(&logits));
    }
    assert_eq!(out.ids, ids[3..]);
    assert_eq!(streamed, out.text);
    assert_eq!(out.text, tok.decode(&ids[3..]).unwrap());
}

/// Saving a model folder and loading it gives bit-identical tensors and logits.
#[test]
fn checkpoint_round_trip_is_bit_exact() {
    let dir = common::temp_dir("roundtrip");
    let tok = Tokenizer::train_char("abcdefghij\n").unwrap();
    let cfg = tiny_config();
    checkpoint::save_random_gpt2(&dir, &cfg, &tok, 42).unwrap();
    let spec = DecoderSpec::from_gpt2(&cfg).unwrap();
    let want = NativeDecoder::init(&spec, (0.0, 0.0, 0.0), 42, 0.02)
        .unwrap()
        .tensors();
    let got = checkpoint::read_weights(&dir).unwrap();
    assert_eq!(got.len(), want.len());
    for (name, (v, shape)) in &want {
        let (g, s) = &got[name];
        assert_eq!(s, shape, "{name}");
        assert!(
            v.iter().zip(g).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name} changed"
        );
    }
    let (loaded, tok2) = checkpoint::load_decoder(&dir).unwrap();
    assert_eq!(tok2.vocab_size(), tok.vocab_size());
    assert_eq!(loaded.spec.d_model, 12);
    let ids = [1u32, 2, 3, 4];
    let l1 = full_logits(&tiny(), &ids).unwrap();
    let l2 = full_logits(&loaded, &ids).unwrap();
    assert!(l1.iter().zip(&l2).all(|(p, q)| p.to_bits() == q.to_bits()));
    std::fs::remove_dir_all(&dir).ok();
}

/// Logits `[t, vocab]` as rows.
fn rows(flat: Vec<f32>, t: usize) -> Vec<Vec<f32>> {
    flat.chunks(flat.len() / t).map(<[f32]>::to_vec).collect()
}

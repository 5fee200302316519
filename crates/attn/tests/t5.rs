//! T5 on the engine against transformers' `T5ForConditionalGeneration` (fixtures
//! `t5-v1_0`: ReLU MLP, head tied to the embedding and its input scaled by d^-0.5;
//! `t5-v1_1`: gated GELU, a head of its own, 5 heads and 3 decoder layers; both with
//! d_kv × heads ≠ d_model and odd vocabularies, from `scripts/make_hf_fixtures.py`).

use std::collections::HashMap;

mod common;

use attn::engine::{Seq2Seq, Want};
use common::Ref;

const T5S: [&str; 2] = ["t5-v1_0", "t5-v1_1"];

fn reference(name: &str) -> HashMap<String, Ref> {
    common::read_reference(&common::hf_fixture(name).join("reference.safetensors"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Rows of an int matrix, each cut at its first negative value (padding of the fixture).
fn rows_until_negative(t: &Ref) -> Vec<Vec<u32>> {
    let cols = *t.shape.last().unwrap();
    t.v.chunks(cols)
        .map(|r| {
            r.iter()
                .take_while(|&&x| x >= 0.0)
                .map(|&x| x as u32)
                .collect()
        })
        .collect()
}

/// The fixture's sources without padding and its decoder inputs.
fn inputs(r: &HashMap<String, Ref>) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let rows = r["input_ids"].id_rows();
    let mask = r["attention_mask"].id_rows();
    let srcs: Vec<Vec<u32>> = rows
        .iter()
        .zip(&mask)
        .map(|(row, m)| row[..m.iter().sum::<u32>() as usize].to_vec())
        .collect();
    assert!(srcs[1].len() < rows[1].len(), "the fixture pads a source");
    (srcs, r["decoder_input_ids"].id_rows())
}

/// transformers' relative-position buckets for every distance in [−2048, 2048], in both
/// directions, for the fixtures' bucket counts and T5's defaults (32, 128).
#[test]
fn relative_buckets_match_transformers() {
    use attn::models::t5::relative_bucket;
    let mut checked = 0;
    for name in T5S {
        let r = reference(name);
        for (key, t) in r.iter().filter(|(k, _)| k.starts_with("buckets.")) {
            let parts: Vec<&str> = key.split('.').collect();
            let (nb, md): (usize, usize) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
            let bi = parts[3] == "bi";
            assert_eq!(t.v.len(), 4097);
            for (i, &want) in t.v.iter().enumerate() {
                let rel = i as i64 - 2048;
                let got = relative_bucket(rel, bi, nb, md);
                assert_eq!(got as f64, want, "{key}: distance {rel}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "bucket tables checked: {checked}");
}

/// The encoder's final states of unpadded sources, and the logits of every decoder
/// position — both rows as one ragged batch (the second in two pieces) and token by
/// token through the caches — match transformers' (which padded and masked).
#[test]
fn t5_engine_matches_transformers() {
    for name in T5S {
        let r = reference(name);
        let model = Seq2Seq::load(&common::hf_fixture(name)).unwrap();
        let (srcs, dec) = inputs(&r);
        let refs: Vec<&[u32]> = srcs.iter().map(|s| s.as_slice()).collect();
        let enc = model.encode(&refs).unwrap();
        let want_enc = &r["encoder_last_hidden_state"];
        let (rows, c) = (want_enc.shape[1], want_enc.shape[2]);
        let mut worst = 0f32;
        for (i, s) in srcs.iter().enumerate() {
            let want = &want_enc.f32()[i * rows * c..][..s.len() * c];
            let d = max_abs_diff(&enc[i], want);
            assert!(d <= 1e-4, "{name} row {i} encoder: {d}");
            worst = worst.max(d);
        }
        let mems = model.memories(&refs).unwrap();
        let want = r["logits"].f32();
        let per_row = want.len() / dec.len();
        let v = model.vocab_size();
        let (mut s0, mut s1) = (model.new_state(), model.new_state());
        let split = dec[1].len() / 2;
        let first = model
            .decode(
                &[&mems[0], &mems[1]],
                &mut [&mut s0, &mut s1],
                &[&dec[0], &dec[1][..split]],
                Want::All,
            )
            .unwrap();
        let rest = model
            .decode(&[&mems[1]], &mut [&mut s1], &[&dec[1][split..]], Want::All)
            .unwrap();
        let got1: Vec<f32> = first[1].iter().chain(&rest[0]).copied().collect();
        for (i, got) in [&first[0], &got1].into_iter().enumerate() {
            let d = max_abs_diff(got, &want[i * per_row..(i + 1) * per_row]);
            assert!(d <= 1e-4, "{name} row {i} logits: {d}");
            worst = worst.max(d);
        }
        let (mut s0, mut s1) = (model.new_state(), model.new_state());
        for t in 0..dec[0].len() {
            let out = model
                .decode(
                    &[&mems[0], &mems[1]],
                    &mut [&mut s0, &mut s1],
                    &[&dec[0][t..t + 1], &dec[1][t..t + 1]],
                    Want::Last,
                )
                .unwrap();
            for (i, got) in out.iter().enumerate() {
                let at = i * per_row + t * v;
                let d = max_abs_diff(got, &want[at..at + v]);
                assert!(d <= 1e-4, "{name} row {i} step {t}: {d}");
                worst = worst.max(d);
            }
        }
        // The decoder's final states (before the head's scaling).
        let mut st = model.new_state();
        let hidden = model
            .decode(&[&mems[0]], &mut [&mut st], &[&dec[0]], Want::Hidden)
            .unwrap();
        let want_h = r["decoder_last_hidden_state"].f32();
        let d = max_abs_diff(&hidden[0], &want_h[..hidden[0].len()]);
        assert!(d <= 1e-4, "{name} decoder states: {d}");
        eprintln!(
            "{name}: encoder states, decoder states and logits within {worst:.3e} of transformers"
        );
    }
}

/// Greedy and 4-beam decoding (early stopping, length penalty 1, 10 new tokens, no
/// forced end), and both with the summarizer's rules (no repeated 2- or 3-grams, at
/// least 4 or 5 tokens, length penalty 0.8) give transformers' `generate` tokens on 50
/// sources, each alone and all in one batch.
#[test]
fn t5_greedy_and_beam_search_match_transformers_generate() {
    use attn::generate::beam::{translate, translate_batch, BeamConfig};
    for name in T5S {
        let r = reference(name);
        let model = Seq2Seq::load(&common::hf_fixture(name)).unwrap();
        let srcs = rows_until_negative(&r["gen_sources"]);
        assert_eq!(srcs.len(), 50);
        let refs: Vec<&[u32]> = srcs.iter().map(|s| s.as_slice()).collect();
        for (key, beams, lp, no_repeat, min_new) in [
            ("gen_greedy", 1, 1.0, 0, 0),
            ("gen_beam4", 4, 1.0, 0, 0),
            ("gen_greedy_rules", 1, 1.0, 2, 4),
            ("gen_beam4_rules", 4, 0.8, 3, 5),
        ] {
            let want = rows_until_negative(&r[key]);
            let cfg = BeamConfig {
                num_beams: beams,
                length_penalty: lp,
                max_new_tokens: 10,
                forced_eos: false,
                suppress: Vec::new(),
                min_new_tokens: min_new,
                no_repeat_ngram_size: no_repeat,
            };
            let batched = translate_batch(&model, &refs, &cfg).unwrap();
            let mut ended = 0;
            for (i, src) in refs.iter().enumerate() {
                assert_eq!(want[i][0], model.spec.decoder_start);
                let expected = &want[i][1..];
                assert_eq!(
                    batched[i].ids, expected,
                    "{name} {key} source {i} (batched)"
                );
                if i % 10 == 0 {
                    let alone = translate(&model, src, &cfg).unwrap();
                    assert_eq!(alone.ids, expected, "{name} {key} source {i}");
                }
                ended += (expected.len() < 10) as usize;
            }
            eprintln!("{name} {key}: 50 of 50 identical ({ended} end before the limit)");
        }
    }
}

/// The largest difference between a gradient and its reference, relative to the
/// largest reference value of the tensor (at least 1e-3); it must be within 1e-4.
fn gradient_error(what: &str, got: &[f32], want: &Ref) -> f32 {
    let want = want.f32();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    let d = max_abs_diff(got, &want);
    assert!(
        d <= 1e-4 * scale,
        "gradient of {what} differs by {d} (largest {scale})"
    );
    d / scale
}

/// T5's training step on the engine: transformers' loss from labels (row 1 shorter,
/// its tail ignored) and the gradient of every parameter, each within 1e-4 of the
/// largest reference value of its tensor; the trained model handed to the inference
/// engine gives the same logits.
#[test]
fn t5_training_step_matches_transformers_gradients() {
    use attn::train::encdec::PairTrainer;
    use attn::train::t5::NativeT5;
    for name in T5S {
        let r = reference(name);
        let mut model = NativeT5::load(&common::hf_fixture(name)).unwrap();
        let (srcs, _) = inputs(&r);
        let labels = rows_until_negative(&r["labels"]);
        assert!(
            labels[1].len() < labels[0].len(),
            "labels of different lengths"
        );
        let pairs: Vec<(&[u32], &[u32])> = srcs
            .iter()
            .zip(&labels)
            .map(|(s, l)| (s.as_slice(), l.as_slice()))
            .collect();
        let loss = model.forward_backward(&pairs, 0.0, None).unwrap();
        let want = r["loss"].v[0];
        assert!((loss - want).abs() <= 1e-5, "{name} loss {loss} vs {want}");
        let (mut compared, mut worst) = (0, 0f32);
        for (pname, _) in model.names() {
            let want = r
                .get(&format!("grad.{pname}"))
                .unwrap_or_else(|| panic!("{name}: no reference gradient for {pname}"));
            worst = worst.max(gradient_error(pname, model.gradient(pname).unwrap(), want));
            compared += 1;
        }
        let references = r.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(
            compared, references,
            "{name}: every reference gradient compared"
        );
        eprintln!("{name}: loss {loss:.6} vs {want:.6}, {compared} gradients, worst relative difference {worst:.3e}");
        // Dropout changes the loss; evaluation without it does not.
        let dropped = model.loss(&pairs, 0.0, Some(7)).unwrap();
        let plain = model.loss(&pairs, 0.0, None).unwrap();
        assert!((plain - loss).abs() < 1e-9);
        let cfg_rate = model.config.dropout_rate;
        assert_eq!(
            cfg_rate == 0.0,
            (dropped - plain).abs() < 1e-12,
            "{name}: dropout {cfg_rate}"
        );
        let engine = model.to_engine().unwrap();
        let refs: Vec<&[u32]> = srcs.iter().map(|s| s.as_slice()).collect();
        let mems = engine.memories(&refs).unwrap();
        let dec = r["decoder_input_ids"].id_rows();
        let mut st = engine.new_state();
        let got = engine
            .decode(&[&mems[0]], &mut [&mut st], &[&dec[0]], Want::All)
            .unwrap();
        let want = r["logits"].f32();
        let d = max_abs_diff(&got[0], &want[..got[0].len()]);
        assert!(
            d <= 1e-4,
            "{name}: the trained model's engine logits differ by {d}"
        );
    }
}

/// With dropout (rate 0.2 at every site) and label smoothing, each tensor's gradient
/// g gives the loss's slope along g: (L(w + h·ĝ) − L(w − h·ĝ)) / 2h = |g| (ĝ = g/|g|),
/// under the same dropout masks. On the v1.1 fixture: its GELU is smooth, where v1.0's
/// ReLU puts kinks inside the finite-difference steps (its gradients without dropout
/// equal transformers' above).
#[test]
fn t5_dropout_gradients_match_finite_differences() {
    use attn::train::encdec::PairTrainer;
    use attn::train::fit::Trainable;
    use attn::train::t5::NativeT5;
    for name in ["t5-v1_1"] {
        let r = reference(name);
        let mut model = NativeT5::load(&common::hf_fixture(name)).unwrap();
        model.config.dropout_rate = 0.2;
        let (srcs, _) = inputs(&r);
        let labels = rows_until_negative(&r["labels"]);
        let pairs: Vec<(&[u32], &[u32])> = srcs
            .iter()
            .zip(&labels)
            .map(|(s, l)| (s.as_slice(), l.as_slice()))
            .collect();
        let (seed, smooth) = (Some(11), 0.1);
        model.zero_grads();
        let loss = model.forward_backward(&pairs, smooth, seed).unwrap();
        let plain = model.loss(&pairs, smooth, None).unwrap();
        assert!(
            (loss - plain).abs() > 1e-4,
            "{name}: dropout changed nothing"
        );

        let names: Vec<String> = model.names().map(|(n, _)| n.to_string()).collect();
        let mut worst = 0f64;
        for pname in &names {
            let g = model.gradient(pname).unwrap().to_vec();
            let norm = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            if norm < 1e-6 {
                continue;
            }
            let orig = model.param(pname).unwrap().to_vec();
            let h = 3e-3;
            let at = |sign: f64, model: &mut NativeT5| {
                for (i, (&w, &gi)) in orig.iter().zip(&g).enumerate() {
                    *model.param_mut(pname, i).unwrap() =
                        (w as f64 + sign * h * gi as f64 / norm) as f32;
                }
                model.loss(&pairs, smooth, seed).unwrap()
            };
            let (up, down) = (at(1.0, &mut model), at(-1.0, &mut model));
            for (i, &w) in orig.iter().enumerate() {
                *model.param_mut(pname, i).unwrap() = w;
            }
            let slope = (up - down) / (2.0 * h);
            let err = (slope - norm).abs() / norm;
            assert!(err < 2e-3, "{name} {pname}: |g| {norm} vs slope {slope}");
            worst = worst.max(err);
        }
        eprintln!("{name}: {} tensors' dropout gradients within {worst:.2e} (relative) of finite differences", names.len());
    }
}

/// A T5-style SentencePiece/Unigram `tokenizer.json` (NFKC, Metaspace, `$A </s>`,
/// sentinels as the last ids; `scripts/make_t5_tokenizer_fixture.py`) encodes and
/// decodes as the `tokenizers` library does: plain, with the end-of-sentence the model
/// input gets, and decoded with and without the special tokens.
#[test]
fn t5_unigram_tokenizer_matches_the_tokenizers_library() {
    use attn::tokenizer::Tokenizer;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5-tokenizer");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    assert_eq!(
        tok.vocab_size() as u64,
        cases["vocab_size"].as_u64().unwrap()
    );
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 50);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let plain = ids(&c["ids"]);
        assert_eq!(tok.encode(text).unwrap(), plain, "{text:?}");
        assert_eq!(
            tok.encode_for_model(text, 512).unwrap(),
            ids(&c["ids_with_specials"]),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&plain).unwrap(),
            c["decoded"].as_str().unwrap(),
            "{text:?}"
        );
        assert_eq!(
            tok.decode_clean(&plain).unwrap(),
            c["decoded_skip_special"].as_str().unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(
        tok.inner().token_to_id("<extra_id_0>"),
        Some(tok.vocab_size() as u32 - 1)
    );
}

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
        eprintln!("{name}: encoder states, decoder states and logits within {worst:.3e} of transformers");
    }
}

/// Greedy and 4-beam decoding (early stopping, length penalty 1, 10 new tokens, no
/// forced end) give transformers' `generate` tokens on 50 sources, each alone and all
/// in one batch.
#[test]
fn t5_greedy_and_beam_search_match_transformers_generate() {
    use attn::generate::beam::{translate, translate_batch, BeamConfig};
    for name in T5S {
        let r = reference(name);
        let model = Seq2Seq::load(&common::hf_fixture(name)).unwrap();
        let srcs = rows_until_negative(&r["gen_sources"]);
        assert_eq!(srcs.len(), 50);
        let refs: Vec<&[u32]> = srcs.iter().map(|s| s.as_slice()).collect();
        for (key, beams) in [("gen_greedy", 1), ("gen_beam4", 4)] {
            let want = rows_until_negative(&r[key]);
            let cfg = BeamConfig {
                num_beams: beams,
                length_penalty: 1.0,
                max_new_tokens: 10,
                forced_eos: false,
                suppress: Vec::new(),
            };
            let batched = translate_batch(&model, &refs, &cfg).unwrap();
            let mut ended = 0;
            for (i, src) in refs.iter().enumerate() {
                assert_eq!(want[i][0], model.spec.decoder_start);
                let expected = &want[i][1..];
                assert_eq!(batched[i].ids, expected, "{name} {key} source {i} (batched)");
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

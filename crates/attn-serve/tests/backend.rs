//! The server's GPT-2 back end (the inference engine, batched) gives the tensor-graph
//! model's logits for prompts, ragged prompt batches and decode steps.

mod common;

use attn::checkpoint::{load_causal_lm_graph, load_gpt2_engine};
use attn::generate::full_logits;
use attn_serve::backend::Backend;
use candle_core::Device;

#[test]
fn ragged_batch_steps_match_the_library_forward_pass() {
    let dir = common::tiny_model("backend");
    let reference = load_causal_lm_graph(&dir, &Device::Cpu).unwrap();
    let backend = Backend::gpt2(load_gpt2_engine(&dir).unwrap().0, true);
    assert!(backend.is_batched());
    let tok = &reference.tokenizer;
    // Three sequences of different lengths, each continued by the same five tokens.
    let prompts = ["R", "ROMEO: But", "JULIET: O Romeo, Romeo!"];
    let tail = tok.encode("light").unwrap();
    let mut seqs: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p).unwrap()).collect();
    let mut caches = Vec::new();
    let close = |a: &[f32], b: &[f32], what: &str| {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "{what}: max difference {d}");
    };
    for s in &seqs {
        let (cache, logits) = backend.prefill(s).unwrap();
        let want = full_logits(reference.model.as_ref(), s).unwrap();
        close(
            &logits,
            &want.get(s.len() - 1).unwrap().to_vec1::<f32>().unwrap(),
            "prefill",
        );
        caches.push(cache);
    }
    // The three prompts in one padded pass: same logits, and caches that the decode
    // steps below continue (the second half of the rows).
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    for ((cache, logits), s) in backend.prefill_many(&refs).unwrap().into_iter().zip(&seqs) {
        let want = full_logits(reference.model.as_ref(), s).unwrap();
        close(
            &logits,
            &want.get(s.len() - 1).unwrap().to_vec1::<f32>().unwrap(),
            "batched prefill",
        );
        assert_eq!(cache.len(), s.len());
        caches.push(cache);
    }
    seqs.extend(seqs.clone());
    for &id in &tail {
        let mut rows: Vec<_> = caches.iter_mut().map(|c| (c, id)).collect();
        let got = backend.step(&mut rows).unwrap();
        for (s, g) in seqs.iter_mut().zip(&got) {
            s.push(id);
            let want = full_logits(reference.model.as_ref(), s).unwrap();
            close(
                g,
                &want.get(s.len() - 1).unwrap().to_vec1::<f32>().unwrap(),
                "step",
            );
        }
    }
    // Attention maps: one [H, T, T] per layer.
    let maps = backend.attention(&seqs[1]).unwrap();
    assert_eq!(
        (maps.len(), maps[0].len(), maps[0][0].len()),
        (2, 4, seqs[1].len())
    );
}

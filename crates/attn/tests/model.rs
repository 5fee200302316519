//! The GPT-2 model: gradients (finite differences), causal masking, the KV cache, and
//! the checkpoint round trip.

mod common;

use std::collections::HashMap;

use attn::checkpoint;
use attn::generate::{full_logits, generate, SamplingConfig};
use attn::models::gpt2::{Gpt2, Gpt2Config};
use attn::nn::{KvCache, Mode, ParamBuilder, Params};
use attn::rng::Rng;
use attn::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};

fn tiny(dtype: DType, dropout: f32) -> (Gpt2, Params) {
    // A head count that is not a power of two, and an odd vocabulary size.
    let mut cfg = Gpt2Config::new(11, 16, 12, 2, 3);
    cfg.set_dropout(dropout);
    let mut pb = ParamBuilder::init(Rng::new(42), &Device::Cpu).with_dtype(dtype);
    let model = Gpt2::new(cfg, &mut pb).unwrap();
    (model, pb.finish().unwrap())
}

fn batch(dtype_ids: &[[u32; 7]; 2]) -> (Tensor, Tensor) {
    let x: Vec<u32> = dtype_ids.iter().flat_map(|r| r[..6].to_vec()).collect();
    let y: Vec<u32> = dtype_ids.iter().flat_map(|r| r[1..].to_vec()).collect();
    (
        Tensor::from_vec(x, (2, 6), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, (2, 6), &Device::Cpu).unwrap(),
    )
}

const IDS: [[u32; 7]; 2] = [[1, 5, 2, 9, 10, 0, 3], [4, 4, 7, 1, 8, 6, 2]];

/// Central differences in f64 against backprop for elements of every parameter tensor.
#[test]
fn gradients_match_finite_differences_for_every_parameter() {
    let (model, params) = tiny(DType::F64, 0.0);
    let (x, y) = batch(&IDS);
    let loss_of = || -> f64 {
        model
            .loss(&x, &y, &mut Mode::Eval)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let mut rng = Rng::new(1);
    let loss = model.loss(&x, &y, &mut Mode::Train(&mut rng)).unwrap();
    let grads = loss.backward().unwrap();
    let h = 1e-6;
    let mut checked = 0;
    for (name, var) in params.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let n = base.len();
        for k in 0..4 {
            let i = (k * 7919 + name.len()) % n;
            let set = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            };
            set(h);
            let up = loss_of();
            set(-h);
            let down = loss_of();
            set(0.0);
            let fd = (up - down) / (2.0 * h);
            let err = (fd - g[i]).abs() / (fd.abs().max(g[i].abs()).max(1e-6));
            assert!(
                err < 1e-4,
                "{name}[{i}]: backprop {} vs finite difference {fd} (rel err {err})",
                g[i]
            );
            checked += 1;
        }
    }
    // 4 elements of each of the 2 + 12·2 + 2 tensors.
    assert_eq!(checked, 4 * params.len());
    assert_eq!(params.len(), 2 + 12 * 2 + 2);
}

/// Every trainable parameter gets a non-zero gradient through the training path
/// (with dropout on), the path that candle's fused kernels would silently cut.
#[test]
fn every_parameter_receives_a_nonzero_gradient() {
    let (model, params) = tiny(DType::F32, 0.1);
    let (x, y) = batch(&IDS);
    let mut rng = Rng::new(5);
    let loss = model.loss(&x, &y, &mut Mode::Train(&mut rng)).unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in params.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}

/// Changing token t+1 never changes the logits at positions ≤ t.
#[test]
fn causal_mask_hides_the_future() {
    let (model, _) = tiny(DType::F32, 0.0);
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

/// Greedy decoding with the KV cache gives the tokens and logits of full recomputation.
#[test]
fn kv_cache_equals_full_recompute() {
    let (model, _) = tiny(DType::F32, 0.0);
    let mut ids: Vec<u32> = vec![3, 1, 4];
    let mut cache = KvCache::new(model.config.n_layer);
    let mut step_input = ids.clone();
    for _ in 0..10 {
        let x = Tensor::new(step_input.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let cached = model
            .forward(&x, Some(&mut cache), &mut Mode::Eval)
            .unwrap();
        let cached_last = cached
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .pop()
            .unwrap();
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
        assert_eq!(cache.len(), ids.len() - 1);
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
    let (model, _) = tiny(DType::F32, 0.0);
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

/// Saving and loading a model folder gives bit-identical tensors and logits.
#[test]
fn checkpoint_round_trip_is_bit_exact() {
    let dir = common::temp_dir("roundtrip");
    let tok = Tokenizer::train_char("abcdefghij\n").unwrap();
    let (model, params) = tiny(DType::F32, 0.0);
    checkpoint::save_gpt2(&dir, &model.config, &params, &tok, &serde_json::json!({})).unwrap();
    let loaded = checkpoint::load_gpt2(&dir, &Device::Cpu).unwrap();
    assert_eq!(loaded.model.config, model.config);
    let a: HashMap<_, _> = params.tensors().into_iter().collect();
    for (name, t) in loaded.params.tensors() {
        let x = a[&name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name} changed"
        );
    }
    assert_eq!(a.len(), loaded.params.len());
    let ids = [1u32, 2, 3, 4];
    let l1 = full_logits(&model, &ids).unwrap();
    let l2 = full_logits(&loaded.model, &ids).unwrap();
    assert!(l1.iter().zip(&l2).all(|(p, q)| p.to_bits() == q.to_bits()));
    std::fs::remove_dir_all(&dir).ok();
}

/// Logits `[t, vocab]` as rows.
fn rows(flat: Vec<f32>, t: usize) -> Vec<Vec<f32>> {
    flat.chunks(flat.len() / t).map(<[f32]>::to_vec).collect()
}

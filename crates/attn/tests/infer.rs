//! The decoder engine against the tensor-graph models it mirrors (GPT-2 and Llama):
//! same folder, same logits, for whole sequences, token-by-token decoding and ragged
//! batches; and its folders (every weight type) written and read back.

use attn::checkpoint::{load_gpt2, save_gpt2};
use attn::engine::{Decoder, Want};
use attn::generate::full_logits;
use attn::kernels::WeightType;
use attn::models::gpt2::{Gpt2, Gpt2Config};
use attn::nn::ParamBuilder;
use attn::rng::Rng;
use attn::tokenizer::Tokenizer;
use candle_core::Device;

/// A random GPT-2 saved as a folder; returns the folder.
fn random_gpt2(dir: &std::path::Path, act: &str, seed: u64) -> Gpt2Config {
    let mut config = Gpt2Config::new(96, 40, 64, 3, 4);
    config.activation_function = act.to_string();
    let mut pb = ParamBuilder::init(Rng::new(seed), &Device::Cpu);
    let _model = Gpt2::new(config.clone(), &mut pb).unwrap();
    let params = pb.finish().unwrap();
    // Non-zero biases and norms, so that every parameter is exercised.
    for (name, t) in params.tensors() {
        if name.contains("bias") || name.contains("ln_") {
            let noise = (t.randn_like(0.0, 0.1).unwrap() + t.clone()).unwrap();
            params.get(&name).unwrap().set(&noise).unwrap();
        }
    }
    let text: String = (0..96u8).map(|b| (b' ' + b % 90) as char).collect();
    let tok = Tokenizer::train_char(&text).unwrap();
    save_gpt2(dir, &config, &params, &tok, &serde_json::json!({})).unwrap();
    config
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn engine_logits_match_the_model_whole_incremental_and_batched() {
    for (i, act) in ["gelu_new", "gelu", "relu"].iter().enumerate() {
        let dir = tempfile_dir(&format!("engine-{act}"));
        let config = random_gpt2(&dir, act, 11 + i as u64);
        let lm = load_gpt2(&dir, &Device::Cpu).unwrap();
        let engine = Decoder::load(&dir, None).unwrap();
        assert_eq!(engine.weight_type(), WeightType::F32);
        let ids: Vec<u32> = (0..23)
            .map(|k| (k * 37 + 5) % config.vocab_size as u32)
            .collect();
        let want = rows(full_logits(&lm.model, &ids).unwrap(), ids.len());
        let want_flat: Vec<f32> = want.iter().flatten().copied().collect();

        // The whole sequence at once (GEMM path, more than 8 rows).
        let mut st = engine.new_state();
        let all = engine.forward(&mut [&mut st], &[&ids], Want::All).unwrap();
        assert!(
            max_rel(&all[0], &want_flat) < 1e-4,
            "{act}: whole {}",
            max_rel(&all[0], &want_flat)
        );

        // A 5-token prompt, then one token at a time (the small-batch path).
        let mut st = engine.new_state();
        let mut got = engine
            .forward(&mut [&mut st], &[&ids[..5]], Want::All)
            .unwrap()
            .remove(0);
        for k in 5..ids.len() {
            let l = engine
                .forward(&mut [&mut st], &[&ids[k..k + 1]], Want::Last)
                .unwrap()
                .remove(0);
            got.extend(l);
        }
        assert_eq!(st.len(), ids.len());
        assert!(
            max_rel(&got, &want_flat) < 1e-4,
            "{act}: incremental {}",
            max_rel(&got, &want_flat)
        );

        // Three sequences of different lengths and histories in one call.
        let (mut a, mut b, mut c) = (engine.new_state(), engine.new_state(), engine.new_state());
        engine
            .forward(&mut [&mut a], &[&ids[..7]], Want::Last)
            .unwrap();
        engine
            .forward(&mut [&mut b], &[&ids[..2]], Want::Last)
            .unwrap();
        let out = engine
            .forward(
                &mut [&mut a, &mut b, &mut c],
                &[&ids[7..8], &ids[2..6], &ids[..3]],
                Want::Last,
            )
            .unwrap();
        let v = config.vocab_size;
        for (got, pos) in out.iter().zip([7usize, 5, 2]) {
            let w = &want_flat[pos * v..(pos + 1) * v];
            assert!(
                max_rel(got, w) < 1e-4,
                "{act}: batch row at {pos}: {}",
                max_rel(got, w)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn engine_refuses_bad_input() {
    let dir = tempfile_dir("engine-bad");
    let config = random_gpt2(&dir, "gelu_new", 3);
    let engine = Decoder::load(&dir, None).unwrap();
    let mut st = engine.new_state();
    let too_big = config.vocab_size as u32;
    let e = engine
        .forward(&mut [&mut st], &[&[1, too_big]], Want::Last)
        .err()
        .unwrap();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let long: Vec<u32> = vec![1; config.n_positions + 1];
    assert!(engine
        .forward(&mut [&mut st], &[&long], Want::Last)
        .is_err());
    assert!(engine.forward(&mut [&mut st], &[&[]], Want::Last).is_err());
    assert_eq!(st.len(), 0, "a refused call changes nothing");
    let e = Decoder::load(&dir.join("missing"), None).err().unwrap();
    assert!(e.to_string().contains("config.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("attn-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn quantized_folders_round_trip_and_stay_close_to_f32() {
    let dir = tempfile_dir("engine-quant");
    let config = random_gpt2(&dir, "gelu_new", 5);
    let ids: Vec<u32> = (0..17)
        .map(|k| (k * 13 + 2) % config.vocab_size as u32)
        .collect();
    let run = |e: &Decoder| {
        let mut st = e.new_state();
        e.forward(&mut [&mut st], &[&ids], Want::All)
            .unwrap()
            .remove(0)
    };
    let reference = run(&Decoder::load(&dir, None).unwrap());
    // Largest logit error as a fraction of the largest logit, measured on this model
    // with the AVX-512, AVX2 and portable kernels: f16 1.8-3.2e-4, q8 5.6-7.3e-3, q4
    // 0.081-0.113 (the kernels round differently); bounds 1.6x the worst.
    for (ty, tol) in [
        (WeightType::F16, 5e-4),
        (WeightType::Q8, 1.2e-2),
        (WeightType::Q4, 0.18),
    ] {
        let engine = Decoder::load(&dir, Some(ty)).unwrap();
        let got = run(&engine);
        let err = max_rel(&got, &reference);
        eprintln!("{ty:?}: largest logit error {err:.3e} of the largest logit");
        assert!(err < tol, "{ty:?}: {err}");
        assert!(err > 0.0, "{ty:?} changed nothing");
        let out = tempfile_dir(&format!("engine-quant-{}", ty.name()));
        engine.save(&out, Some(&dir)).unwrap();
        assert!(out.join("tokenizer.json").is_file());
        let back = Decoder::load(&out, None).unwrap();
        assert_eq!(back.weight_type(), ty);
        assert_eq!(
            run(&back),
            got,
            "{ty:?}: the saved folder gives the same logits"
        );
        assert_eq!(
            back.weight_bytes_per_token(),
            engine.weight_bytes_per_token()
        );
        if ty.is_quantized() {
            let e = Decoder::load(&out, Some(WeightType::F32)).err().unwrap();
            assert!(e.to_string().contains("cannot be loaded as f32"), "{e}");
        } else {
            // f16 folders keep the Hugging Face layout: the tensor-graph model reads them.
            let lm = load_gpt2(&out, &Device::Cpu).unwrap();
            let g = rows(full_logits(&lm.model, &ids).unwrap(), ids.len());
            let g: Vec<f32> = g.into_iter().flatten().collect();
            assert!(
                max_rel(&g, &got) < 1e-4,
                "f16 folder in the graph model: {}",
                max_rel(&g, &got)
            );
        }
        let _ = std::fs::remove_dir_all(&out);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn attention_maps_are_causal_distributions() {
    let dir = tempfile_dir("engine-maps");
    let config = random_gpt2(&dir, "gelu_new", 9);
    let engine = Decoder::load(&dir, None).unwrap();
    let ids: Vec<u32> = (0..6).map(|k| k * 5 + 1).collect();
    let maps = engine.attention_maps(&ids).unwrap();
    assert_eq!(maps.len(), config.n_layer);
    assert_eq!(maps[0].len(), config.n_head);
    for layer in &maps {
        for head in layer {
            assert_eq!(head.len(), ids.len());
            for (q, row) in head.iter().enumerate() {
                assert_eq!(row.len(), ids.len());
                assert!(
                    row[q + 1..].iter().all(|&v| v == 0.0),
                    "no weight on later positions"
                );
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
            }
        }
    }
    // The first position can only attend to itself.
    assert!((maps[1][2][0][0] - 1.0).abs() < 1e-6);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn batched_generation_gives_each_sequence_its_own_decoding() {
    use attn::generate::{generate_ids, SamplingConfig};
    let dir = tempfile_dir("engine-gen");
    let config = random_gpt2(&dir, "gelu_new", 21);
    let engine = Decoder::load(&dir, None).unwrap();
    let lm = load_gpt2(&dir, &Device::Cpu).unwrap();
    let prompts: Vec<Vec<u32>> = vec![vec![3, 9, 27], vec![50], (10..22).collect()];
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    for temperature in [0.0, 0.9] {
        let sampling = SamplingConfig {
            temperature,
            seed: 40,
            ignore_eos: true,
            ..Default::default()
        };
        let batch = engine.generate_batch(&refs, 12, &sampling).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone = SamplingConfig {
                seed: 40 + i as u64,
                ..sampling.clone()
            };
            // Greedy decoding is compared with the tensor-graph model, sampling with the
            // engine decoding the sequence alone.
            let (want, _) = if temperature == 0.0 {
                generate_ids(&lm.model, p, 12, &alone, &mut |_| true).unwrap()
            } else {
                generate_ids(&engine, p, 12, &alone, &mut |_| true).unwrap()
            };
            assert_eq!(batch[i].0, want, "T={temperature} sequence {i}");
        }
    }
    let too_long: Vec<u32> = vec![1; config.n_positions];
    let e = engine
        .generate_batch(&[&too_long], 5, &SamplingConfig::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("context"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A random Llama (grouped key/value heads, untied head, biases where `bias`), saved as
/// a Hugging Face folder; every dimension a multiple of 32 so that all weight types
/// apply. Returns its config as written.
fn random_llama(dir: &std::path::Path, seed: u64, bias: bool) -> serde_json::Value {
    use attn::models::llama::{Llama, LlamaConfig};
    let config = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 48, "rms_norm_eps": 1e-5,
        "rope_theta": 500.0, "tie_word_embeddings": false,
        "attention_bias": bias, "mlp_bias": bias, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2,
    });
    let lc: LlamaConfig = serde_json::from_value(config.clone()).unwrap();
    let mut pb = ParamBuilder::init(Rng::new(seed), &Device::Cpu);
    let _model = Llama::new(lc, &mut pb).unwrap();
    let params = pb.finish().unwrap();
    // Norms and biases away from their initial ones and zeros (seeded noise, so that
    // the measured errors below are the same every run).
    let mut rng = Rng::new(seed + 100);
    for (name, t) in params.tensors() {
        if name.contains("norm") || name.contains("bias") {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let v: Vec<f32> = v.iter().map(|x| x + 0.1 * rng.normal() as f32).collect();
            let noisy = candle_core::Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
            params.get(&name).unwrap().set(&noisy).unwrap();
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    attn::checkpoint::write_safetensors(&dir.join("model.safetensors"), &params.tensors()).unwrap();
    let text: String = (0..96u8).map(|b| (b' ' + b % 90) as char).collect();
    Tokenizer::train_char(&text)
        .unwrap()
        .save(&dir.join("tokenizer.json"))
        .unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    config
}

#[test]
fn llama_on_the_engine_matches_the_graph_and_round_trips_every_weight_type() {
    use attn::checkpoint::load_llama_model;
    for bias in [false, true] {
        let dir = tempfile_dir(&format!("engine-llama-{bias}"));
        random_llama(&dir, 3, bias);
        let (graph, _) = load_llama_model(&dir, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..21).map(|k| (k * 29 + 3) % 96).collect();
        let graph_logits = |m: &dyn attn::models::CausalLm| -> Vec<f32> {
            let l = rows(full_logits(m, &ids).unwrap(), ids.len());
            l.into_iter().flatten().collect()
        };
        let want = graph_logits(&graph);
        let run = |e: &Decoder| {
            let mut st = e.new_state();
            e.forward(&mut [&mut st], &[&ids], Want::All)
                .unwrap()
                .remove(0)
        };
        let engine = Decoder::load(&dir, None).unwrap();
        let f32_err = max_rel(&run(&engine), &want);
        assert!(f32_err < 1e-5, "bias {bias}: f32 engine vs graph {f32_err}");
        // Saved as f32 it is the same folder again (the HF layout, split back into
        // q/k/v and gate/up projections).
        let out = tempfile_dir(&format!("engine-llama-f32-{bias}"));
        engine.save(&out, Some(&dir)).unwrap();
        let (again, _) = load_llama_model(&out, &Device::Cpu).unwrap();
        let g = graph_logits(&again);
        assert_eq!(g, want, "bias {bias}: the f32 folder written back");
        let _ = std::fs::remove_dir_all(&out);
        // Largest logit error as a fraction of the largest logit, measured (the same
        // with the AVX-512, AVX2 and portable kernels) without / with biases: f16
        // 3.7e-4 / 2.1e-4, q8 1.02e-2 / 5.8e-3, q4 0.180 / 0.103; bounds 1.6x the worst.
        for (ty, tol) in [
            (WeightType::F16, 6e-4),
            (WeightType::Q8, 1.6e-2),
            (WeightType::Q4, 0.29),
        ] {
            let q = Decoder::load(&dir, Some(ty)).unwrap();
            let got = run(&q);
            let out = tempfile_dir(&format!("engine-llama-{}-{bias}", ty.name()));
            q.save(&out, Some(&dir)).unwrap();
            let back = Decoder::load(&out, None).unwrap();
            assert_eq!(back.weight_type(), ty);
            assert_eq!(
                run(&back),
                got,
                "{ty:?}: the saved folder gives the same logits"
            );
            let err = max_rel(&got, &want);
            eprintln!("llama bias {bias} {ty:?}: largest logit error {err:.3e}");
            assert!(err > 0.0 && err < tol, "{ty:?}: {err}");
            let _ = std::fs::remove_dir_all(&out);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Logits `[t, vocab]` as rows.
fn rows(flat: Vec<f32>, t: usize) -> Vec<Vec<f32>> {
    flat.chunks(flat.len() / t).map(<[f32]>::to_vec).collect()
}

//! The decoder engine on random GPT-2 and Llama folders: whole sequences, token-by-token
//! decoding and ragged batches give the same logits; its folders (every weight type)
//! are written and read back; attention maps and batched generation. (Against
//! transformers' own logits: `engine_parity.rs`.)

use attn::checkpoint::save_model_folder;
use attn::engine::{Decoder, DecoderSpec, Want};
use attn::kernels::WeightType;
use attn::models::gpt2::Gpt2Config;
use attn::rng::Rng;
use attn::tokenizer::Tokenizer;
use attn::train::native::NativeDecoder;

/// Fresh weights for `spec` from `seed`, with the norms and biases moved away from their
/// initial ones and zeros by seeded noise (so every parameter is exercised, and the
/// measured errors below are the same every run).
fn random_weights(spec: &DecoderSpec, seed: u64) -> attn::engine::io::Plain {
    let mut t = NativeDecoder::init(spec, (0.0, 0.0, 0.0), seed, 0.02)
        .unwrap()
        .tensors();
    let mut names: Vec<String> = t.keys().cloned().collect();
    names.sort();
    let mut rng = Rng::new(seed + 100);
    for name in names {
        if name.contains("bias") || name.contains("ln_") || name.contains("norm") {
            for x in t.get_mut(&name).unwrap().0.iter_mut() {
                *x += 0.1 * rng.normal() as f32;
            }
        }
    }
    t
}

fn char_tokenizer() -> Tokenizer {
    let text: String = (0..96u8).map(|b| (b' ' + b % 90) as char).collect();
    Tokenizer::train_char(&text).unwrap()
}

/// A random GPT-2 with MLP activation `act` saved as a folder; returns its config.
fn random_gpt2(dir: &std::path::Path, act: &str, seed: u64) -> Gpt2Config {
    let mut config = Gpt2Config::new(96, 40, 64, 3, 4);
    // The weights are drawn for the trainer's activation; they are the same tensors
    // whatever the activation.
    let weights = random_weights(&DecoderSpec::from_gpt2(&config).unwrap(), seed);
    config.activation_function = act.to_string();
    save_model_folder(
        dir,
        &config.to_hf_json(),
        &weights,
        &char_tokenizer(),
        &serde_json::json!({}),
    )
    .unwrap();
    config
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The whole sequence at once (the GEMM path, more than 8 rows) gives the logits of a
/// prompt then one token at a time (the small-batch path) and of ragged batches with
/// other histories, for each MLP activation.
#[test]
fn engine_logits_agree_whole_incremental_and_batched() {
    for (i, act) in ["gelu_new", "gelu", "relu"].iter().enumerate() {
        let dir = tempfile_dir(&format!("engine-{act}"));
        let config = random_gpt2(&dir, act, 11 + i as u64);
        let engine = Decoder::load(&dir, None).unwrap();
        assert_eq!(engine.weight_type(), WeightType::F32);
        let ids: Vec<u32> = (0..23)
            .map(|k| (k * 37 + 5) % config.vocab_size as u32)
            .collect();
        let mut st = engine.new_state();
        let want_flat = engine
            .forward(&mut [&mut st], &[&ids], Want::All)
            .unwrap()
            .remove(0);
        assert_eq!(want_flat.len(), ids.len() * config.vocab_size);

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
    // (the same with the AVX-512, AVX2 and portable kernels): f16 1.9e-4, q8 5.2e-3, q4
    // 0.091; the bounds are those set when other random weights measured f16 1.8-3.2e-4,
    // q8 5.6-7.3e-3, q4 0.081-0.113 (1.6x the worst then, 2-2.7x now).
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
            // f16 folders keep the Hugging Face layout: read back through it as f32
            // matrices, they give the f16 engine's logits.
            let wide = Decoder::load(&out, Some(WeightType::F32)).unwrap();
            let g = run(&wide);
            assert!(
                max_rel(&g, &got) < 1e-4,
                "f16 folder read as f32: {}",
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
            // The engine decoding the sequence alone, through a session.
            let (want, _) = generate_ids(&engine, p, 12, &alone, &mut |_| true).unwrap();
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
    use attn::models::llama::LlamaConfig;
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
    let weights = random_weights(&DecoderSpec::from_llama(&lc).unwrap(), seed);
    std::fs::create_dir_all(dir).unwrap();
    attn::engine::io::write_plain(&dir.join("model.safetensors"), &weights).unwrap();
    char_tokenizer().save(&dir.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    config
}

#[test]
fn llama_folders_round_trip_every_weight_type() {
    for bias in [false, true] {
        let dir = tempfile_dir(&format!("engine-llama-{bias}"));
        random_llama(&dir, 3, bias);
        let ids: Vec<u32> = (0..21).map(|k| (k * 29 + 3) % 96).collect();
        let run = |e: &Decoder| {
            let mut st = e.new_state();
            e.forward(&mut [&mut st], &[&ids], Want::All)
                .unwrap()
                .remove(0)
        };
        let engine = Decoder::load(&dir, None).unwrap();
        let want = run(&engine);
        // Saved as f32 it is the same folder again (the HF layout, split back into
        // q/k/v and gate/up projections): every tensor bit for bit.
        let out = tempfile_dir(&format!("engine-llama-f32-{bias}"));
        engine.save(&out, Some(&dir)).unwrap();
        let read = |d: &std::path::Path| {
            let mut t: Vec<_> = attn::checkpoint::read_weights(d)
                .unwrap()
                .into_iter()
                .collect();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        };
        assert_eq!(
            read(&out),
            read(&dir),
            "bias {bias}: the f32 folder written back"
        );
        assert_eq!(run(&Decoder::load(&out, None).unwrap()), want);
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

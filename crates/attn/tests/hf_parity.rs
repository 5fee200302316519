//! Parity with Hugging Face transformers on small random models: logits, hidden states,
//! losses and parameter gradients recorded by `scripts/make_hf_fixtures.py` (committed
//! under `tests/fixtures/hf/`), compared with attn loading the same folders.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use attn::checkpoint::{load_bert_model, load_gpt2_model, load_llama_model, read_safetensors};
use attn::models::CausalLm;
use attn::nn::{cross_entropy, Mode, Params};
use attn::rng::Rng;
use candle_core::{DType, Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    read_safetensors(&fixture(name).join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn ids(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let d = max_abs_diff(a, b);
    eprintln!("{what}: max abs difference {d:.3e}");
    assert!(d <= tol, "{what}: max abs difference {d} > {tol}");
}

/// Every parameter's gradient within 1e-4 of the reference, relative to the largest
/// reference value of that tensor.
fn assert_grads(name: &str, params: &Params, loss: &Tensor, r: &HashMap<String, Tensor>) {
    let grads = loss.backward().unwrap();
    let mut n = 0;
    let mut worst = 0f32;
    for (pname, var) in params.iter() {
        let Some(want) = r.get(&format!("grad.{pname}")) else {
            continue;
        };
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
        let scale = want
            .abs()
            .unwrap()
            .max_keepdim(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = max_abs_diff(got, want);
        worst = worst.max(d / scale.max(1e-3));
        assert!(
            d <= 1e-4 * scale.max(1e-3),
            "{name}: gradient of {pname} differs by {d} (largest {scale})"
        );
        n += 1;
    }
    let expected = r.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        n, expected,
        "{name}: not every reference gradient was compared"
    );
    eprintln!("{name}: {n} parameter gradients, worst relative difference {worst:.3e}");
    assert!(n > 0);
}

fn causal_parity(name: &str, model: &dyn CausalLm, params: &Params, check_grads: bool) {
    let r = reference(name);
    let x = ids(&r["input_ids"]);
    let logits = model.forward(&x, None, &mut Mode::Eval).unwrap();
    assert_close(&format!("{name} logits"), &logits, &r["logits"], 1e-4);
    let hidden = model.hidden(&x, None, &mut Mode::Eval).unwrap();
    let n_hidden = r.keys().filter(|k| k.starts_with("hidden_states.")).count();
    assert_close(
        &format!("{name} last hidden state"),
        &hidden,
        &r[&format!("hidden_states.{}", n_hidden - 1)],
        1e-4,
    );
    // HF's loss with labels = input_ids: position t predicts token t+1.
    let (b, t) = x.dims2().unwrap();
    let mut rng = Rng::new(0);
    let logits = model.forward(&x, None, &mut Mode::Train(&mut rng)).unwrap();
    let v = logits.dim(2).unwrap();
    let pred = logits
        .narrow(1, 0, t - 1)
        .unwrap()
        .reshape((b * (t - 1), v))
        .unwrap();
    let tgt = x.narrow(1, 1, t - 1).unwrap().reshape(b * (t - 1)).unwrap();
    let loss = cross_entropy(&pred, &tgt).unwrap();
    assert_close(
        &format!("{name} loss"),
        &loss.reshape(1).unwrap(),
        &r["loss"],
        1e-5,
    );
    if check_grads {
        assert_grads(name, params, &loss, &r);
    }
}

#[test]
fn gpt2_matches_transformers() {
    for name in ["gpt2-tiny", "gpt2-3heads"] {
        let (model, params) = load_gpt2_model(&fixture(name), &Device::Cpu).unwrap();
        causal_parity(name, &model, &params, true);
    }
}

#[test]
fn llama_matches_transformers() {
    for name in ["llama-gqa", "llama-tied-6heads"] {
        let (model, params) = load_llama_model(&fixture(name), &Device::Cpu).unwrap();
        causal_parity(name, &model, &params, true);
    }
}

#[test]
fn bert_matches_transformers_with_padding() {
    for name in ["bert-tiny", "bert-3heads"] {
        let r = reference(name);
        let (model, params) = load_bert_model(&fixture(name), &Device::Cpu).unwrap();
        let (x, mask, types) = (
            ids(&r["input_ids"]),
            ids(&r["attention_mask"]),
            ids(&r["token_type_ids"]),
        );
        let out = model
            .forward(&x, &mask, Some(&types), &mut Mode::Eval)
            .unwrap();
        // Padded positions carry values too (HF computes them); compare all of them.
        assert_close(
            &format!("{name} last_hidden_state"),
            &out.last_hidden_state,
            &r["last_hidden_state"],
            1e-4,
        );
        for (i, h) in out.hidden_states.iter().enumerate() {
            assert_close(
                &format!("{name} hidden_states.{i}"),
                h,
                &r[&format!("hidden_states.{i}")],
                1e-4,
            );
        }
        assert_close(
            &format!("{name} pooler"),
            out.pooled.as_ref().unwrap(),
            &r["pooler_output"],
            1e-4,
        );
        let mut rng = Rng::new(0);
        let mut mode = Mode::Train(&mut rng);
        let out = model.forward(&x, &mask, Some(&types), &mut mode).unwrap();
        let logits = model.classify(&out, &mut mode).unwrap();
        assert_close(&format!("{name} logits"), &logits, &r["logits"], 1e-4);
        let loss = cross_entropy(&logits, &ids(&r["labels"])).unwrap();
        assert_close(
            &format!("{name} loss"),
            &loss.reshape(1).unwrap(),
            &r["loss"],
            1e-5,
        );
        assert_grads(name, &params, &loss, &r);
    }
}

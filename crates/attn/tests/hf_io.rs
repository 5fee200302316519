//! Reading and writing HF folders: sharded and half-precision weights, export round
//! trips, errors that list what was expected and found, and the real MiniLM encoder.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attn::checkpoint::{
    export, load_bert, load_gpt2_model, load_params, read_safetensors, write_safetensors,
};
use attn::nn::Mode;
use candle_core::{DType, Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn logits(dir: &Path) -> Vec<f32> {
    let r = read_safetensors(
        &fixture("gpt2-tiny").join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let x = r["input_ids"].to_dtype(DType::U32).unwrap();
    let (model, _) = load_gpt2_model(dir, &Device::Cpu).unwrap();
    model
        .forward(&x, None, &mut Mode::Eval)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn sharded_weights_load_like_a_single_file() {
    let dir = common::temp_dir("sharded");
    common::copy_dir(&fixture("gpt2-tiny"), &dir);
    let tensors = read_safetensors(&dir.join("model.safetensors"), &Device::Cpu).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let mut shards = [BTreeMap::new(), BTreeMap::new()];
    let mut map = serde_json::Map::new();
    for (i, (k, v)) in tensors.into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        map.insert(k.clone(), file.into());
        shards[i % 2].insert(k, v);
    }
    for (i, s) in shards.iter().enumerate() {
        write_safetensors(
            &dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
            s,
        )
        .unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(logits(&dir), logits(&fixture("gpt2-tiny")));
    std::fs::remove_dir_all(&dir).ok();
}

/// Every tensor of `out` is the tensor of `src` rounded to `dtype` (bit for bit), and the
/// configs agree but for `torch_dtype`.
fn assert_exported(src: &Path, out: &Path, dtype: DType) {
    let a = read_safetensors(&src.join("model.safetensors"), &Device::Cpu).unwrap();
    let b = read_safetensors(&out.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut ka: Vec<_> = a.keys().collect();
    let mut kb: Vec<_> = b.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb, "{}: exported names differ", src.display());
    for (k, t) in &a {
        let want = t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
        let got = &b[k];
        assert_eq!(got.dtype(), dtype, "{k}");
        assert_eq!(got.dims(), t.dims(), "{k}");
        let got = got.to_dtype(DType::F32).unwrap();
        let d = max_diff(
            &want.flatten_all().unwrap().to_vec1().unwrap(),
            &got.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(
            d,
            0.0,
            "{}: {k} changed in export to {dtype:?}",
            src.display()
        );
    }
    let read = |p: &Path| -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("torch_dtype");
        v
    };
    assert_eq!(read(src), read(out), "{}: config changed", src.display());
}

#[test]
fn export_round_trips_in_every_dtype() {
    let dir = common::temp_dir("export");
    let want = logits(&fixture("gpt2-tiny"));
    // Logits of the exported gpt2-tiny against the f32 original (they span about ±0.2):
    // measured 2.3e-4 (f16) and 2.1e-3 (bf16); bounds about 2.5x those.
    for (dtype, tol) in [(DType::F32, 0.0), (DType::F16, 6e-4), (DType::BF16, 5e-3)] {
        let out = dir.join(format!("{dtype:?}"));
        export(&fixture("gpt2-tiny"), &out, dtype, &Device::Cpu).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let name = match dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        };
        assert_eq!(cfg["torch_dtype"], name);
        let d = max_diff(&logits(&out), &want);
        eprintln!("gpt2-tiny exported as {dtype:?}: logits differ by {d:.2e}");
        assert!(d <= tol, "{dtype:?}: logits differ by {d}");
    }
    // Every family exports exactly the tensors and config it loaded, in every dtype.
    for name in [
        "gpt2-tiny",
        "gpt2-3heads",
        "llama-gqa",
        "llama-tied-6heads",
        "bert-tiny",
        "bert-3heads",
        "marian-tiny",
        "marian-3heads",
    ] {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let out = dir.join(format!("{name}-{dtype:?}"));
            export(&fixture(name), &out, dtype, &Device::Cpu).unwrap();
            assert_exported(&fixture(name), &out, dtype);
            load_params(&out, &Device::Cpu).unwrap();
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn rewrite(dir: &Path, f: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let mut t: BTreeMap<String, Tensor> =
        read_safetensors(&dir.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
    f(&mut t);
    write_safetensors(&dir.join("model.safetensors"), &t).unwrap();
}

#[test]
fn mismatched_checkpoints_list_expected_and_found() {
    let dir = common::temp_dir("mismatch");
    let case = |name: &str| -> PathBuf {
        let d = dir.join(name);
        common::copy_dir(&fixture("gpt2-tiny"), &d);
        d
    };
    let err = |d: &Path| {
        load_params(d, &Device::Cpu)
            .err()
            .expect("loading must fail")
            .to_string()
    };

    let d = case("missing");
    rewrite(&d, |t| {
        t.remove("transformer.h.1.mlp.c_fc.weight");
    });
    let e = err(&d);
    assert!(
        e.contains("missing tensors: transformer.h.1.mlp.c_fc.weight [32, 128]"),
        "{e}"
    );

    let d = case("unexpected");
    rewrite(&d, |t| {
        t.insert(
            "transformer.h.9.extra".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = err(&d);
    assert!(
        e.contains("unexpected tensors: transformer.h.9.extra"),
        "{e}"
    );

    let d = case("shape");
    rewrite(&d, |t| {
        t.insert(
            "transformer.ln_f.bias".into(),
            Tensor::zeros(31, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = err(&d);
    assert!(
        e.contains("transformer.ln_f.bias: expected [32], found [31]"),
        "{e}"
    );

    let d = case("unknown-type");
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"gpt2\"", "\"gpt-j\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = err(&d);
    assert!(
        e.contains("gpt-j") && e.contains("gpt2, llama, bert, marian"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// all-MiniLM-L6-v2 reproduces sentence-transformers' embeddings (recorded by
/// scripts/make_hf_fixtures.py) through attn's own tokenizer and encoder.
#[test]
fn minilm_matches_sentence_transformers() {
    let Some(models) = common::models_dir() else {
        return;
    };
    let dir = models.join("all-MiniLM-L6-v2");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("minilm").join("meta.json")).unwrap(),
    )
    .unwrap();
    let r = read_safetensors(
        &fixture("minilm").join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let loaded = load_bert(&dir).unwrap();
    assert_eq!(loaded.max_len, 256);
    let sentences: Vec<&str> = meta["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let want_ids = r["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let want_mask = r["attention_mask"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let mut seqs = vec![];
    for (i, s) in sentences.iter().enumerate() {
        let e = loaded
            .tokenizer
            .encode_for_model(s, loaded.max_len)
            .unwrap();
        let n = want_mask[i].iter().sum::<u32>() as usize;
        assert_eq!(e, want_ids[i][..n], "token ids of {s:?}");
        seqs.push(e);
    }
    let seqs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let got = loaded
        .encoder
        .embed(&seqs, attn::engine::Pooling::Mean, true)
        .unwrap();
    let want = r["embeddings_normalized"].to_vec2::<f32>().unwrap();
    let mut worst_cos = 1f64;
    let mut worst_abs = 0f32;
    for (g, w) in got.iter().zip(&want) {
        let cos: f64 = g
            .iter()
            .zip(w)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        worst_cos = worst_cos.min(cos);
        worst_abs = worst_abs.max(max_diff(g, w));
    }
    eprintln!("MiniLM: worst cosine {worst_cos:.9}, max abs difference {worst_abs:.3e}");
    assert!(worst_cos >= 0.99999, "cosine {worst_cos}");
    assert!(worst_abs <= 1e-4, "max abs difference {worst_abs}");
}

/// What `read_weights` refuses, each named: NaN or infinite weights (with the tensor),
/// a weights path that is not a regular file, shard names that leave the folder; and a
/// sharded folder (index, no single file) loads every shard.
#[test]
fn weight_files_are_checked_before_use() {
    use attn::checkpoint::read_weights;
    let dir = common::temp_dir("weights-checks");
    let dev = Device::Cpu;
    let t = |v: Vec<f32>| Tensor::from_vec(v.clone(), v.len(), &dev).unwrap();
    let err = |d: &Path| read_weights(d, &dev).unwrap_err().to_string();
    for (bad, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let d = dir.join(format!("nonfinite-{what}"));
        std::fs::create_dir_all(&d).unwrap();
        let mut m = BTreeMap::new();
        m.insert("fine".to_string(), t(vec![1.0, 2.0]));
        m.insert("broken".to_string(), t(vec![0.5, bad, 3.0]));
        write_safetensors(&d.join("model.safetensors"), &m).unwrap();
        let e = err(&d);
        assert!(e.contains("broken") && e.contains("index 1"), "{e}");
    }
    // A directory where the weights file should be.
    let d = dir.join("not-a-file");
    std::fs::create_dir_all(d.join("model.safetensors")).unwrap();
    assert!(err(&d).contains("not a regular file"), "{}", err(&d));
    // Shards: two files listed by the index load together; names that leave the
    // folder (a path, or "..") are refused.
    let d = dir.join("sharded");
    std::fs::create_dir_all(&d).unwrap();
    for (file, name) in [("a.safetensors", "x"), ("b.safetensors", "y")] {
        let mut m = BTreeMap::new();
        m.insert(name.to_string(), t(vec![1.0]));
        write_safetensors(&d.join(file), &m).unwrap();
    }
    let index = |map: serde_json::Value| {
        std::fs::write(
            d.join("model.safetensors.index.json"),
            serde_json::json!({ "weight_map": map }).to_string(),
        )
        .unwrap()
    };
    index(serde_json::json!({"x": "a.safetensors", "y": "b.safetensors"}));
    let all = read_weights(&d, &dev).unwrap();
    assert!(
        all.contains_key("x") && all.contains_key("y"),
        "{:?}",
        all.keys()
    );
    for bad in ["sub/a.safetensors", "..a.safetensors"] {
        index(serde_json::json!({ "x": bad }));
        assert!(err(&d).contains("plain file name"), "{bad}: {}", err(&d));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A tokenizer whose ids reach past the model's vocabulary does not belong to it: the
/// folder is refused, naming the tokenizer file (one that fits loads).
#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused() {
    let dir = common::temp_dir("vocab-check");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/bert-tiny");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // bert-tiny has 101 ids: 26 letters fit; 120 distinct characters do not.
    let small = attn::tokenizer::Tokenizer::train_char("abcdefghijklmnopqrstuvwxyz").unwrap();
    small.save(&dir.join("tokenizer.json")).unwrap();
    assert!(load_bert(&dir).is_ok());
    let many: String = (0..120u32)
        .map(|i| char::from_u32(0x4e00 + i).unwrap())
        .collect();
    let big = attn::tokenizer::Tokenizer::train_char(&many).unwrap();
    assert!(big.id_limit() > 101);
    big.save(&dir.join("tokenizer.json")).unwrap();
    let e = load_bert(&dir).err().expect("refused").to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("vocab_size is 101"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A decoder folder's generation_config.json comes with it (transformers' defaults
/// for generate); a folder without one gives an empty object.
#[test]
fn generation_config_is_read_with_the_model() {
    let dir = common::temp_dir("generation-config");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/gpt2-tiny");
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let tok = attn::tokenizer::Tokenizer::train_char("abcdefghij").unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
    let lm = attn::checkpoint::load_causal_lm(&dir).unwrap();
    assert_eq!(lm.generation["eos_token_id"], 98);
    assert_eq!(lm.generation["bos_token_id"], 98);
    std::fs::remove_file(dir.join("generation_config.json")).unwrap();
    let lm = attn::checkpoint::load_causal_lm(&dir).unwrap();
    assert_eq!(lm.generation, serde_json::json!({}));
    std::fs::remove_dir_all(&dir).ok();
}

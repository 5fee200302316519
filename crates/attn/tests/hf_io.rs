//! Reading and writing HF folders: sharded and half-precision weights, export round
//! trips, errors that list what was expected and found, and the real MiniLM encoder.

mod common;

use std::path::{Path, PathBuf};

use attn::checkpoint::{export, load_bert, read_weights, FloatType};
use attn::engine::io::{write_plain, Plain};
use attn::engine::{Decoder, Encoder, Seq2Seq, Want};

fn fixture(name: &str) -> PathBuf {
    common::hf_fixture(name)
}

/// The logits of gpt2-tiny's reference inputs from the GPT-2 folder `dir`, on the engine
/// (f32 matrices whatever the folder stores).
fn logits(dir: &Path) -> Vec<f32> {
    let r = common::read_reference(&fixture("gpt2-tiny").join("reference.safetensors"));
    let engine = Decoder::load(dir, Some(attn::kernels::WeightType::F32)).unwrap();
    let mut out = Vec::new();
    for row in r["input_ids"].id_rows() {
        let mut st = engine.new_state();
        out.extend(
            engine
                .forward(&mut [&mut st], &[&row], Want::All)
                .unwrap()
                .remove(0),
        );
    }
    out
}

/// Load a fixture folder of any family on its engine (a check that it loads whole).
fn load_any(name: &str, dir: &Path) {
    if name.starts_with("bert") {
        Encoder::load(dir).unwrap();
    } else if name.starts_with("marian") {
        Seq2Seq::load(dir).unwrap();
    } else {
        Decoder::load(dir, None).unwrap();
    }
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
    let mut tensors: Vec<_> = read_weights(&dir).unwrap().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let mut shards = [Plain::new(), Plain::new()];
    let mut map = serde_json::Map::new();
    for (i, (k, v)) in tensors.into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        map.insert(k.clone(), file.into());
        shards[i % 2].insert(k, v);
    }
    for (i, s) in shards.iter().enumerate() {
        write_plain(
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

/// Every tensor of `out` is the tensor of `src` rounded to `ty` (bit for bit, rounded
/// by the `half` crate here), stored as `ty`, and the configs agree but for
/// `torch_dtype`.
fn assert_exported(src: &Path, out: &Path, ty: FloatType) {
    let a = common::read_reference(&src.join("model.safetensors"));
    let b = common::read_reference(&out.join("model.safetensors"));
    let mut ka: Vec<_> = a.keys().collect();
    let mut kb: Vec<_> = b.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb, "{}: exported names differ", src.display());
    let (dtype, round): (safetensors::Dtype, fn(f64) -> f64) = match ty {
        FloatType::F32 => (safetensors::Dtype::F32, |x| x),
        FloatType::F16 => (safetensors::Dtype::F16, |x| {
            half::f16::from_f32(x as f32).to_f64()
        }),
        FloatType::Bf16 => (safetensors::Dtype::BF16, |x| {
            half::bf16::from_f32(x as f32).to_f64()
        }),
    };
    for (k, t) in &a {
        let got = &b[k];
        assert_eq!(got.dtype, dtype, "{k}");
        assert_eq!(got.shape, t.shape, "{k}");
        let want: Vec<f64> = t.v.iter().map(|&x| round(x)).collect();
        assert!(
            got.v
                .iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits()),
            "{}: {k} changed in export to {ty:?}",
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
    for (ty, tol) in [
        (FloatType::F32, 0.0),
        (FloatType::F16, 6e-4),
        (FloatType::Bf16, 5e-3),
    ] {
        let out = dir.join(format!("{ty:?}"));
        export(&fixture("gpt2-tiny"), &out, ty).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let name = match ty {
            FloatType::F16 => "float16",
            FloatType::Bf16 => "bfloat16",
            FloatType::F32 => "float32",
        };
        assert_eq!(cfg["torch_dtype"], name);
        let d = max_diff(&logits(&out), &want);
        eprintln!("gpt2-tiny exported as {ty:?}: logits differ by {d:.2e}");
        assert!(d <= tol, "{ty:?}: logits differ by {d}");
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
        for ty in [FloatType::F32, FloatType::F16, FloatType::Bf16] {
            let out = dir.join(format!("{name}-{ty:?}"));
            export(&fixture(name), &out, ty).unwrap();
            assert_exported(&fixture(name), &out, ty);
            load_any(name, &out);
        }
    }
    // A GPT-2 checkpoint's attention-mask buffers are not model tensors: left out.
    let src = dir.join("with-buffers");
    common::copy_dir(&fixture("gpt2-tiny"), &src);
    rewrite(&src, |t| {
        t.insert(
            "transformer.h.0.attn.bias".into(),
            (vec![1.0; 4], vec![1, 1, 2, 2]),
        );
    });
    let out = dir.join("without-buffers");
    export(&src, &out, FloatType::F32).unwrap();
    assert_exported(&fixture("gpt2-tiny"), &out, FloatType::F32);
    std::fs::remove_dir_all(&dir).ok();
}

fn rewrite(dir: &Path, f: impl FnOnce(&mut Plain)) {
    let mut t = read_weights(dir).unwrap();
    f(&mut t);
    write_plain(&dir.join("model.safetensors"), &t).unwrap();
}

#[test]
fn mismatched_checkpoints_list_expected_and_found() {
    let dir = common::temp_dir("mismatch");
    let case = |name: &str| -> PathBuf {
        let d = dir.join(name);
        common::copy_dir(&fixture("gpt2-tiny"), &d);
        d
    };
    // What `attn export` (and every command) says about the folder: the engine's loader.
    let err = |d: &Path| {
        export(d, &d.join("out"), FloatType::F32)
            .expect_err("loading must fail")
            .to_string()
    };

    let d = case("missing");
    rewrite(&d, |t| {
        t.remove("transformer.h.1.mlp.c_fc.weight");
    });
    let e = err(&d);
    assert!(
        e.contains("tensor transformer.h.1.mlp.c_fc.weight [32, 128] is missing"),
        "{e}"
    );

    let d = case("unexpected");
    rewrite(&d, |t| {
        t.insert("transformer.h.9.extra".into(), (vec![0.0; 3], vec![3]));
    });
    let e = err(&d);
    assert!(
        e.contains("unexpected tensors") && e.contains("transformer.h.9.extra"),
        "{e}"
    );

    let d = case("shape");
    rewrite(&d, |t| {
        t.insert("transformer.ln_f.bias".into(), (vec![0.0; 31], vec![31]));
    });
    let e = err(&d);
    assert!(
        e.contains("tensor transformer.ln_f.bias has shape [31], expected [32]"),
        "{e}"
    );

    let d = case("unknown-type");
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"gpt2\"", "\"gpt-j\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = err(&d);
    assert!(
        e.contains("gpt-j")
            && e.contains(
                "gpt2, llama, mistral, qwen2, bert, roberta, xlm-roberta, distilbert, marian"
            ),
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
    let r = common::read_reference(&fixture("minilm").join("reference.safetensors"));
    let loaded = load_bert(&dir).unwrap();
    assert_eq!(loaded.max_len, 256);
    let sentences: Vec<&str> = meta["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let want_ids = r["input_ids"].id_rows();
    let want_mask = r["attention_mask"].id_rows();
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
    let e = &r["embeddings_normalized"];
    let want: Vec<Vec<f32>> = e.f32().chunks(e.shape[1]).map(|c| c.to_vec()).collect();
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
    let dir = common::temp_dir("weights-checks");
    let t = |v: Vec<f32>| {
        let n = v.len();
        (v, vec![n])
    };
    let err = |d: &Path| read_weights(d).unwrap_err().to_string();
    for (bad, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let d = dir.join(format!("nonfinite-{what}"));
        std::fs::create_dir_all(&d).unwrap();
        let mut m = Plain::new();
        m.insert("fine".to_string(), t(vec![1.0, 2.0]));
        m.insert("broken".to_string(), t(vec![0.5, bad, 3.0]));
        write_plain(&d.join("model.safetensors"), &m).unwrap();
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
        let mut m = Plain::new();
        m.insert(name.to_string(), t(vec![1.0]));
        write_plain(&d.join(file), &m).unwrap();
    }
    let index = |map: serde_json::Value| {
        std::fs::write(
            d.join("model.safetensors.index.json"),
            serde_json::json!({ "weight_map": map }).to_string(),
        )
        .unwrap()
    };
    index(serde_json::json!({"x": "a.safetensors", "y": "b.safetensors"}));
    let all = read_weights(&d).unwrap();
    assert!(
        all.contains_key("x") && all.contains_key("y"),
        "{:?}",
        all.keys()
    );
    for bad in ["sub/a.safetensors", "..a.safetensors"] {
        index(serde_json::json!({ "x": bad }));
        assert!(
            err(&d).contains("not a file name in the folder"),
            "{bad}: {}",
            err(&d)
        );
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

/// An encoder-decoder folder's config is checked for each family by the same reader:
/// the trainers refuse the other family's folder, a field of the wrong type and a value
/// the family cannot run, each error naming config.json (and the good folders load).
#[test]
fn seq2seq_configs_are_checked_for_each_family() {
    use attn::train::seq2seq::NativeSeq2Seq;
    use attn::train::t5::NativeT5;
    let dir = common::temp_dir("seq2seq-config");
    let edit = |name: &str, tag: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let d = dir.join(tag);
        common::copy_dir(&fixture(name), &d);
        let path = d.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
        d
    };
    let keep = |_: &mut serde_json::Value| {};
    let (marian, t5) = (
        edit("marian-tiny", "marian", &keep),
        edit("t5-v1_1", "t5", &keep),
    );
    NativeSeq2Seq::load(&marian).unwrap();
    NativeT5::load(&t5).unwrap();
    let msg = |r: attn::Result<()>| r.unwrap_err().to_string();
    let marian_err = |d: &Path| msg(NativeSeq2Seq::load(d).map(|_| ()));
    let t5_err = |d: &Path| msg(NativeT5::load(d).map(|_| ()));
    for (e, want) in [
        (marian_err(&t5), "model_type is not \"marian\""),
        (t5_err(&marian), "model_type is not \"t5\""),
    ] {
        assert!(e.contains(want) && e.contains("config.json"), "{e}");
    }
    let wrong_type = edit("t5-v1_1", "t5-type", &|v| v["d_model"] = "wide".into());
    let e = t5_err(&wrong_type);
    assert!(
        e.contains("not a valid T5 config") && e.contains("config.json"),
        "{e}"
    );
    let wrong_type = edit("marian-tiny", "marian-type", &|v| {
        v["d_model"] = "wide".into()
    });
    let e = marian_err(&wrong_type);
    assert!(
        e.contains("not a valid Marian config") && e.contains("config.json"),
        "{e}"
    );
    let no_heads = edit("t5-v1_1", "t5-heads", &|v| v["num_heads"] = 0.into());
    let e = t5_err(&no_heads);
    assert!(e.contains("config.json") && e.contains("num_heads"), "{e}");
    let no_heads = edit("marian-tiny", "marian-heads", &|v| {
        v["encoder_attention_heads"] = 0.into()
    });
    let e = marian_err(&no_heads);
    assert!(e.contains("config.json") && e.contains("heads"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

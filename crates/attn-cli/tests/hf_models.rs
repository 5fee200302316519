//! `attn generate`, `eval perplexity`, `embed` and `export` on Hugging Face folders
//! (the committed transformers fixtures and the real all-MiniLM-L6-v2).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn attn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attn"))
        .args(args)
        .output()
        .expect("the attn binary runs")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../attn/tests/fixtures/hf")
        .join(name)
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attn-hfcli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of a fixture model with a char tokenizer of `n` tokens added.
fn with_tokenizer(name: &str, n: usize, dir: &Path) -> PathBuf {
    let m = dir.join(name);
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), m.join(f)).unwrap();
    }
    // Letters first (the prompts use them), then accented letters: no control characters.
    let alphabet: String = ('A'..='Z')
        .chain('a'..='z')
        .chain('À'..='ÿ')
        .filter(|c| *c != '×' && *c != '÷')
        .take(n)
        .collect();
    assert_eq!(alphabet.chars().count(), n);
    let text = dir.join("alphabet.txt");
    std::fs::write(&text, &alphabet).unwrap();
    ok(&attn(&[
        "tokenizer",
        "train",
        "--kind",
        "char",
        "--data",
        text.to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
        // The folder holds a model without a tokenizer: adding one is deliberate.
        "--overwrite",
    ]));
    m
}

#[test]
fn generate_and_perplexity_work_on_every_decoder_family() {
    let dir = temp("causal");
    // The char tokenizer also gets "\n" from the file ending: n - 1 letters + newline.
    for (name, vocab) in [
        ("llama-gqa", 103),
        ("gpt2-tiny", 99),
        ("llama3-scaled", 61),
        ("qwen2-window", 71),
        ("mistral-window", 73),
    ] {
        let m = with_tokenizer(name, vocab - 1, &dir);
        let mdir = m.to_str().unwrap();
        let g1 = ok(&attn(&[
            "generate",
            "--model",
            mdir,
            "--prompt",
            "ABC",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0",
            "--no-echo",
        ]));
        let g2 = ok(&attn(&[
            "generate",
            "--model",
            mdir,
            "--prompt",
            "ABC",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0",
            "--no-echo",
        ]));
        assert_eq!(g1, g2);
        assert!(g1.trim_end_matches('\n').chars().count() <= 12);
        let data = dir.join("text.txt");
        std::fs::write(&data, "ABCDEFGHIJKLMNOPQRSTUVWXYZ".repeat(8)).unwrap();
        let p = ok(&attn(&[
            "eval",
            "perplexity",
            "--model",
            mdir,
            "--data",
            data.to_str().unwrap(),
            "--max-length",
            "32",
            "--stride",
            "16",
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["tokens"], 26 * 8 - 1);
        // A random model is close to uniform over its vocabulary.
        let nll = v["nll"].as_f64().unwrap();
        assert!((nll - (vocab as f64).ln()).abs() < 1.0, "{name}: nll {nll}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn quantize_takes_llama_folders() {
    let dir = temp("quant-llama");
    let m = with_tokenizer("llama-gqa", 102, &dir);
    let data = dir.join("text.txt");
    std::fs::write(&data, "ABCDEFGHIJKLMNOPQRSTUVWXYZ".repeat(4)).unwrap();
    let out = dir.join("f16");
    let report = ok(&attn(&[
        "quantize",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "f16",
        "--eval-data",
        data.to_str().unwrap(),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let change = v["perplexity_change"].as_f64().unwrap();
    // Halved weights of a random model: the perplexity moves by rounding only.
    assert!(change.abs() < 1e-3, "f16 perplexity change {change}");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["torch_dtype"], "float16");
    // The f16 folder generates like any other.
    ok(&attn(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "ABC",
        "--max-new-tokens",
        "4",
    ]));
    // Its MLP is 80 wide: 8-bit blocks of 32 cannot hold its rows, and the error says so.
    let o = attn(&[
        "quantize",
        "--model",
        m.to_str().unwrap(),
        "--out",
        dir.join("q8").to_str().unwrap(),
        "--dtype",
        "q8",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("multiple of 32"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_model_types_are_named() {
    let o = attn(&[
        "generate",
        "--model",
        fixture("bert-tiny").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("error:")
            && err.contains("\"bert\"")
            && err.contains("supported: gpt2, llama, mistral, qwen2"),
        "{err}"
    );
}

#[test]
fn embed_reproduces_sentence_transformers_for_minilm() {
    let models = std::env::var_os("ATTN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
        });
    let model = models.join("all-MiniLM-L6-v2");
    if !model.is_dir() {
        // Missing data fails the test unless skips were asked for (never under CI).
        let skip = std::env::var("ATTN_ALLOW_SKIPS").is_ok_and(|v| v == "1")
            && std::env::var("CI").map_or(true, |v| v != "true");
        assert!(
            skip,
            "{} is missing (set ATTN_MODELS_DIR, or ATTN_ALLOW_SKIPS=1 to skip)",
            model.display()
        );
        eprintln!(
            "skipping (ATTN_ALLOW_SKIPS=1): {} not found",
            model.display()
        );
        return;
    }
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("minilm").join("meta.json")).unwrap(),
    )
    .unwrap();
    let sentences: Vec<&str> = meta["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let dir = temp("embed");
    let input = dir.join("in.txt");
    std::fs::write(&input, sentences.join("\n") + "\n").unwrap();
    let out = ok(&attn(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--normalize",
        "--batch-size",
        "3",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let got = v["embeddings"].as_array().unwrap();
    assert_eq!(got.len(), sentences.len());
    let bytes = std::fs::read(fixture("minilm").join("reference.safetensors")).unwrap();
    let r = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = r.tensor("embeddings_normalized").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let values: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let want: Vec<Vec<f32>> = values.chunks(t.shape()[1]).map(|c| c.to_vec()).collect();
    for (g, w) in got.iter().zip(&want) {
        let g: Vec<f64> = g
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(g.len(), 384);
        let cos: f64 = g.iter().zip(w).map(|(a, b)| a * *b as f64).sum();
        let diff = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - *b as f64).abs())
            .fold(0.0, f64::max);
        assert!(cos >= 0.99999 && diff <= 1e-4, "cos {cos}, diff {diff}");
    }
    // Without --normalize, vectors are the raw means (not unit length).
    let raw = ok(&attn(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]));
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let first: Vec<f64> = v["embeddings"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let norm = first.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "norm {norm}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn export_command_writes_every_family_in_half_precision() {
    // `attn export` itself (the library's export is tested in attn's hf_io): each
    // tensor is the original rounded to the dtype, the config is unchanged but for
    // torch_dtype, and --out may not be the model.
    let dir = temp("export");
    for name in ["gpt2-tiny", "llama-gqa", "bert-tiny", "marian-tiny"] {
        for (dtype, st_dtype) in [
            ("f16", safetensors::Dtype::F16),
            ("bf16", safetensors::Dtype::BF16),
        ] {
            let out = dir.join(format!("{name}-{dtype}"));
            let src = fixture(name);
            ok(&attn(&[
                "export",
                "--model",
                src.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--dtype",
                dtype,
            ]));
            let a = std::fs::read(src.join("model.safetensors")).unwrap();
            let b = std::fs::read(out.join("model.safetensors")).unwrap();
            let a = safetensors::SafeTensors::deserialize(&a).unwrap();
            let b = safetensors::SafeTensors::deserialize(&b).unwrap();
            assert_eq!(a.len(), b.len(), "{name}");
            for (k, t) in a.tensors() {
                assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name} {k}");
                let src_values = t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
                // Each value rounded to the dtype (by the `half` crate), as 2 bytes.
                let want: Vec<u8> = if dtype == "f16" {
                    src_values
                        .flat_map(|x| half::f16::from_f32(x).to_le_bytes())
                        .collect()
                } else {
                    src_values
                        .flat_map(|x| half::bf16::from_f32(x).to_le_bytes())
                        .collect()
                };
                let got = b.tensor(&k).unwrap();
                assert_eq!(got.dtype(), st_dtype, "{name} {k}");
                assert_eq!(got.shape(), t.shape(), "{name} {k}");
                assert!(got.data() == want.as_slice(), "{name}: {k} in {dtype}");
            }
            let cfg = |p: &Path| -> serde_json::Value {
                let mut v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap())
                        .unwrap();
                v.as_object_mut().unwrap().remove("torch_dtype");
                v
            };
            assert_eq!(cfg(&src), cfg(&out), "{name}: config changed");
        }
    }
    let m = dir.join("gpt2-tiny-f16");
    let o = attn(&[
        "export",
        "--model",
        m.to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("different folder"));
    std::fs::remove_dir_all(&dir).ok();
}

/// RoBERTa, XLM-RoBERTa and DistilBERT folders (transformers' fixtures, with a char
/// tokenizer) through `embed`, `classify train` (full and LoRA), `classify predict` and
/// `classify eval`: the classifier is saved under the family's own names and config.
#[test]
fn roberta_xlm_roberta_and_distilbert_embed_and_classify() {
    let dir = temp("encoders");
    let data = dir.join("train.tsv");
    let mut rows = String::new();
    for i in 0..48 {
        let (label, text) = if i % 2 == 0 {
            ("pos", ["goodfilm", "greatplot", "finecast"][i % 3])
        } else {
            ("neg", ["badfilm", "dullplot", "poorcast"][i % 3])
        };
        rows.push_str(&format!("{label}\t{text}\n"));
    }
    std::fs::write(&data, rows).unwrap();
    let texts = dir.join("texts.txt");
    std::fs::write(&texts, "goodfilm\nbadplot\n").unwrap();
    for (name, vocab, hidden, head) in [
        ("roberta-3heads", 83, 24, "classifier.out_proj.weight"),
        ("xlm-roberta-5heads", 91, 40, "classifier.dense.weight"),
        ("distilbert-3heads", 79, 24, "pre_classifier.weight"),
    ] {
        // Room for the special tokens classification adds to a tokenizer without them.
        let m = with_tokenizer(name, vocab - 4, &dir);
        let model_type = config_of(&m)["model_type"].clone();
        let e = ok(&attn(&[
            "embed",
            "--model",
            m.to_str().unwrap(),
            "--input",
            texts.to_str().unwrap(),
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        let rows = v["embeddings"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{name}");
        assert_eq!(rows[0].as_array().unwrap().len(), hidden, "{name}");
        for lora in [false, true] {
            let out = dir.join(format!("{name}-clf-{lora}"));
            let mut args = vec![
                "classify",
                "train",
                "--model",
                m.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--epochs",
                "1",
                "--batch-size",
                "8",
            ];
            if lora {
                args.extend(["--lora-rank", "2"]);
            }
            ok(&attn(&args));
            let cfg = config_of(&out);
            assert_eq!(cfg["model_type"], model_type, "{name}");
            assert!(
                cfg["architectures"][0]
                    .as_str()
                    .unwrap()
                    .ends_with("ForSequenceClassification"),
                "{name}: {cfg}"
            );
            let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
            assert!(names.iter().any(|n| n == head), "{name}: {names:?}");
            assert!(
                !names
                    .iter()
                    .any(|n| n.starts_with("bert.") || n.starts_with("pooler.")),
                "{name}: BERT's names in {names:?}"
            );
            let p = ok(&attn(&[
                "classify",
                "eval",
                "--model",
                out.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--json",
            ]));
            let r: serde_json::Value = serde_json::from_str(&p).unwrap();
            assert_eq!(r["per_class"]["pos"]["support"], 24, "{name}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn config_of(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

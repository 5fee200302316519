//! Text classification: training learns, padding never changes logits, save → load gives
//! the same predictions, LoRA trains only its adapters and head, bad labels are named.

mod common;

use std::path::{Path, PathBuf};

use attn::data::labelled::Example;
use attn::engine::io::read_plain;
use attn::models::bert::LoraConfig;
use attn::tasks::classify::{train, Begin, Classifier, ClassifyConfig, LongTexts, Start};
use attn::tokenizer::Tokenizer;

/// Two classes told apart by their words: "good"/"great" vs "bad"/"awful", with noise words.
fn synthetic(n: usize, seed: u64) -> Vec<Example> {
    let mut rng = attn::rng::Rng::new(seed);
    let noise = [
        "the", "film", "was", "plot", "actors", "and", "very", "quite", "ending",
    ];
    (0..n)
        .map(|i| {
            let pos = i % 2 == 0;
            let key = if pos {
                ["good", "great"][rng.below(2)]
            } else {
                ["bad", "awful"][rng.below(2)]
            };
            let mut words: Vec<&str> = (0..2 + rng.below(8))
                .map(|_| noise[rng.below(noise.len())])
                .collect();
            words.insert(rng.below(words.len() + 1), key);
            Example {
                label: if pos { "pos".into() } else { "neg".into() },
                text: words.join(" "),
            }
        })
        .collect()
}

fn tiny_config() -> ClassifyConfig {
    ClassifyConfig {
        epochs: 3,
        batch_size: 16,
        lr: 3e-3,
        hidden: 32,
        layers: 1,
        heads: 2,
        max_len: 64,
        tokenizer: "char".into(),
        dropout: 0.0,
        ..Default::default()
    }
}

fn logits_of(clf: &Classifier, texts: &[&str]) -> Vec<Vec<f32>> {
    let enc = clf
        .encode(&texts.iter().map(|t| t.to_string()).collect::<Vec<_>>())
        .unwrap();
    let batch: Vec<&[u32]> = enc.iter().map(|e| e.as_slice()).collect();
    clf.logits(&batch).unwrap()
}

/// A new run's start.
fn new_run() -> Begin<'static> {
    static DATA: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Begin::New {
        data: DATA.get_or_init(|| serde_json::Value::Null),
    }
}

#[test]
fn scratch_classifier_learns_saves_and_ignores_padding() {
    let dir = common::temp_dir("clf-scratch");
    let (tr, va) = (synthetic(800, 1), synthetic(80, 2));
    let cfg = ClassifyConfig {
        epochs: 8,
        ..tiny_config()
    };
    let s = train(
        &cfg,
        &Start::Scratch,
        &tr,
        &va,
        &dir,
        new_run(),
        &mut |_| {},
    )
    .unwrap();
    assert!(s.best_val_accuracy >= 0.95, "{s:?}");
    let clf = Classifier::load(&dir).unwrap();
    assert_eq!(clf.labels, vec!["neg", "pos"]);
    // Reloaded model scores like the one that was saved (its accuracy at the best epoch).
    let report = clf.evaluate(&va, 7).unwrap();
    assert!((report.accuracy - s.best_val_accuracy).abs() < 1e-12);
    // Padding invariance: alone vs batched with a much longer text.
    let short = "good film";
    let long = "the film was quite good and the actors were very good and the ending was great";
    let alone = logits_of(&clf, &[short]);
    let padded = logits_of(&clf, &[short, long]);
    for (a, b) in alone[0].iter().zip(&padded[0]) {
        assert!(
            (a - b).abs() < 1e-5,
            "padding changed logits: {alone:?} vs {padded:?}"
        );
    }
    // Long texts: truncation is counted, and windows average the windows' own
    // probabilities weighted by their lengths.
    let mut clf = clf;
    clf.set_max_len(16).unwrap();
    assert!(clf.set_max_len(65).is_err(), "above the position limit");
    let texts = vec![long.to_string(), short.to_string()];
    let (_, n_long) = clf.predict_long(&texts, 4, LongTexts::Truncate).unwrap();
    assert_eq!(n_long, 1);
    let (win, n_long) = clf.predict_long(&texts, 4, LongTexts::Windows).unwrap();
    assert_eq!(n_long, 1);
    let windows = clf.tokenizer.encode_windows(long, 16).unwrap();
    assert!(windows.len() > 3 && windows.iter().all(|w| w.len() <= 16));
    let batch: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
    let probs: Vec<Vec<f32>> = clf
        .logits(&batch)
        .unwrap()
        .iter()
        .map(|l| {
            let e: Vec<f32> = l.iter().map(|x| x.exp()).collect();
            let sum: f32 = e.iter().sum();
            e.iter().map(|x| x / sum).collect()
        })
        .collect();
    let total: f64 = windows.iter().map(|w| w.len() as f64).sum();
    for k in 0..2 {
        let want: f64 = windows
            .iter()
            .zip(&probs)
            .map(|(w, p)| w.len() as f64 * p[k] as f64)
            .sum::<f64>()
            / total;
        assert!((win[0][k] as f64 - want).abs() < 1e-5, "{win:?} vs {want}");
    }
    // An unseen label at evaluation time is named.
    let bad = vec![Example {
        label: "meh".into(),
        text: "so so".into(),
    }];
    let e = clf.evaluate(&bad, 4).err().unwrap().to_string();
    assert!(e.contains("\"meh\"") && e.contains("neg, pos"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A pretrained-style folder: the bert-tiny transformers fixture with a char tokenizer.
fn pretrained(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/bert-tiny");
    let m = dir.join("base");
    common::copy_dir(&src, &m);
    let text: String = synthetic(50, 3)
        .iter()
        .map(|e| e.text.clone() + "\n")
        .collect();
    let mut tok = Tokenizer::train_char(&text).unwrap();
    tok.add_classifier_specials().unwrap();
    tok.save(&m.join("tokenizer.json")).unwrap();
    m
}

#[test]
fn lora_trains_only_adapters_and_head_and_saves_both_ways() {
    let dir = common::temp_dir("clf-lora");
    let base = pretrained(&dir);
    let (tr, va) = (synthetic(300, 4), synthetic(60, 5));
    let mut cfg = ClassifyConfig {
        lora: Some(LoraConfig {
            r: 2,
            lora_alpha: 4.0,
        }),
        epochs: 8,
        lr: 2e-2,
        ..tiny_config()
    };
    let merged = dir.join("merged");
    let mut step_losses = vec![];
    let s = train(
        &cfg,
        &Start::Pretrained(base.clone()),
        &tr,
        &va,
        &merged,
        new_run(),
        &mut |e| {
            if let attn::tasks::classify::ClassifyEvent::Step(s) = e {
                step_losses.push(s.loss);
            }
        },
    )
    .unwrap();
    // It learns: the mean loss of the last ten steps is well below the first ten's.
    let n = step_losses.len();
    assert!(n >= 20, "{n} steps");
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let (first, last) = (mean(&step_losses[..10]), mean(&step_losses[n - 10..]));
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    // 2 layers × 2 adapted projections × (2·32 + 32·2) + head (2·32 + 2).
    assert_eq!(s.trainable_params, 2 * 2 * (2 * 32 + 32 * 2) + 2 * 32 + 2);
    assert!(s.trainable_params * 10 < s.total_params);
    // Frozen weights did not move: the merged folder differs from the base only in the
    // adapted query/value weights and the new head.
    let a = read_plain(&base.join("model.safetensors")).unwrap();
    let b = read_plain(&merged.join("model.safetensors")).unwrap();
    for (name, t) in &a {
        if name.starts_with("classifier.")
            || name.ends_with("query.weight")
            || name.ends_with("value.weight")
        {
            continue;
        }
        assert_eq!(t, &b[name], "{name} changed under LoRA");
    }
    assert!(!b.keys().any(|k| k.contains("lora_")));
    // Separate adapters: the folder holds the base weights plus adapter files, and
    // loads to the same predictions as the merged folder.
    cfg.merge_lora = false;
    let separate = dir.join("separate");
    train(
        &cfg,
        &Start::Pretrained(base),
        &tr,
        &va,
        &separate,
        new_run(),
        &mut |_| {},
    )
    .unwrap();
    assert!(
        separate.join("adapter_model.safetensors").is_file()
            && separate.join("adapter_config.json").is_file()
    );
    // The adapters themselves trained: every lora_B starts at zero and moved, and the
    // merged query/value weights differ from the base by B·A.
    let adapters = read_plain(&separate.join("adapter_model.safetensors")).unwrap();
    let largest = |t: &[f32]| -> f32 { t.iter().fold(0f32, |m, x| m.max(x.abs())) };
    let bs: Vec<_> = adapters
        .iter()
        .filter(|(k, _)| k.contains("lora_B"))
        .collect();
    assert_eq!(bs.len(), 4, "{:?}", adapters.keys().collect::<Vec<_>>());
    for (k, t) in bs {
        assert!(largest(&t.0) > 1e-4, "{k} never moved from zero");
    }
    for (name, t) in &a {
        if name.ends_with("query.weight") || name.ends_with("value.weight") {
            let diff: Vec<f32> = t.0.iter().zip(&b[name].0).map(|(x, y)| x - y).collect();
            assert!(largest(&diff) > 1e-6, "{name} unchanged by merging");
        }
    }
    let m1 = Classifier::load(&merged).unwrap();
    let m2 = Classifier::load(&separate).unwrap();
    let texts = [
        "good film",
        "awful plot and bad actors",
        "the ending was great",
    ];
    let (l1, l2) = (logits_of(&m1, &texts), logits_of(&m2, &texts));
    for (x, y) in l1.iter().flatten().zip(l2.iter().flatten()) {
        assert!((x - y).abs() < 1e-4, "{l1:?} vs {l2:?}");
    }
    // Predictions (batched by length) are the softmax of the logits.
    let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let probs = m1.predict(&owned, 2).unwrap();
    for (p, l) in probs.iter().zip(&l1) {
        let e: Vec<f64> = l.iter().map(|&x| (x as f64).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (pi, ei) in p.iter().zip(&e) {
            assert!((*pi as f64 - ei / sum).abs() < 1e-5, "{probs:?} vs {l1:?}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A run killed after its first epoch and resumed from the checkpoint ends where the
/// run that was never stopped ends: the same weights (bit for bit), the same
/// validation scores at every epoch, the same best epoch; and for LoRA the adapters
/// are what the checkpoint keeps apart, so they go on training.
#[test]
fn a_killed_classification_run_resumes_exactly() {
    let dir = common::temp_dir("clf-resume");
    let base = pretrained(&dir);
    let (tr, va) = (synthetic(200, 6), synthetic(40, 7));
    for lora in [
        None,
        Some(LoraConfig {
            r: 2,
            lora_alpha: 4.0,
        }),
    ] {
        let cfg = ClassifyConfig {
            epochs: 3,
            lora,
            dropout: 0.1,
            lr: if lora.is_some() { 2e-2 } else { 3e-3 },
            ..tiny_config()
        };
        let start = Start::Pretrained(base.clone());
        let straight = dir.join("straight");
        let s = train(&cfg, &start, &tr, &va, &straight, new_run(), &mut |_| {}).unwrap();
        // Killed once the first epoch's checkpoint is written.
        let stopped = dir.join("stopped");
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            train(&cfg, &start, &tr, &va, &stopped, new_run(), &mut |e| {
                if let attn::tasks::classify::ClassifyEvent::Eval(_) = e {
                    panic!("killed");
                }
            })
        }));
        assert!(killed.is_err());
        let r = train(&cfg, &start, &tr, &va, &stopped, Begin::Resume, &mut |_| {}).unwrap();
        assert_eq!(r.epochs.len(), 2, "{r:?}");
        for (a, b) in s.epochs[1..].iter().zip(&r.epochs) {
            assert_eq!(
                (a.step, a.val_accuracy, a.train_loss, a.best),
                (b.step, b.val_accuracy, b.train_loss, b.best)
            );
        }
        assert_eq!(s.best_epoch, r.best_epoch);
        let weights = |d: &Path| read_plain(&d.join("checkpoint/model.safetensors")).unwrap();
        assert_eq!(weights(&straight), weights(&stopped), "lora {lora:?}");
        // The log holds each epoch once.
        let log = std::fs::read_to_string(stopped.join("metrics.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 3, "{log}");
        for d in [straight, stopped] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
    let e = train(
        &tiny_config(),
        &Start::Scratch,
        &tr,
        &va,
        &dir.join("none"),
        Begin::Resume,
        &mut |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("no checkpoint"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

//! Translation end to end on a small synthetic language pair: training learns it, the
//! saved folder reloads to the same translations, and bad parallel data is named.

mod common;

use attn::data::Encoding;
use attn::generate::beam::BeamConfig;
use attn::rng::Rng;
use attn::tasks::translate::{read_parallel, train, Begin, Pair, TranslateConfig, Translator};

/// "Source" words map one-to-one onto "target" words, in the same order.
fn pairs(n: usize, seed: u64) -> Vec<Pair> {
    let src = [
        "red", "blue", "cat", "dog", "runs", "sleeps", "big", "small",
    ];
    let tgt = [
        "rot", "blau", "katze", "hund", "rennt", "schläft", "groß", "klein",
    ];
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let k = 2 + rng.below(4);
            let idx: Vec<usize> = (0..k).map(|_| rng.below(src.len())).collect();
            Pair {
                src: idx.iter().map(|&i| src[i]).collect::<Vec<_>>().join(" "),
                tgt: idx.iter().map(|&i| tgt[i]).collect::<Vec<_>>().join(" "),
            }
        })
        .collect()
}

#[test]
fn learns_a_word_mapping_and_reloads() {
    let dir = common::temp_dir("translate");
    let cfg = TranslateConfig {
        d_model: 32,
        layers: 1,
        heads: 2,
        ffn: 64,
        max_len: 16,
        dropout: 0.0,
        vocab_size: 300,
        lr: 3e-3,
        warmup: 50,
        max_steps: 1500,
        batch_size: 32,
        eval_interval: 500,
        bleu_sample: 50,
        beam: 1,
        ..Default::default()
    };
    let (tr, va) = (pairs(2000, 1), pairs(50, 2));
    let data = serde_json::Value::Null;
    let s = train(&cfg, &tr, &va, &dir, Begin::New { data: &data }, &mut |e| {
        if let attn::tasks::translate::TranslateEvent::Eval(e) = e {
            eprintln!("{e:?}")
        }
    })
    .unwrap();
    assert!(s.best_score > 90.0, "BLEU {}", s.best_score);
    let t = Translator::load(&dir).unwrap();
    // Published Marian's conventions, which CTranslate2's converter relies on: <pad>
    // is the last id, the decoder's start, never generated, and its embedding stays
    // zero through training (the decoder starts from a zero vector).
    let c = t.model.marian.as_ref().unwrap();
    assert_eq!(c.pad_token_id as usize, c.vocab_size - 1);
    assert_eq!(c.decoder_start_token_id, c.pad_token_id);
    assert_eq!(c.eos_token_id as usize, c.vocab_size - 2);
    assert_eq!(t.suppress, vec![c.pad_token_id]);
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let shared = st.tensor("model.shared.weight").unwrap();
    let row = c.d_model * 4;
    let pad_row = &shared.data()[c.pad_token_id as usize * row..][..row];
    assert!(pad_row.iter().all(|&b| b == 0), "the pad row was trained");
    assert!(shared.data().iter().any(|&b| b != 0));
    for f in ["tokenizer_config.json", "special_tokens_map.json"] {
        assert!(dir.join(f).is_file(), "{f} is written for AutoTokenizer");
    }
    let beam = BeamConfig {
        num_beams: 3,
        length_penalty: 1.0,
        max_new_tokens: 16,
        forced_eos: true,
        suppress: Vec::new(),
        min_new_tokens: 0,
        no_repeat_ngram_size: 0,
    };
    let (out, cut) = t
        .translate(&["red cat runs".to_string(), "".to_string()], &beam, 2)
        .unwrap();
    assert_eq!(out[0], "rot katze rennt");
    assert_eq!(out[1], "", "an empty line translates to an empty line");
    assert_eq!(cut, 0);
    // A sentence longer than the model's limit is truncated and counted, not a crash.
    let long = vec!["red cat ".repeat(30)];
    let (_, cut) = t.translate(&long, &beam, 4).unwrap();
    assert_eq!(cut, 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn parallel_files_must_have_equal_line_counts() {
    let dir = common::temp_dir("parallel");
    let (s, t) = (dir.join("a.src"), dir.join("a.tgt"));
    std::fs::write(&s, "one\ntwo\n\nthree\n").unwrap();
    std::fs::write(&t, "eins\nzwei\n").unwrap();
    let e = read_parallel(&s, &t, Encoding::Utf8)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a.tgt") && e.contains("2 lines") && e.contains("has 4"),
        "{e}"
    );
    std::fs::write(&t, "eins\nzwei\n\ndrei\n").unwrap();
    let (p, skipped) = read_parallel(&s, &t, Encoding::Utf8).unwrap();
    assert_eq!((p.len(), skipped), (3, 1));
    std::fs::remove_dir_all(&dir).ok();
}

/// The same task with a new T5 (pre-RMS-norm, relative positions, gated GELU) and a
/// character vocabulary: learned too, and its folder reloads to the same outputs; the
/// summarization metric (ROUGE-L) chooses its checkpoint.
#[test]
fn a_t5_learns_the_mapping_with_characters_and_reloads() {
    let dir = common::temp_dir("translate-t5");
    let cfg = TranslateConfig {
        d_model: 32,
        layers: 1,
        heads: 2,
        ffn: 48,
        max_len: 48,
        dropout: 0.0,
        lr: 3e-3,
        warmup: 50,
        max_steps: 1200,
        batch_size: 32,
        eval_interval: 400,
        bleu_sample: 50,
        beam: 1,
        arch: "t5".into(),
        vocab: "char".into(),
        metric: "rouge".into(),
        ..Default::default()
    };
    let (tr, va) = (pairs(2000, 1), pairs(50, 2));
    let data = serde_json::Value::Null;
    let s = train(&cfg, &tr, &va, &dir, Begin::New { data: &data }, &mut |e| {
        if let attn::tasks::translate::TranslateEvent::Eval(e) = e {
            eprintln!("{e:?}")
        }
    })
    .unwrap();
    assert!(s.best_score > 85.0, "ROUGE-L {}", s.best_score);
    let t = Translator::load(&dir).unwrap();
    assert!(t.model.t5.is_some() && !t.forced_eos);
    let beam = BeamConfig {
        num_beams: 2,
        max_new_tokens: 48,
        forced_eos: false,
        ..Default::default()
    };
    let srcs: Vec<String> = va.iter().map(|p| p.src.clone()).collect();
    let (out, _) = t.translate(&srcs, &beam, 8).unwrap();
    let right = out.iter().zip(&va).filter(|(o, p)| *o == &p.tgt).count();
    assert!(right >= 25, "{right} of 50 exact: {:?}", &out[..3]);
    // A character the training text never had reads as <unk> instead of failing.
    let (ids, _) = t.encode_src("red ☃ cat").unwrap();
    assert!(ids.contains(&t.tokenizer.inner().token_to_id("<unk>").unwrap()));
}

#[test]
fn a_new_model_can_take_its_vocabulary_from_a_given_tokenizer() {
    // Two runs that must share one vocabulary (a pre-training and the model trained
    // from scratch it is compared with): the second reads the first's tokenizer.json
    // instead of building its own from its (different) training text.
    let dir = common::temp_dir("translate-given-tokenizer");
    let given =
        attn::tokenizer::Tokenizer::train_char_with_unk_named("abc ☃✓xyz", "<unk>").unwrap();
    let path = dir.join("given.json");
    given.save(&path).unwrap();
    let cfg = TranslateConfig {
        d_model: 16,
        layers: 1,
        heads: 2,
        ffn: 16,
        max_len: 16,
        max_steps: 2,
        batch_size: 4,
        eval_interval: 2,
        bleu_sample: 4,
        arch: "t5".into(),
        vocab: "char".into(),
        metric: "loss".into(),
        tokenizer: Some(path.clone()),
        ..Default::default()
    };
    let (tr, va) = (pairs(20, 1), pairs(4, 2));
    let data = serde_json::Value::Null;
    let out = dir.join("run");
    train(
        &cfg,
        &tr,
        &va,
        &out,
        Begin::New { data: &data },
        &mut |_| {},
    )
    .unwrap();
    let t = Translator::load(&out).unwrap();
    // Every token of the given vocabulary keeps its id (☃ and ✓ never occur in the
    // training pairs, so a vocabulary built from them would lack both), and T5's
    // specials come after: <pad>, </s> and 100 sentinels (<unk> was there already).
    for tok in ["a", "☃", "✓", "z", "<unk>"] {
        assert_eq!(
            t.tokenizer.token_to_id(tok),
            given.token_to_id(tok),
            "{tok}"
        );
    }
    assert_eq!(t.tokenizer.vocab_size(), given.vocab_size() + 102);
    assert_eq!(t.model.spec.vocab_size, t.tokenizer.vocab_size());
    // A fine-tuned model keeps its own folder's tokenizer: both together are refused.
    let both = TranslateConfig {
        init: Some(out.clone()),
        ..cfg
    };
    let err = train(
        &both,
        &tr,
        &va,
        &dir.join("r2"),
        Begin::New { data: &data },
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tokenizer"), "{err}");
}

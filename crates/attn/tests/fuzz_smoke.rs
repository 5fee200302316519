//! Fuzz smoke test: the fuzz targets of `fuzz/` (model folder, tokenizer.json, labelled
//! data) run without a fuzzer, on every committed seed and regression input and on a few
//! thousand deterministic mutations of them. A panic fails the test with the input saved;
//! the test process runs under a 4 GiB address-space cap, so an input that makes a
//! loader allocate gigabytes aborts it.
//!
//! `cargo test -p attn --test fuzz_smoke -- --ignored write_seed_corpora` writes the
//! generated seeds again (after a change to the formats).

#![allow(dead_code)]

#[path = "../../../fuzz/src/known.rs"]
mod known;
#[path = "../../../fuzz/src/labelled.rs"]
mod labelled;
#[path = "../../../fuzz/src/model_folder.rs"]
mod model_folder;
#[path = "../../../fuzz/src/mutate.rs"]
mod mutate;
#[path = "../../../fuzz/src/scratch.rs"]
mod scratch;
#[path = "../../../fuzz/src/smoke.rs"]
mod smoke;
#[path = "../../../fuzz/src/tokenizer_json.rs"]
mod tokenizer_json;

use std::path::PathBuf;

use smoke::{fuzz_dir, replay};

/// The address-space cap of this test process (the debug build maps more than the
/// fuzzer's release build, whose cap is 2 GiB).
const CAP_MIB: u64 = 4096;

fn fuzz() -> PathBuf {
    fuzz_dir(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn fuzz_smoke_model_folder() {
    scratch::cap_address_space(CAP_MIB);
    let t = model_folder::Target::new();
    let r = replay(&fuzz(), "model_folder", 3000, 0x6d6f64656c, |d| {
        t.run(d) > 0
    });
    assert!(r.accepted >= r.seeds, "{r:?}");
}

#[test]
fn fuzz_smoke_tokenizer_json() {
    scratch::cap_address_space(CAP_MIB);
    let t = tokenizer_json::Target::new();
    replay(&fuzz(), "tokenizer_json", 4000, 0x746f6b656e, |d| t.run(d));
}

#[test]
fn fuzz_smoke_labelled() {
    scratch::cap_address_space(CAP_MIB);
    let t = labelled::Target::new();
    replay(&fuzz(), "labelled", 6000, 0x6c6162656c, |d| t.run(d) > 0);
}

// ---------------------------------------------------------------------------------------
// Seed corpora

mod seeds {
    use std::collections::BTreeMap;

    use attn::engine::io::{write_plain, Plain};
    use attn::engine::{Decoder, DecoderSpec};
    use attn::kernels::WeightType;
    use attn::models::bert::BertConfig;
    use attn::models::gpt2::Gpt2Config;
    use attn::models::llama::LlamaConfig;
    use attn::models::marian::MarianConfig;
    use attn::tokenizer::Tokenizer;
    use attn::train::encoder::NativeEncoder;
    use attn::train::native::NativeDecoder;
    use attn::train::seq2seq::NativeSeq2Seq;
    use serde_json::{json, Value};

    use super::{labelled, model_folder, scratch::Scratch};

    fn params_bytes(tensors: &Plain) -> Vec<u8> {
        let s = Scratch::new("seed-weights");
        let p = s.path().join("w.safetensors");
        write_plain(&p, tensors).unwrap();
        std::fs::read(p).unwrap()
    }

    /// Fresh decoder weights of `spec` (seed 7).
    fn init(spec: &DecoderSpec) -> Plain {
        NativeDecoder::init(spec, (0.0, 0.0, 0.0), 7, 0.02)
            .unwrap()
            .tensors()
    }

    fn json_bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    /// A GPT-2 folder's files after a trip through the inference engine as `ty`.
    fn engine_folder(config: &Gpt2Config, ty: WeightType) -> Vec<u8> {
        let weights = init(&DecoderSpec::from_gpt2(config).unwrap());
        let src = Scratch::new("seed-src");
        std::fs::write(
            src.path().join("config.json"),
            json_bytes(&config.to_hf_json()),
        )
        .unwrap();
        std::fs::write(src.path().join("model.safetensors"), params_bytes(&weights)).unwrap();
        let engine = Decoder::load(src.path(), Some(ty)).unwrap();
        let out = Scratch::new("seed-out");
        engine.save(out.path(), None).unwrap();
        model_folder::join(
            &std::fs::read(out.path().join("config.json")).unwrap(),
            &std::fs::read(out.path().join("model.safetensors")).unwrap(),
        )
    }

    pub fn model_folder() -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        // GPT-2: tied embeddings, f32; the same through the engine as f16; a 32-wide
        // one (the quantized layouts need rows of 32) as q4.
        let mut gpt2 = Gpt2Config::new(8, 8, 4, 1, 2);
        gpt2.bos_token_id = Some(0);
        gpt2.eos_token_id = Some(3);
        let weights = init(&DecoderSpec::from_gpt2(&gpt2).unwrap());
        out.insert(
            "valid-gpt2-f32".into(),
            model_folder::join(&json_bytes(&gpt2.to_hf_json()), &params_bytes(&weights)),
        );
        out.insert(
            "valid-gpt2-f16".into(),
            engine_folder(&gpt2, WeightType::F16),
        );
        let mut wide = Gpt2Config::new(8, 4, 32, 1, 2);
        wide.n_inner = Some(32);
        out.insert("valid-gpt2-q4".into(), engine_folder(&wide, WeightType::Q4));
        // Llama with grouped-query attention and untied embeddings.
        let llama = json!({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "hidden_act": "silu", "tie_word_embeddings": false,
            "bos_token_id": 0, "eos_token_id": 3
        });
        let cfg: LlamaConfig = serde_json::from_value(llama.clone()).unwrap();
        let weights = init(&DecoderSpec::from_llama(&cfg).unwrap());
        out.insert(
            "valid-llama-gqa".into(),
            model_folder::join(&json_bytes(&llama), &params_bytes(&weights)),
        );
        // BERT: a bare BertModel with its pooler, and a sequence classifier.
        let labels = ["neg".to_string(), "pos".to_string()];
        let clf = BertConfig::classifier(8, 4, 1, 2, 8, &labels);
        let encoder = NativeEncoder::init(clf.clone(), 7).unwrap().tensors();
        let task: Plain = encoder
            .iter()
            .map(|(n, t)| {
                let n = if n.starts_with("classifier.") {
                    n.clone()
                } else {
                    format!("bert.{n}")
                };
                (n, t.clone())
            })
            .collect();
        out.insert(
            "valid-bert-classifier".into(),
            model_folder::join(&json_bytes(&clf.to_hf_json()), &params_bytes(&task)),
        );
        let mut bare = clf.clone();
        bare.id2label = None;
        bare.num_labels = None;
        bare.architectures = Some(vec!["BertModel".into()]);
        let base: Plain = encoder
            .into_iter()
            .filter(|(n, _)| !n.starts_with("classifier."))
            .collect();
        out.insert(
            "valid-bert-model".into(),
            model_folder::join(&json_bytes(&bare.to_hf_json()), &params_bytes(&base)),
        );
        // Marian: shared vocabulary, decoder starting from the pad token.
        let marian = MarianConfig::transformer(8, 4, 1, 2, 8, 8, 0, 3);
        let model = NativeSeq2Seq::init(marian.clone(), 7).unwrap();
        out.insert(
            "valid-marian".into(),
            model_folder::join(
                &json_bytes(&marian.to_hf_json()),
                &params_bytes(&model.tensors()),
            ),
        );
        // T5 v1.1: gated GELU, a head of its own, relative positions.
        let t5 = attn::models::t5::T5Config::v1_1(9, 4, 1, 2, 6);
        let model = attn::train::t5::NativeT5::init(t5.clone(), 7).unwrap();
        out.insert(
            "valid-t5".into(),
            model_folder::join(
                &json_bytes(&t5.to_hf_json()),
                &params_bytes(&model.tensors()),
            ),
        );
        out
    }

    fn compact(t: &Tokenizer) -> Vec<u8> {
        t.inner().to_string(false).unwrap().into_bytes()
    }

    pub fn tokenizer_json() -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let text = "Hello, world! abcd héllo 日本\n";
        out.insert(
            "valid-char.json".into(),
            compact(&Tokenizer::train_char(text).unwrap()),
        );
        out.insert(
            "valid-char-unk.json".into(),
            compact(&Tokenizer::train_char_with_unk(text).unwrap()),
        );
        let mut specials = Tokenizer::train_char("abcdef").unwrap();
        specials.add_classifier_specials().unwrap();
        out.insert("valid-char-cls-sep.json".into(), compact(&specials));
        let bpe = Tokenizer::train_bpe(&"hello world, hello there. ".repeat(20), 270).unwrap();
        out.insert("valid-bytelevel-bpe.json".into(), compact(&bpe));
        // The same with RoBERTa's post-processor and a truncation stored in the file.
        let mut v: Value = serde_json::from_slice(&compact(&bpe)).unwrap();
        v["post_processor"] = json!({"type": "RobertaProcessing", "sep": ["<|endoftext|>", 256],
            "cls": ["<|endoftext|>", 256], "trim_offsets": true, "add_prefix_space": false});
        v["truncation"] = json!({"direction": "Right", "max_length": 6,
            "strategy": "LongestFirst", "stride": 1});
        out.insert("valid-roberta-truncation.json".into(), json_bytes(&v));
        for (name, v) in hand_written_tokenizers() {
            out.insert(name.into(), json_bytes(&v));
        }
        out
    }

    fn added(id: u32, content: &str) -> Value {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    }

    /// WordPiece (BERT's), Unigram (SentencePiece's), WordLevel with regex normalisers and
    /// pre-tokenisers, and byte-fallback BPE (Llama's): the families `from_file` meets.
    fn hand_written_tokenizers() -> Vec<(&'static str, Value)> {
        let wordpiece = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [added(0, "[PAD]"), added(1, "[UNK]"), added(2, "[CLS]"), added(3, "[SEP]")],
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                           "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                "special_tokens": {
                    "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                    "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                      "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                      "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4,
                                "world": 5, "##s": 6, "a": 7, "##b": 8, ",": 9, "!": 10,
                                "日": 11, "本": 12}}
        });
        let unigram = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [added(0, "<unk>"), added(2, "</s>")],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFKC"},
                {"type": "Replace", "pattern": {"String": "  "}, "content": " "}]},
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁",
                              "prepend_scheme": "always", "split": true},
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 0}},
                         {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                "special_tokens": {"</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}},
            "decoder": {"type": "Metaspace", "replacement": "▁",
                        "prepend_scheme": "always", "split": true},
            "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": false, "vocab": [
                ["<unk>", 0.0], ["<s>", 0.0], ["</s>", 0.0], ["▁", -2.0], ["▁hello", -3.0],
                ["▁world", -3.5], ["a", -4.0], ["b", -4.0], ["c", -4.5], ["d", -4.5],
                [",", -5.0], ["!", -5.0], ["l", -6.0], ["o", -6.0], ["h", -6.0], ["e", -6.0]]}
        });
        let wordlevel = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFD"}, {"type": "StripAccents"}, {"type": "Lowercase"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "[,.!?]"}, "behavior": "Isolated",
                 "invert": false},
                {"type": "Whitespace"},
                {"type": "Digits", "individual_digits": true}]},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "unk_token": "<unk>",
                      "vocab": {"<unk>": 0, "hello": 1, "world": 2, ",": 3, "!": 4, "abcd": 5}}
        });
        let mut vocab = serde_json::Map::new();
        for (i, t) in [
            "<unk>", "<s>", "</s>", "▁", "h", "e", "l", "o", "▁h", "▁he", "ll", "▁hell",
        ]
        .iter()
        .enumerate()
        {
            vocab.insert(t.to_string(), json!(i));
        }
        for b in 0..=255u32 {
            vocab.insert(format!("<0x{b:02X}>"), json!(12 + b));
        }
        let byte_fallback = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": null,
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "<s>", "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab,
                      "merges": [["▁", "h"], ["▁h", "e"], ["l", "l"], ["▁he", "ll"]]}
        });
        vec![
            ("valid-wordpiece.json", wordpiece),
            ("valid-unigram.json", unigram),
            ("valid-wordlevel-regex.json", wordlevel),
            ("valid-bpe-byte-fallback.json", byte_fallback),
        ]
    }

    pub fn labelled() -> BTreeMap<String, Vec<u8>> {
        let with = |format: usize, latin1: bool, body: &[u8]| {
            let mut v = vec![labelled::selector(format, latin1)];
            v.extend_from_slice(body);
            v
        };
        let mut out = BTreeMap::new();
        out.insert(
            "valid-tsv".into(),
            with(
                0,
                false,
                b"pos\tgreat film\n\nneg\tdull, slow\r\npos\tcafe\xcc\x81 \"ok\"\n",
            ),
        );
        out.insert(
            "valid-csv".into(),
            with(
                1,
                false,
                b"text,label\n\"a, \"\"quoted\"\" text\",pos\n\"multi\nline\",neg\r\nplain,neg\n",
            ),
        );
        out.insert(
            "valid-jsonl".into(),
            with(
                2,
                false,
                b"{\"label\": 1, \"text\": \"x\"}\n{\"label\": \"b\", \"text\": \"y \\u00e9\"}\n\n{\"label\": true, \"text\": \"z\", \"extra\": [1, 2]}\n",
            ),
        );
        out.insert(
            "valid-json".into(),
            with(3, false, b"{\"text\": \"one line\", \"label\": 0.5}\n"),
        );
        out.insert(
            "valid-txt-as-tsv".into(),
            with(4, false, b"a\tb\nc\td\te\n"),
        );
        out.insert(
            "valid-class-folder".into(),
            with(
                5,
                false,
                b"awful\nboring film\n\xffgreat\n\nnice\n\xffmeh\n\xffhidden\tfile\n",
            ),
        );
        out.insert(
            "valid-upper-csv".into(),
            with(
                6,
                false,
                b"ID,Label,Text\n1,x,hello\n2,y,\"world, again\"\n",
            ),
        );
        out.insert(
            "valid-latin1-tsv".into(),
            with(0, true, b"pos\tcaf\xe9 cr\xe8me\nneg\tna\xefve \xbfno?\n"),
        );
        out.insert(
            "valid-no-extension".into(),
            with(7, false, b"1\tone\n2\ttwo\n"),
        );
        out
    }
}

/// Write the generated seed corpora to `fuzz/corpus/` (replacing the `valid-*` files).
#[test]
#[ignore = "writes fuzz/corpus; run by hand after a change to the formats"]
fn write_seed_corpora() {
    for (target, files) in [
        ("model_folder", seeds::model_folder()),
        ("tokenizer_json", seeds::tokenizer_json()),
        ("labelled", seeds::labelled()),
    ] {
        let dir = fuzz().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(&name), &bytes).unwrap();
            eprintln!("{target}/{name}: {} bytes", bytes.len());
        }
    }
}

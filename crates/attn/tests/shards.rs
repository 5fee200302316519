//! Token shards: the tokens of `data tokenize`'s shards are those `attn train` builds from
//! the same files (whole corpus read, normalised, tokenized at once, split by
//! `LmSplits`), for char and byte-level BPE tokenizers, with the text cut into small
//! pieces and multibyte characters cut by the blocks; bad shards are named.

mod common;

use std::path::PathBuf;

use attn::data::shards::{read_shard, tokenize, TokenizeConfig};
use attn::data::{read_corpus, Encoding, LmSplits};
use attn::tokenizer::Tokenizer;

fn cfg(encoding: Encoding, shard_tokens: usize, val_fraction: f64, piece: usize) -> TokenizeConfig {
    TokenizeConfig {
        encoding,
        shard_tokens,
        val_fraction,
        piece_bytes: piece,
        ..Default::default()
    }
}

fn shard_tokens(dir: &std::path::Path) -> (Vec<u32>, Vec<u32>) {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let mut train = Vec::new();
    for s in index["train"].as_array().unwrap() {
        let ids = read_shard(&dir.join(s["file"].as_str().unwrap())).unwrap();
        assert_eq!(ids.len() as u64, s["tokens"].as_u64().unwrap());
        train.extend(ids);
    }
    (train, read_shard(&dir.join("val.bin")).unwrap())
}

#[test]
fn shards_hold_the_text_paths_tokens() {
    let Some(data) = common::data_dir() else {
        return;
    };
    let dir = common::temp_dir("shards");
    // A Latin-1 file too, with bytes above 0x7f.
    let latin = dir.join("latin1.txt");
    std::fs::write(
        &latin,
        b"caf\xe9 cr\xe8me  br\xfbl\xe9e\r\n\xe0 la carte\n\n\nfin",
    )
    .unwrap();
    let sets: Vec<(Vec<PathBuf>, Encoding)> = vec![
        (
            vec![
                data.join("tinyshakespeare/input.txt"),
                data.join("chinese-poetry/tang_poems.txt"),
                data.join("gutenberg/blake-poems.txt"),
            ],
            Encoding::Utf8,
        ),
        (vec![latin.clone()], Encoding::Latin1),
    ];
    for (files, enc) in sets {
        let corpus = read_corpus(&files, enc).unwrap();
        let sample: String = corpus.chars().step_by(7).take(200_000).collect();
        for tok in [
            Tokenizer::train_char(&corpus).unwrap(),
            Tokenizer::train_bpe(&sample, 600).unwrap(),
        ] {
            let want = LmSplits::new(tok.encode(&corpus).unwrap(), 0.1).unwrap();
            for piece in [257, 65536] {
                let out = dir.join(format!("out-{piece}"));
                let r = tokenize(&files, &tok, &out, &cfg(enc, 50_000, 0.1, piece)).unwrap();
                let (train, val) = shard_tokens(&out);
                assert_eq!(train.len(), want.train.len(), "pieces of {piece} bytes");
                assert!(
                    train == want.train.to_vec().unwrap(),
                    "training tokens differ (pieces of {piece} bytes)"
                );
                assert!(
                    val == want.val.to_vec().unwrap(),
                    "validation tokens differ (pieces of {piece} bytes)"
                );
                assert_eq!(r.tokens as usize, want.train.len() + want.val.len());
                assert!(Tokenizer::from_file(&out.join("tokenizer.json")).is_ok());
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_shards_and_inputs_are_named() {
    let dir = common::temp_dir("shards-bad");
    let f = dir.join("a.txt");
    std::fs::write(&f, "hello world\n").unwrap();
    let tok = Tokenizer::train_char("hello world\n").unwrap();
    let out = dir.join("out");
    tokenize(
        std::slice::from_ref(&f),
        &tok,
        &out,
        &cfg(Encoding::Utf8, 4, 0.25, 5),
    )
    .unwrap();
    let shard = out.join("train-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes.pop();
    std::fs::write(&shard, &bytes).unwrap();
    let e = read_shard(&shard).unwrap_err().to_string();
    assert!(
        e.contains("train-00000.bin") && e.contains("header says"),
        "{e}"
    );
    std::fs::write(&shard, b"not a shard").unwrap();
    assert!(read_shard(&shard)
        .unwrap_err()
        .to_string()
        .contains("ATTNTOK1"));
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, " \n\t\n").unwrap();
    let e = tokenize(&[empty], &tok, &out, &cfg(Encoding::Utf8, 4, 0.1, 5)).unwrap_err();
    assert!(e.to_string().contains("empty.txt"), "{e}");
    std::fs::write(&f, b"ok\nbad \xff").unwrap();
    let e = tokenize(&[f], &tok, &out, &cfg(Encoding::Utf8, 4, 0.1, 3)).unwrap_err();
    assert!(
        e.to_string().contains("a.txt") && e.to_string().contains('7'),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A file's text, as tokenize reads it, in a folder of its own.
fn one_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A failed tokenize leaves nothing in its folder; with `skip_invalid` the bad bytes
/// are dropped and counted, and the shards hold the rest of the text.
#[test]
fn tokenize_is_all_or_nothing_and_skips_bad_bytes_when_asked() {
    let dir = common::temp_dir("shards-skip");
    let good = one_file(&dir, "good.txt", "hello world\n".repeat(50).as_bytes());
    let bad = one_file(&dir, "bad.txt", b"ok\nbad \xff\xfe here\n");
    let tok = Tokenizer::train_char("hello world\nokbad here").unwrap();
    let out = dir.join("out");
    let mut c = cfg(Encoding::Utf8, 16, 0.1, 64);
    let e = tokenize(&[good.clone(), bad.clone()], &tok, &out, &c).unwrap_err();
    assert!(e.to_string().contains("bad.txt"), "{e}");
    assert!(listing(&out).is_empty(), "left behind: {:?}", listing(&out));
    c.skip_invalid = true;
    let r = tokenize(&[good, bad], &tok, &out, &c).unwrap();
    assert_eq!(r.invalid_bytes_skipped, 2);
    let (train, val) = shard_tokens(&out);
    let text = tok.decode(&[train, val].concat()).unwrap();
    assert_eq!(text, "hello world\n".repeat(50) + "ok\nbad  here\n");
    assert!(
        listing(&out).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        listing(&out)
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A shard folder is checked when training opens it: the index, each shard's header
/// against the index, the tokenizer against the shards' width and vocabulary, and the
/// ids against the vocabulary as windows are read.
#[test]
fn bad_shard_folders_are_named_when_opened() {
    use attn::data::shards::ShardSet;
    let dir = common::temp_dir("shards-open");
    let f = one_file(&dir, "a.txt", "abcab cabca bcabc\n".repeat(20).as_bytes());
    let tok = Tokenizer::train_char("abc \n").unwrap();
    let good = dir.join("good");
    tokenize(
        std::slice::from_ref(&f),
        &tok,
        &good,
        &cfg(Encoding::Utf8, 50, 0.2, 64),
    )
    .unwrap();
    let set = ShardSet::open(&good).unwrap();
    assert_eq!(set.train.len() + set.val.len(), 360);
    // A window across two shards is the text's.
    let mut w = vec![0u32; 20];
    set.train.read(40, &mut w).unwrap();
    assert_eq!(
        tok.decode(&w).unwrap(),
        &"abcab cabca bcabc\n".repeat(20)[40..60]
    );
    assert!(set.train.read(set.train.len() - 5, &mut w).is_err());

    let copy = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for n in listing(&good) {
            std::fs::copy(good.join(&n), d.join(&n)).unwrap();
        }
        d
    };
    let edit_index = |d: &std::path::Path, f: &dyn Fn(&mut serde_json::Value)| {
        let p = d.join("index.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
    };
    let err = |d: &std::path::Path| ShardSet::open(d).unwrap_err().to_string();

    assert!(err(&dir).contains("index.json"), "{}", err(&dir));
    let d = copy("outside");
    edit_index(&d, &|v| {
        v["train"][0]["file"] = "../good/train-00000.bin".into()
    });
    assert!(
        err(&d).contains("not a file name in the folder"),
        "{}",
        err(&d)
    );
    let d = copy("count");
    edit_index(&d, &|v| v["train"][1]["tokens"] = 49.into());
    assert!(
        err(&d).contains("train-00001.bin") && err(&d).contains("index says"),
        "{}",
        err(&d)
    );
    let d = copy("truncated");
    let shard = d.join("train-00002.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&shard, bytes).unwrap();
    assert!(
        err(&d).contains("train-00002.bin") && err(&d).contains("header says"),
        "{}",
        err(&d)
    );
    let d = copy("vocab");
    edit_index(&d, &|v| v["vocab_size"] = 4000.into());
    assert!(err(&d).contains("tokenizer.json"), "{}", err(&d));
    // A tokenizer whose ids do not fit the shards' 16 bits.
    let d = copy("wide");
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..70_000).map(|i| (format!("w{i}"), i.into())).collect();
    let wide = serde_json::json!({"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}});
    std::fs::write(d.join("tokenizer.json"), wide.to_string()).unwrap();
    edit_index(&d, &|v| v["vocab_size"] = 70_000.into());
    assert!(err(&d).contains("16-bit"), "{}", err(&d));
    // An id outside the vocabulary: named when its window is read.
    let d = copy("ids");
    let shard = d.join("train-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[32 + 2 * 7] = 200;
    std::fs::write(&shard, bytes).unwrap();
    let set = ShardSet::open(&d).unwrap();
    let e = set.train.read(0, &mut w).unwrap_err().to_string();
    assert!(
        e.contains("train-00000.bin") && e.contains("token 7"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

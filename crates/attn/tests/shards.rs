//! Token shards: the tokens of `data tokenize`'s shards are those `attn train` builds from
//! the same files (whole corpus read, normalised, tokenized at once, split by
//! `LmSplits`), for char and byte-level BPE tokenizers, with the text cut into small
//! pieces and multibyte characters cut by the blocks; bad shards are named.

mod common;

use std::path::PathBuf;

use attn::data::shards::{read_shard, tokenize_in_pieces};
use attn::data::{read_corpus, Encoding, LmSplits};
use attn::tokenizer::Tokenizer;

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
                let r = tokenize_in_pieces(&files, enc, &tok, &out, 50_000, 0.1, piece).unwrap();
                let (train, val) = shard_tokens(&out);
                assert_eq!(train.len(), want.train.len(), "pieces of {piece} bytes");
                assert!(
                    train == want.train,
                    "training tokens differ (pieces of {piece} bytes)"
                );
                assert!(
                    val == want.val,
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
    tokenize_in_pieces(
        std::slice::from_ref(&f),
        Encoding::Utf8,
        &tok,
        &out,
        4,
        0.25,
        5,
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
    let e = tokenize_in_pieces(&[empty], Encoding::Utf8, &tok, &out, 4, 0.1, 5).unwrap_err();
    assert!(e.to_string().contains("empty.txt"), "{e}");
    std::fs::write(&f, b"ok\nbad \xff").unwrap();
    let e = tokenize_in_pieces(&[f], Encoding::Utf8, &tok, &out, 4, 0.1, 3).unwrap_err();
    assert!(
        e.to_string().contains("a.txt") && e.to_string().contains('7'),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

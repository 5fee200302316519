//! Tokenizer round trips on the real English and Chinese corpora.

mod common;

use attn::data::{normalize, read_text, Encoding};
use attn::tokenizer::Tokenizer;

fn sample(path: &std::path::Path, chars: usize) -> String {
    let text = normalize(&read_text(path, Encoding::Utf8).unwrap());
    text.chars().take(chars).collect()
}

#[test]
fn char_and_bpe_round_trip_on_english_and_chinese() {
    let Some(dir) = common::data_dir() else {
        return;
    };
    let english = sample(&dir.join("tinyshakespeare/input.txt"), 60_000);
    let chinese = sample(&dir.join("chinese-poetry/tang_poems.txt"), 30_000);
    for text in [&english, &chinese] {
        let char_tok = Tokenizer::train_char(text).unwrap();
        let ids = char_tok.encode(text).unwrap();
        assert_eq!(ids.len(), text.chars().count());
        assert_eq!(&char_tok.decode(&ids).unwrap(), text);

        let bpe = Tokenizer::train_bpe(text, 1000).unwrap();
        let ids = bpe.encode(text).unwrap();
        assert_eq!(&bpe.decode(&ids).unwrap(), text);
        assert!(ids.len() < text.len(), "BPE learned no merges");
    }
    // A BPE trained on English still round-trips Chinese, byte by byte if need be.
    let bpe = Tokenizer::train_bpe(&english, 600).unwrap();
    let ids = bpe.encode(&chinese).unwrap();
    assert_eq!(bpe.decode(&ids).unwrap(), chinese);
}

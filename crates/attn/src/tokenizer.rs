//! A thin layer over the `tokenizers` crate. Two kinds can be trained from a corpus:
//!
//! * `char`: one token per Unicode character seen in the corpus (nanoGPT's char level);
//!   stored as a BPE model with no merges and a `Fuse` decoder, so the file is an ordinary
//!   `tokenizer.json` that Python's `tokenizers` loads as it is.
//! * byte-level BPE (GPT-2's scheme): 256 byte symbols plus learned merges, with the
//!   `<|endoftext|>` special token. Any text round-trips, whatever its script.
//!
//! Any other `tokenizer.json` (WordPiece, SentencePiece-style...) loads too.

use std::collections::BTreeSet;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, PostProcessor, PreTokenizerWrapper, TokenizerBuilder,
};

use crate::{Error, Result};

/// GPT-2's end-of-text token, used by byte-level BPE tokenizers trained here.
pub const END_OF_TEXT: &str = "<|endoftext|>";

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// True for a char-level tokenizer (no normaliser, no pre-tokeniser): then every
    /// input character must be in the vocabulary, which the BPE model would otherwise
    /// drop silently.
    strict_coverage: bool,
    /// The lean encoder, for the tokenizer kinds it reproduces exactly.
    fast: Option<std::sync::Arc<crate::tokenizer_fast::Fast>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer(vocab_size={})", self.vocab_size())
    }
}

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

thread_local! {
    /// Set while [`without_panic`] runs its closure on this thread.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `f()`, or `None` if it panicked, without the panic message on stderr (for calls into
/// the tokenizers crate, which panics on some malformed files and inputs instead of
/// failing). The panic hook is wrapped once, process-wide, and stays silent only for the
/// thread inside such a call: panics elsewhere are reported as before.
fn without_panic<T>(f: impl FnOnce() -> T) -> Option<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r.ok()
}

/// One past the largest id of `inner`, at least `vocab_size`.
fn id_limit(inner: &tokenizers::Tokenizer, vocab_size: usize) -> usize {
    let top = inner
        .get_vocab(true)
        .values()
        .map(|&id| id as usize + 1)
        .max()
        .unwrap_or(0);
    top.max(vocab_size)
}

fn library_failed() -> Error {
    Error::Tokenizer(
        "the tokenizers library failed on this input (a malformed tokenizer.json?)".into(),
    )
}

/// The largest vocabulary [`Tokenizer::train_bpe`] accepts: the trainer sizes its tables
/// by it, and no corpus needs more (published models stop near 256k).
pub const MAX_BPE_VOCAB: usize = 1 << 20;

impl Tokenizer {
    /// `inner.encode(text)` without special tokens, a panic in the library an error.
    fn enc(&self, text: &str) -> Result<tokenizers::Encoding> {
        without_panic(|| self.inner.encode(text, false))
            .ok_or_else(library_failed)?
            .map_err(tk_err)
    }

    /// The post-processor's special tokens added to `enc`, a panic an error.
    fn post(&self, enc: tokenizers::Encoding) -> Result<tokenizers::Encoding> {
        without_panic(|| self.inner.post_process(enc, None, true))
            .ok_or_else(library_failed)?
            .map_err(tk_err)
    }

    /// `inner.decode`, a panic an error.
    fn dec(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        without_panic(|| self.inner.decode(ids, skip_special))
            .ok_or_else(library_failed)?
            .map_err(tk_err)
    }

    fn wrap(inner: tokenizers::Tokenizer) -> Self {
        let has_unk =
            matches!(inner.get_model(), ModelWrapper::BPE(b) if b.get_unk_token().is_some());
        let strict_coverage =
            inner.get_normalizer().is_none() && inner.get_pre_tokenizer().is_none() && !has_unk;
        let mut t = Tokenizer {
            inner,
            strict_coverage,
            fast: None,
        };
        t.refresh();
        t
    }

    /// Rebuild the lean encoder after the library's tokenizer changed.
    fn refresh(&mut self) {
        self.fast = if std::env::var_os("ATTN_TOKENIZER_LIBRARY").is_some() {
            None
        } else {
            self.inner
                .to_string(false)
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .and_then(|v| crate::tokenizer_fast::Fast::new(&v))
                .map(std::sync::Arc::new)
        };
    }

    /// Whether [`Self::encode`] takes attn's own encoder (byte-level BPE and char-level
    /// tokenizers, and other BPE files of those shapes) rather than the library's.
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// A character-level tokenizer whose vocabulary is every distinct character of `text`,
    /// in code point order (as nanoGPT's `sorted(set(text))`).
    pub fn train_char(text: &str) -> Result<Self> {
        Self::char_vocab(text, None)
    }

    /// A character-level tokenizer that maps characters it never saw to `[UNK]` (the
    /// last id) instead of refusing them: for classifiers, which meet new text.
    pub fn train_char_with_unk(text: &str) -> Result<Self> {
        Self::char_vocab(text, Some("[UNK]"))
    }

    /// [`Self::train_char_with_unk`] with the unknown token named `unk` (`<unk>` in
    /// T5's and Marian's vocabularies).
    pub fn train_char_with_unk_named(text: &str, unk: &str) -> Result<Self> {
        Self::char_vocab(text, Some(unk))
    }

    fn char_vocab(text: &str, unk: Option<&str>) -> Result<Self> {
        let chars: BTreeSet<char> = text.chars().collect();
        if chars.is_empty() {
            return Err(Error::invalid(
                "data",
                "no characters to build a vocabulary from",
            ));
        }
        let mut vocab: tokenizers::models::bpe::Vocab = chars
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i as u32))
            .collect();
        let mut builder = BPE::builder();
        if let Some(u) = unk {
            vocab.insert(u.to_string(), chars.len() as u32);
            builder = builder.unk_token(u.to_string());
        }
        let bpe = builder
            .vocab_and_merges(vocab, vec![])
            .build()
            .map_err(tk_err)?;
        let inner: tokenizers::Tokenizer = TokenizerBuilder::<
            ModelWrapper,
            tokenizers::NormalizerWrapper,
            PreTokenizerWrapper,
            tokenizers::PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(bpe.into())
        .with_decoder(Some(Fuse::new().into()))
        .build()
        .map_err(tk_err)?
        .into();
        Ok(Self::wrap(inner))
    }

    /// A byte-level BPE tokenizer (GPT-2 style) trained on `text` up to `vocab_size`
    /// tokens, which counts the 256 byte symbols and the `<|endoftext|>` token.
    pub fn train_bpe(text: &str, vocab_size: usize) -> Result<Self> {
        let min = 256 + 1;
        if vocab_size < min {
            return Err(Error::invalid(
                "vocab-size",
                format!("{vocab_size} is too small for byte-level BPE (at least {min}: 256 bytes + <|endoftext|>)"),
            ));
        }
        if vocab_size > MAX_BPE_VOCAB {
            return Err(Error::invalid(
                "vocab-size",
                format!(
                    "{vocab_size} is more than the {MAX_BPE_VOCAB} tokens attn trains (the largest \
                     published vocabularies are about 256k)"
                ),
            ));
        }
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .build()
            .into();
        let byte_level = ByteLevel::new(false, false, true);
        let mut inner: tokenizers::Tokenizer = TokenizerBuilder::<
            ModelWrapper,
            tokenizers::NormalizerWrapper,
            PreTokenizerWrapper,
            tokenizers::PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default().into())
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_decoder(Some(ByteLevelDecoder::new(false, false, true).into()))
        .build()
        .map_err(tk_err)?
        .into();
        inner
            .train(&mut trainer, training_pieces(text))
            .map_err(tk_err)?;
        Ok(Self::wrap(inner))
    }

    /// Add BERT's `[PAD]`, `[CLS]`, `[SEP]` and a post-processor that wraps every input
    /// as `[CLS] text [SEP]`, for encoders trained here. Returns the `[PAD]` id.
    pub fn add_classifier_specials(&mut self) -> Result<u32> {
        let specials: Vec<AddedToken> = ["[PAD]", "[CLS]", "[SEP]"]
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        self.inner.add_special_tokens(specials).map_err(tk_err)?;
        let id = |t: &str| {
            self.token_to_id(t)
                .ok_or_else(|| Error::Tokenizer(format!("{t} was not added")))
        };
        let (pad, cls, sep) = (id("[PAD]")?, id("[CLS]")?, id("[SEP]")?);
        let post = tokenizers::processors::template::TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .map_err(tk_err)?
            .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
            .map_err(tk_err)?
            .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
            .build()
            .map_err(tk_err)?;
        self.inner.with_post_processor(Some(post));
        self.refresh();
        Ok(pad)
    }

    /// Load a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::guard::read_file(path, crate::checkpoint::MAX_JSON_BYTES)?;
        let broken = |what: &str| {
            Error::bad_file(
                path,
                format!("not a valid tokenizer.json: the tokenizers library failed {what}"),
            )
        };
        // The tokenizers crate panics on some malformed files (a decoder that is not an
        // object, a BPE merge longer than any token) instead of failing: contained here,
        // so that a bad file is an error naming it.
        let mut inner = without_panic(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .ok_or_else(|| broken("while reading it"))?
            .map_err(|e| Error::bad_file(path, format!("not a valid tokenizer.json: {e}")))?;
        // attn pads and truncates itself (with attention masks, to the model's limit); a
        // padding or truncation stored in the file would pad or cut every text (and a
        // stored truncation of length 0, or a stride past the length, panics).
        inner.with_padding(None);
        let _ = inner.with_truncation(None);
        // A post-processor template naming a special token the file does not define, or
        // a decoder that strips more than a token holds, load and then panic at the
        // first encoding or decoding: try an encoding, and decode every token once.
        let ids: Vec<u32> = (0..inner.get_vocab_size(true).min(1 << 20) as u32).collect();
        without_panic(|| {
            let _ = inner.encode("a b", true);
            let _ = inner.decode(&ids, false);
        })
        .ok_or_else(|| broken("on a first encoding (an inconsistent post-processor?)"))?;
        // Ids far past the number of tokens (checked before anything serialises the
        // tokenizer): saving the file records every missing id
        // (gigabytes for an id near 2^31). Tokenizers number their tokens densely.
        let n = inner.get_vocab_size(true);
        let top = id_limit(&inner, n).saturating_sub(1);
        if top > 2 * n + 1024 {
            return Err(Error::bad_file(
                path,
                format!(
                    "not a valid tokenizer.json: token id {top} is far past its {n} tokens (ids must be numbered densely)"
                ),
            ));
        }
        let tok = Self::wrap(inner);
        Ok(tok)
    }

    /// Save as `tokenizer.json`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::checkpoint::write_atomic(path, self.to_json()?.as_bytes())
    }

    /// The tokenizer.json text.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(tk_err)
    }

    /// The number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One past the largest id the tokenizer can produce (at least [`Self::vocab_size`];
    /// more when its ids have gaps): what a model's vocabulary must cover.
    pub fn id_limit(&self) -> usize {
        id_limit(&self.inner, self.vocab_size())
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of the end-of-text token, when the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        ["<|endoftext|>", "</s>", "[SEP]", "<eos>"]
            .iter()
            .find_map(|t| self.token_to_id(t))
    }

    /// Encode text without adding special tokens. A character the vocabulary cannot
    /// represent is an error naming it, never a silent drop.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if let Some(f) = &self.fast {
            return f.encode(text).map_err(|e| match e {
                crate::tokenizer_fast::Miss::Uncovered(at) => self.uncovered(text, at),
            });
        }
        self.encode_library(text)
    }

    /// [`Self::encode`] by the `tokenizers` library alone (what attn's own encoder must
    /// equal; for checks and benchmarks).
    pub fn encode_library(&self, text: &str) -> Result<Vec<u32>> {
        if self.strict_coverage {
            // Every character must be a token of its own (BPE merges only combine
            // characters that are in the vocabulary).
            let mut buf = [0u8; 4];
            let mut known = std::collections::HashSet::new();
            for (byte, c) in text.char_indices() {
                if known.contains(&c) {
                    continue;
                }
                if self.inner.token_to_id(c.encode_utf8(&mut buf)).is_none() {
                    return Err(self.uncovered(text, byte));
                }
                known.insert(c);
            }
        }
        let enc = self.enc(text)?;
        Ok(enc.get_ids().to_vec())
    }

    fn uncovered(&self, text: &str, byte: usize) -> Error {
        let c = text[byte..].chars().next().unwrap_or('?');
        Error::Tokenizer(format!(
            "the character {c:?} (U+{:04X}) at byte {byte} is not in the tokenizer's vocabulary",
            c as u32
        ))
    }

    /// Encode text as a model input: with the special tokens of the tokenizer's
    /// post-processor (BERT's `[CLS] … [SEP]`, for example), truncated to `max_len`.
    pub fn encode_for_model(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        // Truncate the text's own tokens so that the special tokens still fit, then let
        // the post-processor add them: no second encoding, no copy of the tokenizer.
        let mut enc = self.enc(text)?;
        let specials = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        enc.truncate(
            max_len.saturating_sub(specials),
            0,
            tokenizers::TruncationDirection::Right,
        );
        let enc = self.post(enc)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encode text as model inputs of at most `max_len` ids each, with the special tokens
    /// of the tokenizer's post-processor in every one: the text's tokens are cut into
    /// consecutive windows (one window when it fits). For scoring texts longer than the
    /// model's limit.
    pub fn encode_windows(&self, text: &str, max_len: usize) -> Result<Vec<Vec<u32>>> {
        let mut enc = self.enc(text)?;
        let specials = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        let room = max_len.saturating_sub(specials).max(1);
        enc.truncate(room, 0, tokenizers::TruncationDirection::Right);
        let rest = enc.take_overflowing();
        std::iter::once(enc)
            .chain(rest)
            .map(|w| {
                let w = self.post(w)?;
                Ok(w.get_ids().to_vec())
            })
            .collect()
    }

    /// Tokens of `text` with the post-processor's special tokens, without truncation
    /// (to count the texts a limit would cut).
    pub fn model_len(&self, text: &str) -> Result<usize> {
        let enc = self.enc(text)?;
        let specials = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        Ok(enc.len() + specials)
    }

    /// Decode ids to text without special tokens (padding, end-of-sentence...).
    pub fn decode_clean(&self, ids: &[u32]) -> Result<String> {
        self.dec(ids, true)
    }

    /// Add special tokens (no-op for those already present); returns their ids in order.
    pub fn add_specials(&mut self, tokens: &[&str]) -> Result<Vec<u32>> {
        let added: Vec<AddedToken> = tokens.iter().map(|t| AddedToken::from(*t, true)).collect();
        self.inner.add_special_tokens(added).map_err(tk_err)?;
        self.refresh();
        tokens
            .iter()
            .map(|t| {
                self.token_to_id(t)
                    .ok_or_else(|| Error::Tokenizer(format!("{t} was not added")))
            })
            .collect()
    }

    /// Decode ids to text (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let n = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= n) {
            return Err(Error::Tokenizer(format!(
                "id {bad} is outside the vocabulary of {n} tokens"
            )));
        }
        self.dec(ids, false)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Decodes a stream of ids piece by piece, holding back bytes until they form whole
/// characters (byte-level BPE can split one character over several tokens).
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        StreamDecoder {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Add one id; returns the new text that is now complete, if any.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        // A trailing U+FFFD means an incomplete UTF-8 sequence: wait for more tokens.
        if text.ends_with('\u{fffd}')
            || text.len() <= self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(String::new());
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        // Keep the buffer short: restart from a clean boundary once text was emitted.
        if self.ids.len() > 64 {
            self.ids.clear();
            self.emitted = 0;
        }
        Ok(new)
    }
}

/// The longest run of non-whitespace bytes the BPE trainer sees in one piece.
const MAX_RUN: usize = 1024;

/// `text` for the BPE trainer: its lines, with every run of more than [`MAX_RUN`]
/// bytes without whitespace cut (at character boundaries) into pieces of at most that.
/// The tokenizers library's trainer slows down with the length of a pre-tokenized word
/// far more than linearly (a 200,000-letter word took 13–22 s; one of two million letters
/// was still running after a minute), and base64 blobs or sequence data hold such words.
/// Cuts fall only inside such runs, so every other word is counted as before.
fn training_pieces(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n').flat_map(|line| {
        let mut rest = line;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let (piece, tail) = rest.split_at(first_piece_len(rest));
            rest = tail;
            Some(piece)
        })
    })
}

/// The length of the first piece of `line` ([`training_pieces`]): up to the character
/// that would make a run without whitespace longer than [`MAX_RUN`] bytes, or all of it.
fn first_piece_len(line: &str) -> usize {
    let mut run = 0;
    for (i, c) in line.char_indices() {
        if c.is_whitespace() {
            run = 0;
        } else if run + c.len_utf8() > MAX_RUN {
            return i;
        } else {
            run += c.len_utf8();
        }
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The BPE trainer's pieces: the lines as they are unless a run of non-whitespace
    /// passes MAX_RUN bytes, which is cut at character boundaries; nothing is lost.
    #[test]
    fn training_pieces_cut_only_overlong_runs() {
        let plain = "the cat sat\non the mat\n  two  spaces\nlast";
        assert_eq!(
            training_pieces(plain).collect::<Vec<_>>(),
            plain.split_inclusive('\n').collect::<Vec<_>>()
        );
        // A run of 2,500 three-byte characters and one of 1,024 ASCII letters (exactly
        // the limit, left whole), between words.
        let long = format!(
            "a {} b {} c\nnext\n",
            "語".repeat(2500),
            "x".repeat(MAX_RUN)
        );
        let pieces: Vec<&str> = training_pieces(&long).collect();
        assert_eq!(pieces.concat(), long);
        for p in &pieces {
            let longest = p.split(char::is_whitespace).map(str::len).max().unwrap();
            assert!(longest <= MAX_RUN, "a run of {longest} bytes");
        }
        assert!(pieces.contains(&"next\n"));
        assert!(pieces.iter().any(|p| p.contains(&"x".repeat(MAX_RUN))));
        assert_eq!(
            pieces.len(),
            2 + 7,
            "{:?}",
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn files_that_make_the_tokenizers_crate_panic_are_errors() {
        // Inputs of the kinds the fuzzer found (fuzz/regressions/tokenizer_json): the
        // tokenizers crate panics on each, attn must answer with an error naming the file.
        let word_level =
            r#""model":{"type":"WordLevel","vocab":{"a":0,"[CLS]":1},"unk_token":"a"}"#;
        let cases = [
            ("malformed decoder", r#"{"decoder":{"#.to_string()),
            (
                "merge longer than any token",
                r#"{"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":[["a","b"]]}}"#
                    .to_string(),
            ),
            (
                "template with an undefined special token",
                format!(
                    r#"{{"post_processor":{{"type":"TemplateProcessing","single":[{{"SpecialToken":{{"id":"[CLS]","type_id":0}}}},{{"Sequence":{{"id":"A","type_id":0}}}}],"pair":[{{"Sequence":{{"id":"A","type_id":0}}}},{{"Sequence":{{"id":"B","type_id":1}}}}],"special_tokens":{{}}}},{word_level}}}"#
                ),
            ),
        ];
        let cases = {
            let mut c = cases.to_vec();
            c.push((
                "strip decoder longer than a token",
                r#"{"decoder":{"type":"Strip","content":" ","start":1,"stop":1},"model":{"type":"WordLevel","vocab":{"a":0," ":1},"unk_token":"a"}}"#.to_string(),
            ));
            c
        };
        let dir = std::env::temp_dir().join(format!("attn-tok-panics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (what, json) in cases {
            let p = dir.join("tokenizer.json");
            std::fs::write(&p, json).unwrap();
            let e = Tokenizer::from_file(&p)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(e.contains("tokenizer.json"), "{what}: {e}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    const MIXED: &str =
        "To be, or not to be: that is the question.\n床前明月光，疑是地上霜。\n\tTabs & ümlauts!\n";

    #[test]
    fn char_round_trip_and_unknown_character() {
        let tok = Tokenizer::train_char(MIXED).unwrap();
        let ids = tok.encode(MIXED).unwrap();
        assert_eq!(ids.len(), MIXED.chars().count());
        assert_eq!(tok.decode(&ids).unwrap(), MIXED);
        let err = tok.encode("To be§").unwrap_err().to_string();
        assert!(err.contains("U+00A7") && err.contains("byte 5"), "{err}");
    }

    #[test]
    fn model_inputs_are_truncated_inside_their_special_tokens() {
        let mut tok = Tokenizer::train_char("abcdef").unwrap();
        tok.add_classifier_specials().unwrap();
        let (cls, sep) = (
            tok.token_to_id("[CLS]").unwrap(),
            tok.token_to_id("[SEP]").unwrap(),
        );
        assert_eq!(
            tok.encode_for_model("abcdef", 4).unwrap(),
            vec![cls, 0, 1, sep]
        );
        assert_eq!(
            tok.encode_for_model("ab", 16).unwrap(),
            vec![cls, 0, 1, sep]
        );
    }

    #[test]
    fn char_with_unk_maps_unseen_characters() {
        let tok = Tokenizer::train_char_with_unk("abc").unwrap();
        let unk = tok.token_to_id("[UNK]").unwrap();
        assert_eq!(tok.encode("abz").unwrap(), vec![0, 1, unk]);
    }

    #[test]
    fn bpe_round_trip_english_and_chinese() {
        let corpus = MIXED.repeat(20);
        let tok = Tokenizer::train_bpe(&corpus, 300).unwrap();
        assert!(tok.vocab_size() <= 300 && tok.vocab_size() > 257);
        for text in [MIXED, "unseen words: xylophone 鱷魚 🦀\n"] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        // Merges were learned: the training text takes fewer tokens than bytes.
        assert!(tok.encode(MIXED).unwrap().len() < MIXED.len());
        assert!(tok.eos_id().is_some());
    }

    #[test]
    fn stream_decoder_waits_for_whole_characters() {
        let tok = Tokenizer::train_bpe(&"abc\n".repeat(10), 260).unwrap();
        let text = "月光🦀 ok";
        let ids = tok.encode(text).unwrap();
        let mut dec = StreamDecoder::new(&tok);
        let mut out = String::new();
        for &id in &ids {
            let piece = dec.push(id).unwrap();
            assert!(!piece.contains('\u{fffd}'));
            out.push_str(&piece);
        }
        assert_eq!(out, text);
    }

    #[test]
    fn save_load_same_encoding() {
        let dir = std::env::temp_dir().join(format!("attn-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for tok in [
            Tokenizer::train_char(MIXED).unwrap(),
            Tokenizer::train_bpe(&MIXED.repeat(5), 280).unwrap(),
        ] {
            let p = dir.join("tokenizer.json");
            tok.save(&p).unwrap();
            let back = Tokenizer::from_file(&p).unwrap();
            assert_eq!(back.encode(MIXED).unwrap(), tok.encode(MIXED).unwrap());
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

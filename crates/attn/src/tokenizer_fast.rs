//! A lean encoder for the two kinds of tokenizer attn trains — byte-level BPE (GPT-2's
//! scheme) and char level — giving the `tokenizers` library's ids for the same
//! `tokenizer.json`, without the offsets, token strings and per-token allocations its
//! `Encoding` carries. Used by [`crate::tokenizer::Tokenizer::encode`] when the file is
//! one it covers exactly; any other tokenizer goes through the library.
//!
//! What it reproduces:
//! * added tokens are cut out of the text first, leftmost-longest, those matched before
//!   normalisation (`normalized: false`) before the others, as the library does;
//! * the byte-level pre-tokenizer's GPT-2 pattern, whose `\s+(?!\S)` look-ahead is done
//!   by hand (a run of whitespace before a non-space gives up its last character);
//! * BPE merges lowest rank first, leftmost among equals, through a heap, so a long word
//!   costs n log n (the library's order, and no quadratic case for hostile input).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;
use serde_json::Value;

/// How the text is cut before BPE.
enum Pre {
    /// GPT-2's byte-level pattern; symbols are bytes.
    ByteLevel {
        byte_ids: Box<[u32; 256]>,
        regex: Regex,
    },
    /// None: the whole text is one word; symbols are characters.
    Chars { char_ids: HashMap<char, u32> },
}

pub(crate) struct Fast {
    pre: Pre,
    /// Merges by the ids of the pair: (rank, id of the merged token).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// With `ignore_merges`: whole words found in the vocabulary (byte-level strings).
    whole: Option<HashMap<String, u32>>,
    byte_chars: [char; 256],
    unk: Option<u32>,
    /// Added tokens matched on the raw text, then on the rest.
    added: Vec<(AhoCorasick, Vec<u32>)>,
}

/// Encodes a stretch of text without added tokens (at a byte offset of the whole).
type Plain<'t, 'f> = dyn FnMut(&'t str, usize, &mut Vec<u32>) -> Result<(), Miss> + 'f;

/// What [`Fast::encode`] could not do.
pub(crate) enum Miss {
    /// A character the vocabulary lacks (char level, no unknown token): its byte offset.
    Uncovered(usize),
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the
/// others for the code points from 256 up, in byte order.
pub(crate) fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        map[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            let c = char::from_u32(next).unwrap();
            next += 1;
            c
        };
    }
    map
}

const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

fn is_null_or(v: &Value, ok: impl Fn(&Value) -> bool) -> bool {
    v.is_null() || ok(v)
}

impl Fast {
    /// The fast encoder for a tokenizer.json, when it is a kind this covers exactly.
    pub(crate) fn new(json: &Value) -> Option<Fast> {
        if !json["normalizer"].is_null()
            || !json["truncation"].is_null()
            || !json["padding"].is_null()
        {
            return None;
        }
        let model = &json["model"];
        if model["type"] != "BPE"
            || !model["dropout"].is_null()
            || model["byte_fallback"] == true
            || model["fuse_unk"] == true
            || !is_null_or(&model["continuing_subword_prefix"], |v| v == "")
            || !is_null_or(&model["end_of_word_suffix"], |v| v == "")
        {
            return None;
        }
        let vocab: HashMap<String, u32> = model["vocab"]
            .as_object()?
            .iter()
            .map(|(k, v)| Some((k.clone(), u32::try_from(v.as_u64()?).ok()?)))
            .collect::<Option<_>>()?;
        let unk = match &model["unk_token"] {
            Value::Null => None,
            Value::String(s) => Some(*vocab.get(s)?),
            _ => return None,
        };
        let pre_json = &json["pre_tokenizer"];
        let pre = if pre_json.is_null() {
            let char_ids = vocab
                .iter()
                .filter_map(|(k, &id)| {
                    let mut cs = k.chars();
                    let c = cs.next()?;
                    cs.next().is_none().then_some((c, id))
                })
                .collect();
            Pre::Chars { char_ids }
        } else if pre_json["type"] == "ByteLevel"
            && pre_json["add_prefix_space"] == false
            && pre_json["use_regex"] != false
        {
            let chars = byte_chars();
            let mut byte_ids = [0u32; 256];
            for (b, c) in chars.iter().enumerate() {
                byte_ids[b] = *vocab.get(&c.to_string())?;
            }
            Pre::ByteLevel {
                byte_ids: Box::new(byte_ids),
                regex: Regex::new(GPT2_PATTERN).ok()?,
            }
        } else {
            return None;
        };
        let mut merges = HashMap::new();
        for (rank, m) in model["merges"].as_array()?.iter().enumerate() {
            let (a, b) = match m {
                Value::String(s) => s.split_once(' ')?,
                Value::Array(p) if p.len() == 2 => (p[0].as_str()?, p[1].as_str()?),
                _ => return None,
            };
            let (ia, ib) = (*vocab.get(a)?, *vocab.get(b)?);
            let id = *vocab.get(&format!("{a}{b}"))?;
            // The library keeps the last rank of a pair listed twice (its files, written
            // by the library, list each pair once).
            merges.insert((ia, ib), (rank as u32, id));
        }
        let whole = (model["ignore_merges"] == true).then(|| vocab.clone());
        // Without a pre-tokenizer the whole text would be the word looked up.
        if whole.is_some() && matches!(pre, Pre::Chars { .. }) {
            return None;
        }
        // Added tokens: any option that changes how they match leaves this path.
        let mut raw = (Vec::new(), Vec::new());
        let mut normed = (Vec::new(), Vec::new());
        for t in json["added_tokens"].as_array()? {
            if t["single_word"] == true || t["lstrip"] == true || t["rstrip"] == true {
                return None;
            }
            let content = t["content"].as_str()?.to_string();
            let id = u32::try_from(t["id"].as_u64()?).ok()?;
            if content.is_empty() {
                return None;
            }
            let set = if t["normalized"] == true {
                &mut normed
            } else {
                &mut raw
            };
            set.0.push(content);
            set.1.push(id);
        }
        let mut added = Vec::new();
        for (patterns, ids) in [raw, normed] {
            if patterns.is_empty() {
                continue;
            }
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()?;
            added.push((ac, ids));
        }
        Some(Fast {
            pre,
            merges,
            whole,
            byte_chars: byte_chars(),
            unk,
            added,
        })
    }

    /// The ids of `text`, as the library's `encode(text, false)` gives them.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, Miss> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut cache: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut store: Vec<u32> = Vec::new();
        self.split_added(
            text,
            0,
            0,
            &mut |piece, at, out_ref: &mut Vec<u32>| {
                self.encode_piece(piece, at, out_ref, &mut cache, &mut store)
            },
            &mut out,
        )?;
        Ok(out)
    }

    /// Cut `text` (at byte `at` of the whole) by the added tokens of `level` and the
    /// levels after it, handing the rest to `plain`.
    fn split_added<'t>(
        &self,
        text: &'t str,
        at: usize,
        level: usize,
        plain: &mut Plain<'t, '_>,
        out: &mut Vec<u32>,
    ) -> Result<(), Miss> {
        let Some((ac, ids)) = self.added.get(level) else {
            return plain(text, at, out);
        };
        let mut last = 0;
        for m in ac.find_iter(text) {
            if m.start() > last {
                self.split_added(&text[last..m.start()], at + last, level + 1, plain, out)?;
            }
            out.push(ids[m.pattern().as_usize()]);
            last = m.end();
        }
        if last < text.len() {
            self.split_added(&text[last..], at + last, level + 1, plain, out)?;
        }
        Ok(())
    }

    /// Pre-tokenize and BPE one stretch of text without added tokens.
    fn encode_piece<'t>(
        &self,
        text: &'t str,
        at: usize,
        out: &mut Vec<u32>,
        cache: &mut HashMap<&'t str, (usize, usize)>,
        store: &mut Vec<u32>,
    ) -> Result<(), Miss> {
        match &self.pre {
            Pre::Chars { char_ids } => {
                let mut syms = Vec::with_capacity(text.len());
                for (i, c) in text.char_indices() {
                    match char_ids.get(&c).copied().or(self.unk) {
                        Some(id) => syms.push(id),
                        None => return Err(Miss::Uncovered(at + i)),
                    }
                }
                self.merge(&mut syms);
                out.extend(syms.iter().copied().filter(|&s| s != u32::MAX));
                Ok(())
            }
            Pre::ByteLevel {
                byte_ids,
                regex: re,
            } => {
                let mut pos = 0;
                while pos < text.len() {
                    let m = re
                        .find_at(text, pos)
                        .expect("the pattern matches any character");
                    let mut end = m.end();
                    let word = &text[m.start()..end];
                    // `\s+(?!\S)`: a whitespace run of two or more characters before a
                    // non-space leaves its last character to the next word.
                    if end < text.len() && word.starts_with(char::is_whitespace) {
                        let is_run = word.chars().all(char::is_whitespace);
                        let last = word.chars().next_back().unwrap();
                        if is_run && word.len() > last.len_utf8() {
                            end -= last.len_utf8();
                        }
                    }
                    let word = &text[m.start()..end];
                    pos = end;
                    if let Some(&(s, n)) = cache.get(word) {
                        out.extend_from_slice(&store[s..s + n]);
                        continue;
                    }
                    let start = store.len();
                    self.encode_word(word, byte_ids, store);
                    out.extend_from_slice(&store[start..]);
                    cache.insert(word, (start, store.len() - start));
                }
                Ok(())
            }
        }
    }

    /// One pre-tokenized word's ids, appended to `out`.
    fn encode_word(&self, word: &str, byte_ids: &[u32; 256], out: &mut Vec<u32>) {
        if let Some(whole) = &self.whole {
            let s: String = word.bytes().map(|b| self.byte_chars[b as usize]).collect();
            if let Some(&id) = whole.get(&s) {
                out.push(id);
                return;
            }
        }
        let mut syms: Vec<u32> = word.bytes().map(|b| byte_ids[b as usize]).collect();
        self.merge(&mut syms);
        out.extend(syms.iter().copied().filter(|&s| s != u32::MAX));
    }

    /// Apply the merges to `syms` in place: lowest rank first, leftmost among equals;
    /// merged-away symbols are left as `u32::MAX`.
    fn merge(&self, syms: &mut [u32]) {
        let n = syms.len();
        if n < 2 || self.merges.is_empty() {
            return;
        }
        if n == 2 {
            if let Some(&(_, id)) = self.merges.get(&(syms[0], syms[1])) {
                syms[0] = id;
                syms[1] = u32::MAX;
            }
            return;
        }
        // Linked list over the symbols; heap of (rank, left position) candidates.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some(&(rank, _)) = self.merges.get(&(syms[i], syms[i + 1])) {
                heap.push(Reverse((rank, i, syms[i], syms[i + 1])));
            }
        }
        while let Some(Reverse((_, i, a, b))) = heap.pop() {
            let j = next[i];
            // Stale: a side was merged since (its id changed, or it is gone).
            if syms[i] != a || j >= n || syms[j] != b {
                continue;
            }
            let (_, id) = self.merges[&(a, b)];
            syms[i] = id;
            syms[j] = u32::MAX;
            let k = next[j];
            next[i] = k;
            if k < n {
                prev[k] = i;
                if let Some(&(r, _)) = self.merges.get(&(id, syms[k])) {
                    heap.push(Reverse((r, i, id, syms[k])));
                }
            }
            let p = prev[i];
            if p < n {
                if let Some(&(r, _)) = self.merges.get(&(syms[p], id)) {
                    heap.push(Reverse((r, p, syms[p], id)));
                }
            }
        }
    }
}

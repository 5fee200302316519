//! A corpus tokenized once into fixed-width binary shards (as nanoGPT and llm.c keep
//! theirs), read back by training without holding or re-tokenizing the text.
//!
//! The token stream is the one `attn train` builds from the same files: each file read
//! (UTF-8 or Latin-1), normalised ([`super::normalize`]: NFC, control characters other
//! than newline and tab removed), ending in a newline, the files concatenated and
//! tokenized; its last `val_fraction` is the validation split (as [`super::LmSplits`]).
//! The text streams through in pieces cut where a word ends and whitespace begins, a
//! point that normalisation and the pre-tokenizers of attn's tokenizers (characters,
//! byte-level BPE) never join across, so the pieces' tokens are the whole text's.
//!
//! A shard file is a 32-byte header — the magic `ATTNTOK1`, the format version (u32),
//! the width of a token in bytes (u32: 2 when the vocabulary fits in 16 bits, else 4),
//! the number of tokens (u64) and 8 reserved bytes — then the tokens, little-endian.
//! `index.json` lists the training shards in order and the validation shard, with
//! their token counts; the tokenizer is copied beside them. The outputs appear together
//! when the whole input was read ([`super::stream::Outputs`]).
//!
//! Training reads a shard folder with [`ShardSet::open`]: every shard memory-mapped,
//! windows copied out as they are drawn, so the corpus is neither held in memory nor
//! tokenized again.

use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{normalize, Encoding};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"ATTNTOK1";
pub const VERSION: u32 = 1;
pub const HEADER: usize = 32;
pub const INDEX: &str = "index.json";
/// Tokens per training shard unless asked otherwise (200 MB of u16 ids).
pub const DEFAULT_SHARD_TOKENS: usize = 100_000_000;

/// What `tokenize` wrote.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TokenizeReport {
    pub files: usize,
    pub bytes: u64,
    pub tokens: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub width: u32,
    pub shards: usize,
    /// Bytes dropped as not valid UTF-8 (with `skip_invalid`).
    pub invalid_bytes_skipped: u64,
}

/// How [`tokenize`] cuts and reads.
#[derive(Clone, Debug)]
pub struct TokenizeConfig {
    pub encoding: Encoding,
    /// Tokens per training shard.
    pub shard_tokens: usize,
    /// The share of the tokens (the last ones) kept as the validation shard.
    pub val_fraction: f64,
    /// Drop byte sequences that are not valid UTF-8, counting them, instead of failing.
    pub skip_invalid: bool,
    /// The text is read in blocks of this many bytes (tests use small ones, so that
    /// pieces are cut often).
    pub piece_bytes: usize,
}

impl Default for TokenizeConfig {
    fn default() -> Self {
        TokenizeConfig {
            encoding: Encoding::Utf8,
            shard_tokens: DEFAULT_SHARD_TOKENS,
            val_fraction: 0.1,
            skip_invalid: false,
            piece_bytes: 1 << 18,
        }
    }
}

fn header(width: u32, n: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&width.to_le_bytes());
    h.extend_from_slice(&n.to_le_bytes());
    h.extend_from_slice(&[0u8; 8]);
    h
}

fn token_bytes(width: u32, ids: &[u32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(ids.len() * width as usize);
    for &id in ids {
        if width == 2 {
            b.extend_from_slice(&(id as u16).to_le_bytes());
        } else {
            b.extend_from_slice(&id.to_le_bytes());
        }
    }
    b
}

/// The last point in `s` where a non-whitespace character is followed by whitespace
/// (a byte offset; 0 when there is none).
fn last_cut(s: &str) -> usize {
    let mut cut = 0;
    let mut prev_word = false;
    for (i, c) in s.char_indices() {
        let ws = c.is_whitespace();
        if ws && prev_word {
            cut = i;
        }
        prev_word = !ws;
    }
    cut
}

/// Text files as one normalised stream, a piece at a time.
struct Pieces<'a> {
    files: &'a [PathBuf],
    encoding: Encoding,
    at: usize,
    reader: Option<std::io::BufReader<std::fs::File>>,
    /// Bytes of an incomplete UTF-8 sequence at the end of the last block, and the
    /// number of bytes read from the current file.
    raw: Vec<u8>,
    read: u64,
    /// Decoded text not normalised yet (after the last whitespace character).
    text: String,
    /// Normalised text not yet handed out (after the last cut).
    carry: String,
    /// Whether the current file has shown a non-whitespace character, and its last one.
    file_has_text: bool,
    file_last: Option<char>,
    bytes: u64,
    skip_invalid: bool,
    skipped: u64,
}

impl Pieces<'_> {
    fn new(files: &[PathBuf], encoding: Encoding, skip_invalid: bool) -> Pieces<'_> {
        Pieces {
            files,
            encoding,
            at: 0,
            reader: None,
            raw: Vec::new(),
            read: 0,
            text: String::new(),
            carry: String::new(),
            file_has_text: false,
            file_last: None,
            bytes: 0,
            skip_invalid,
            skipped: 0,
        }
    }

    /// The next piece of normalised text (ending at a cut, or the stream's end); `None`
    /// when everything was handed out.
    fn next_piece(&mut self, block: usize) -> Result<Option<String>> {
        loop {
            if self.at >= self.files.len() {
                if self.carry.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.carry)));
            }
            let path = &self.files[self.at];
            if self.reader.is_none() {
                crate::guard::regular_file(path)?;
                let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                self.reader = Some(std::io::BufReader::with_capacity(1 << 20, f));
                self.read = 0;
                self.file_has_text = false;
                self.file_last = None;
            }
            let mut buf = vec![0u8; block];
            let n = self
                .reader
                .as_mut()
                .unwrap()
                .read(&mut buf)
                .map_err(|e| Error::io(path, e))?;
            buf.truncate(n);
            self.bytes += n as u64;
            super::stream::count_read(n);
            self.read += n as u64;
            let at_end = n == 0;
            let mut raw = std::mem::take(&mut self.raw);
            raw.extend_from_slice(&buf);
            let raw_start = self.read - raw.len() as u64;
            match self.encoding {
                Encoding::Latin1 => self.text.extend(raw.iter().map(|&b| b as char)),
                Encoding::Utf8 => {
                    let mut at = 0;
                    loop {
                        let rest = &raw[at..];
                        match std::str::from_utf8(rest) {
                            Ok(s) => self.text.push_str(s),
                            Err(e) => {
                                let ok = e.valid_up_to();
                                self.text
                                    .push_str(std::str::from_utf8(&rest[..ok]).unwrap());
                                match e.error_len() {
                                    // A sequence cut by the block: its bytes wait for
                                    // the next one.
                                    None if !at_end => self.raw = rest[ok..].to_vec(),
                                    bad if self.skip_invalid => {
                                        let bad = bad.unwrap_or(rest.len() - ok);
                                        self.skipped += bad as u64;
                                        at += ok + bad;
                                        continue;
                                    }
                                    _ => {
                                        return Err(Error::Encoding {
                                            path: path.clone(),
                                            encoding: "UTF-8",
                                            offset: (raw_start + (at + ok) as u64) as usize,
                                        })
                                    }
                                }
                            }
                        }
                        break;
                    }
                }
            }
            // Normalise up to the last whitespace character (normalisation never joins
            // across one); the rest waits for more text unless the file ends here.
            let upto = if at_end {
                self.text.len()
            } else {
                self.text
                    .char_indices()
                    .filter(|(_, c)| c.is_whitespace())
                    .map(|(i, _)| i)
                    .next_back()
                    .unwrap_or(0)
            };
            if upto == 0 && self.text.len() > super::stream::MAX_LINE_BYTES {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "more than {} MiB without whitespace before byte {} (not text that can be tokenized in pieces)",
                        super::stream::MAX_LINE_BYTES >> 20,
                        self.read
                    ),
                ));
            }
            let rest = self.text.split_off(upto);
            let norm = normalize(&std::mem::replace(&mut self.text, rest));
            if let Some(c) = norm.chars().next_back() {
                self.file_last = Some(c);
            }
            self.file_has_text |= norm.chars().any(|c| !c.is_whitespace());
            self.carry.push_str(&norm);
            if at_end {
                if !self.file_has_text {
                    return Err(Error::bad_file(path, "the file is empty (no text to use)"));
                }
                if self.file_last != Some('\n') {
                    self.carry.push('\n');
                }
                self.reader = None;
                self.at += 1;
            }
            let cut = last_cut(&self.carry);
            if cut > 0 && self.carry.len() >= block {
                let rest = self.carry.split_off(cut);
                return Ok(Some(std::mem::replace(&mut self.carry, rest)));
            }
        }
    }
}

/// Tokenize `files` with `tokenizer` into shards in `out`, as `cfg` says.
pub fn tokenize(
    files: &[PathBuf],
    tokenizer: &Tokenizer,
    out: &Path,
    cfg: &TokenizeConfig,
) -> Result<TokenizeReport> {
    if files.is_empty() {
        return Err(Error::invalid("input", "no data file given"));
    }
    super::lm::train_len(0, cfg.val_fraction)?;
    if cfg.shard_tokens == 0 {
        return Err(Error::invalid("shard-tokens", "must be at least 1"));
    }
    let width: u32 = if tokenizer.id_limit() <= 1 << 16 {
        2
    } else {
        4
    };
    let mut outputs = super::stream::Outputs::new(out)?;
    let mut pieces = Pieces::new(files, cfg.encoding, cfg.skip_invalid);
    let mut report = TokenizeReport {
        files: files.len(),
        width,
        ..Default::default()
    };
    // The shard being written (its header's count patched when it is full), and the
    // finished ones.
    let mut current: Option<(super::stream::Staged, String, u64)> = None;
    let mut shards: Vec<(String, u64)> = Vec::new();
    let close = |cur: (super::stream::Staged, String, u64),
                 shards: &mut Vec<(String, u64)>,
                 o: &mut super::stream::Outputs| {
        let (mut w, name, n) = cur;
        w.patch(0, &header(width, n))?;
        o.keep(w)?;
        shards.push((name, n));
        Ok::<_, Error>(())
    };
    loop {
        // A few pieces at a time, tokenized on every core, in order.
        let mut batch = Vec::new();
        while batch.len() < 2 * rayon::current_num_threads() {
            match pieces.next_piece(cfg.piece_bytes.max(1))? {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        let ids: Vec<Vec<u32>> = batch
            .par_iter()
            .map(|p| tokenizer.encode(p))
            .collect::<Result<_>>()?;
        for v in ids {
            report.tokens += v.len() as u64;
            let mut rest = &v[..];
            while !rest.is_empty() {
                if current.is_none() {
                    let name = format!("train-{:05}.bin", shards.len());
                    let mut w = outputs.create(&name)?;
                    w.write_all(&header(width, 0))?;
                    current = Some((w, name, 0));
                }
                let (w, _, n) = current.as_mut().unwrap();
                let take = rest.len().min(cfg.shard_tokens - *n as usize);
                w.write_all(&token_bytes(width, &rest[..take]))?;
                *n += take as u64;
                rest = &rest[take..];
                if *n as usize == cfg.shard_tokens {
                    close(current.take().unwrap(), &mut shards, &mut outputs)?;
                }
            }
        }
    }
    if let Some(cur) = current.take() {
        close(cur, &mut shards, &mut outputs)?;
    }
    report.bytes = pieces.bytes;
    report.invalid_bytes_skipped = pieces.skipped;
    // The validation split: the last tokens, moved from the training shards' tail, read
    // back through a map a block at a time.
    let total = report.tokens;
    let n_train = super::lm::train_len(total as usize, cfg.val_fraction)? as u64;
    let mut val = outputs.create("val.bin")?;
    val.write_all(&header(width, total - n_train))?;
    let mut kept = 0u64;
    let mut index_train = Vec::new();
    // As many tokens at a time as the text's blocks have bytes (tests cut both small).
    let mut block = vec![0u32; cfg.piece_bytes.clamp(1, 1 << 20)];
    for (name, n) in &shards {
        if kept + n <= n_train {
            kept += n;
            index_train.push((name.clone(), *n));
            continue;
        }
        let staged = outputs
            .staged_path(name)
            .expect("the shard was kept")
            .to_path_buf();
        let ids = Mapped::open(&[(staged, *n)], width, u32::MAX)?;
        let keep = (n_train - kept.min(n_train)) as usize;
        let mut head = (keep > 0).then(|| outputs.create(name)).transpose()?;
        if let Some(h) = head.as_mut() {
            h.write_all(&header(width, keep as u64))?;
        }
        let mut at = 0;
        while at < ids.len() {
            let len = block.len().min(ids.len() - at);
            ids.read(at, &mut block[..len])?;
            // Tokens before `keep` stay in training, the rest go to validation.
            let split = keep.clamp(at, at + len) - at;
            let (train_part, val_part) = block[..len].split_at(split);
            if let (false, Some(h)) = (train_part.is_empty(), head.as_mut()) {
                h.write_all(&token_bytes(width, train_part))?;
            }
            if !val_part.is_empty() {
                val.write_all(&token_bytes(width, val_part))?;
            }
            at += len;
        }
        drop(ids);
        match head {
            Some(h) => {
                outputs.keep(h)?;
                index_train.push((name.clone(), keep as u64));
            }
            None => outputs.discard(name),
        }
        kept += *n;
    }
    outputs.keep(val)?;
    outputs.write(
        crate::checkpoint::TOKENIZER,
        tokenizer.to_json()?.as_bytes(),
    )?;
    report.train_tokens = n_train;
    report.val_tokens = total - n_train;
    report.shards = index_train.len();
    let index = serde_json::json!({
        "format": "attn-tokens",
        "version": VERSION,
        "width": width,
        "vocab_size": tokenizer.vocab_size(),
        "tokenizer": crate::checkpoint::TOKENIZER,
        "val_fraction": cfg.val_fraction,
        "train": index_train.iter().map(|(f, n)| serde_json::json!({"file": f, "tokens": n})).collect::<Vec<_>>(),
        "val": {"file": "val.bin", "tokens": total - n_train},
        "sources": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
    });
    outputs.write_json(INDEX, &index)?;
    outputs.commit()?;
    // Shards an earlier run left in the folder (replaced with --overwrite) that this
    // index does not list.
    let listed: std::collections::HashSet<&str> =
        index_train.iter().map(|(f, _)| f.as_str()).collect();
    if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("train-")
                && name.ends_with(".bin")
                && !listed.contains(name.as_str())
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(report)
}

/// A shard's token width and count, from its header, checked against the file's
/// size (`len` bytes in all).
fn parse_header(path: &Path, head: &[u8], len: u64) -> Result<(u32, u64)> {
    let bad = |m: String| Error::bad_file(path, m);
    if head.len() < HEADER || &head[..8] != MAGIC {
        return Err(bad("not a token shard (no ATTNTOK1 header)".into()));
    }
    let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap());
    let (version, width) = (u32_at(8), u32_at(12));
    let n = u64::from_le_bytes(head[16..24].try_into().unwrap());
    if version != VERSION {
        return Err(bad(format!(
            "shard format version {version}; this attn reads {VERSION}"
        )));
    }
    if width != 2 && width != 4 {
        return Err(bad(format!("token width {width} bytes (2 or 4 expected)")));
    }
    let body = len - HEADER as u64;
    if n.checked_mul(width as u64) != Some(body) {
        return Err(bad(format!(
            "the header says {n} tokens of {width} bytes but the file holds {body} bytes after it"
        )));
    }
    Ok((width, n))
}

fn decode(width: u32, b: &[u8], out: &mut [u32]) {
    if width == 2 {
        for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
            *o = u16::from_le_bytes([c[0], c[1]]) as u32;
        }
    } else {
        for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
            *o = u32::from_le_bytes(c.try_into().unwrap());
        }
    }
}

/// The tokens of one shard file, its header checked (magic, version, width, count
/// against the file's size).
pub fn read_shard(path: &Path) -> Result<Vec<u32>> {
    let bytes = crate::guard::read_file(path, u64::MAX)?;
    let (width, n) = parse_header(path, &bytes, bytes.len() as u64)?;
    let mut ids = vec![0u32; n as usize];
    decode(width, &bytes[HEADER..], &mut ids);
    Ok(ids)
}

/// One shard file, memory-mapped.
struct MappedShard {
    path: PathBuf,
    map: memmap2::Mmap,
    n: usize,
}

/// A token stream kept in memory-mapped shard files, read a window at a time.
pub struct Mapped {
    shards: Vec<MappedShard>,
    /// Where each shard's tokens end in the stream.
    ends: Vec<usize>,
    /// Bytes per id, the same in every shard.
    width: u32,
    /// Ids must be below this (the model's vocabulary).
    limit: u32,
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.shards.iter().map(|s| s.path.display()).collect();
        write!(f, "Mapped({} tokens in {names:?})", self.len())
    }
}

impl Mapped {
    /// Map `files` (shards of `width`-byte ids holding `counts` tokens, as the index
    /// says) as one stream of ids below `limit`.
    fn open(files: &[(PathBuf, u64)], width: u32, limit: u32) -> Result<Self> {
        let mut shards = Vec::new();
        let mut ends = Vec::new();
        let mut total = 0usize;
        for (path, count) in files {
            crate::guard::regular_file(path)?;
            let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
            if len < HEADER as u64 {
                return Err(Error::bad_file(
                    path,
                    "not a token shard (shorter than its header)",
                ));
            }
            // SAFETY: the map is read-only. attn writes shards through a temporary and a
            // rename, so rewriting a shard folder replaces the files rather than
            // changing the mapped ones; a file truncated in place by another program
            // while training runs would fault, as it would for any reader of a mapped
            // file.
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
            let (w, n) = parse_header(path, &map[..HEADER], len)?;
            if w != width {
                return Err(Error::bad_file(
                    path,
                    format!("holds {w}-byte ids but the index says {width}"),
                ));
            }
            if n != *count {
                return Err(Error::bad_file(
                    path,
                    format!("holds {n} tokens but the index says {count}"),
                ));
            }
            let n = usize::try_from(n).map_err(|_| Error::bad_file(path, "too many tokens"))?;
            total += n;
            ends.push(total);
            shards.push(MappedShard {
                path: path.clone(),
                map,
                n,
            });
        }
        Ok(Mapped {
            shards,
            ends,
            width,
            limit,
        })
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copy the `out.len()` tokens from `start` into `out` (across shard boundaries),
    /// checking each id against the vocabulary.
    pub fn read(&self, start: usize, out: &mut [u32]) -> Result<()> {
        let end = start.checked_add(out.len()).filter(|&e| e <= self.len());
        if end.is_none() {
            return Err(Error::invalid(
                "shards",
                format!(
                    "tokens {start}..+{} asked of a stream of {}",
                    out.len(),
                    self.len()
                ),
            ));
        }
        let (mut pos, mut filled) = (start, 0);
        while filled < out.len() {
            let i = self.ends.partition_point(|&e| e <= pos);
            let s = &self.shards[i];
            let off = pos - (self.ends[i] - s.n);
            let take = (s.n - off).min(out.len() - filled);
            let w = self.width as usize;
            let bytes = &s.map[HEADER + off * w..HEADER + (off + take) * w];
            let dst = &mut out[filled..filled + take];
            decode(self.width, bytes, dst);
            if let Some(k) = dst.iter().position(|&id| id >= self.limit) {
                return Err(Error::bad_file(
                    &s.path,
                    format!(
                        "token {} is id {}, outside the tokenizer's vocabulary of {}",
                        off + k,
                        dst[k],
                        self.limit
                    ),
                ));
            }
            filled += take;
            pos += take;
        }
        Ok(())
    }
}

/// A shard folder opened for training: the training and validation streams, mapped,
/// and the tokenizer that wrote them.
#[derive(Debug)]
pub struct ShardSet {
    pub train: Mapped,
    pub val: Mapped,
    pub tokenizer: Tokenizer,
    /// The share of the tokens held out for validation when the shards were written.
    pub val_fraction: f64,
}

impl ShardSet {
    /// Open the shard folder `dir` that [`tokenize`] wrote: its index, tokenizer and
    /// every shard checked (each file a plain name inside `dir`, each header matching
    /// the index, the tokenizer's ids fitting the shards' width).
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX);
        if !index_path.is_file() {
            return Err(Error::bad_file(
                dir,
                format!(
                    "is not a token shard folder (no {INDEX}; write one with attn data tokenize)"
                ),
            ));
        }
        let index = crate::checkpoint::read_json(&index_path)?;
        let bad = |m: String| Error::bad_file(&index_path, m);
        if index["format"] != "attn-tokens" {
            return Err(bad(
                "not an attn token index (format is not \"attn-tokens\")".into(),
            ));
        }
        if index["version"].as_u64() != Some(VERSION as u64) {
            return Err(bad(format!(
                "index version {}; this attn reads {VERSION}",
                index["version"]
            )));
        }
        let width = match index["width"].as_u64() {
            Some(w @ (2 | 4)) => w as u32,
            _ => return Err(bad(format!("width {} (2 or 4 expected)", index["width"]))),
        };
        let val_fraction = index["val_fraction"]
            .as_f64()
            .filter(|v| (0.0..1.0).contains(v))
            .ok_or_else(|| {
                bad(format!(
                    "val_fraction {} is not in [0, 1)",
                    index["val_fraction"]
                ))
            })?;
        // Only plain file names: an index cannot point outside its folder.
        let file = |v: &serde_json::Value, what: &str| -> Result<PathBuf> {
            let name = v.as_str().unwrap_or("");
            let plain = !name.is_empty()
                && Path::new(name).file_name().map(|n| n.to_str()) == Some(Some(name))
                && name != ".."
                && name != ".";
            if !plain {
                return Err(bad(format!("{what} {v} is not a file name in the folder")));
            }
            Ok(dir.join(name))
        };
        let entry = |v: &serde_json::Value, what: &str| -> Result<(PathBuf, u64)> {
            let path = file(&v["file"], what)?;
            let n = v["tokens"]
                .as_u64()
                .ok_or_else(|| bad(format!("{what} {} has no token count", v["file"])))?;
            Ok((path, n))
        };
        let tok_name = index
            .get("tokenizer")
            .cloned()
            .unwrap_or_else(|| crate::checkpoint::TOKENIZER.into());
        let tok_path = file(&tok_name, "tokenizer")?;
        let tokenizer = Tokenizer::from_file(&tok_path)?;
        if width == 2 && tokenizer.id_limit() > 1 << 16 {
            return Err(Error::bad_file(
                &tok_path,
                format!(
                    "has ids up to {}, more than the shards' 16-bit ids hold: the shards were not written with this tokenizer",
                    tokenizer.id_limit() - 1
                ),
            ));
        }
        if index["vocab_size"].as_u64() != Some(tokenizer.vocab_size() as u64) {
            return Err(Error::bad_file(
                &tok_path,
                format!(
                    "has {} ids but the index says the shards were written with {}",
                    tokenizer.vocab_size(),
                    index["vocab_size"]
                ),
            ));
        }
        let train: Vec<(PathBuf, u64)> = index["train"]
            .as_array()
            .ok_or_else(|| bad("no list of training shards".into()))?
            .iter()
            .map(|v| entry(v, "training shard"))
            .collect::<Result<_>>()?;
        let val = entry(&index["val"], "validation shard")?;
        let limit = u32::try_from(tokenizer.vocab_size()).unwrap_or(u32::MAX);
        Ok(ShardSet {
            train: Mapped::open(&train, width, limit)?,
            val: Mapped::open(&[val], width, limit)?,
            tokenizer,
            val_fraction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_fall_where_a_word_ends() {
        assert_eq!(last_cut("ab cd  ef\n"), 9);
        assert_eq!(last_cut("  ab"), 0);
        assert_eq!(last_cut("x\n\ny"), 1);
    }
}

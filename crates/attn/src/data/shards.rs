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
//! their token counts; the tokenizer is copied beside them.

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

fn shard_bytes(width: u32, ids: &[u32]) -> Vec<u8> {
    let mut b = header(width, ids.len() as u64);
    b.reserve(ids.len() * width as usize);
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
}

impl Pieces<'_> {
    fn new(files: &[PathBuf], encoding: Encoding) -> Pieces<'_> {
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
            self.read += n as u64;
            let at_end = n == 0;
            let mut raw = std::mem::take(&mut self.raw);
            raw.extend_from_slice(&buf);
            let raw_start = self.read - raw.len() as u64;
            match self.encoding {
                Encoding::Latin1 => self.text.extend(raw.iter().map(|&b| b as char)),
                Encoding::Utf8 => match std::str::from_utf8(&raw) {
                    Ok(s) => self.text.push_str(s),
                    Err(e) if e.error_len().is_none() && !at_end => {
                        // A sequence cut by the block: its bytes wait for the next one.
                        let ok = e.valid_up_to();
                        self.text.push_str(std::str::from_utf8(&raw[..ok]).unwrap());
                        self.raw = raw[ok..].to_vec();
                    }
                    Err(e) => {
                        return Err(Error::Encoding {
                            path: path.clone(),
                            encoding: "UTF-8",
                            offset: (raw_start + e.valid_up_to() as u64) as usize,
                        })
                    }
                },
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

/// Tokenize `files` with `tokenizer` into shards of `shard_tokens` tokens in `out`,
/// keeping the last `val_fraction` of the tokens as the validation shard.
pub fn tokenize(
    files: &[PathBuf],
    encoding: Encoding,
    tokenizer: &Tokenizer,
    out: &Path,
    shard_tokens: usize,
    val_fraction: f64,
) -> Result<TokenizeReport> {
    tokenize_in_pieces(
        files,
        encoding,
        tokenizer,
        out,
        shard_tokens,
        val_fraction,
        1 << 18,
    )
}

/// [`tokenize`], reading the text in blocks of `piece_bytes` (tests use small ones, so
/// that pieces are cut often).
pub fn tokenize_in_pieces(
    files: &[PathBuf],
    encoding: Encoding,
    tokenizer: &Tokenizer,
    out: &Path,
    shard_tokens: usize,
    val_fraction: f64,
    piece_bytes: usize,
) -> Result<TokenizeReport> {
    if files.is_empty() {
        return Err(Error::invalid("input", "no data file given"));
    }
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(Error::invalid(
            "val-fraction",
            format!("{val_fraction} is not in [0, 1)"),
        ));
    }
    if shard_tokens == 0 {
        return Err(Error::invalid("shard-tokens", "must be at least 1"));
    }
    crate::guard::check_memory(
        "--shard-tokens (one shard's tokens)",
        8.0 * shard_tokens as f64,
    )?;
    let width: u32 = if tokenizer.id_limit() <= 1 << 16 {
        2
    } else {
        4
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut pieces = Pieces::new(files, encoding);
    let mut report = TokenizeReport {
        files: files.len(),
        width,
        ..Default::default()
    };
    let mut current: Vec<u32> = Vec::new();
    let mut shards: Vec<(String, u64)> = Vec::new();
    let write_shard = |ids: &[u32], shards: &mut Vec<(String, u64)>| -> Result<()> {
        let name = format!("train-{:05}.bin", shards.len());
        crate::checkpoint::write_atomic(&out.join(&name), &shard_bytes(width, ids))?;
        shards.push((name, ids.len() as u64));
        Ok(())
    };
    loop {
        // A few pieces at a time, tokenized on every core, in order.
        let mut batch = Vec::new();
        while batch.len() < 2 * rayon::current_num_threads() {
            match pieces.next_piece(piece_bytes.max(1))? {
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
            current.extend(v);
            while current.len() >= shard_tokens {
                let rest = current.split_off(shard_tokens);
                write_shard(&current, &mut shards)?;
                current = rest;
            }
        }
    }
    if !current.is_empty() {
        write_shard(&current, &mut shards)?;
    }
    report.bytes = pieces.bytes;
    // The validation split: the last tokens, moved from the training shards' tail.
    let total = report.tokens;
    let n_train = ((total as f64) * (1.0 - val_fraction)).round() as u64;
    let mut val: Vec<u32> = Vec::new();
    let mut kept = 0u64;
    let mut index_train = Vec::new();
    for (name, n) in &shards {
        if kept + n <= n_train {
            kept += n;
            index_train.push((name.clone(), *n));
            continue;
        }
        let ids = read_shard(&out.join(name))?;
        let keep = (n_train - kept.min(n_train)) as usize;
        val.extend_from_slice(&ids[keep..]);
        if keep > 0 {
            crate::checkpoint::write_atomic(&out.join(name), &shard_bytes(width, &ids[..keep]))?;
            index_train.push((name.clone(), keep as u64));
        } else {
            std::fs::remove_file(out.join(name)).map_err(|e| Error::io(out.join(name), e))?;
        }
        kept += *n;
    }
    crate::checkpoint::write_atomic(&out.join("val.bin"), &shard_bytes(width, &val))?;
    tokenizer.save(&out.join(crate::checkpoint::TOKENIZER))?;
    report.train_tokens = n_train;
    report.val_tokens = val.len() as u64;
    report.shards = index_train.len();
    let index = serde_json::json!({
        "format": "attn-tokens",
        "version": VERSION,
        "width": width,
        "vocab_size": tokenizer.vocab_size(),
        "tokenizer": crate::checkpoint::TOKENIZER,
        "val_fraction": val_fraction,
        "train": index_train.iter().map(|(f, n)| serde_json::json!({"file": f, "tokens": n})).collect::<Vec<_>>(),
        "val": {"file": "val.bin", "tokens": val.len()},
        "sources": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
    });
    crate::checkpoint::write_json(&out.join(INDEX), &index)?;
    Ok(report)
}

/// The tokens of one shard file, its header checked (magic, version, width, count
/// against the file's size).
pub fn read_shard(path: &Path) -> Result<Vec<u32>> {
    let bytes = crate::guard::read_file(path, u64::MAX)?;
    let bad = |m: String| Error::bad_file(path, m);
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(bad("not a token shard (no ATTNTOK1 header)".into()));
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let (version, width) = (u32_at(8), u32_at(12));
    let n = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    if version != VERSION {
        return Err(bad(format!(
            "shard format version {version}; this attn reads {VERSION}"
        )));
    }
    if width != 2 && width != 4 {
        return Err(bad(format!("token width {width} bytes (2 or 4 expected)")));
    }
    let body = (bytes.len() - HEADER) as u64;
    if n.checked_mul(width as u64) != Some(body) {
        return Err(bad(format!(
            "the header says {n} tokens of {width} bytes but the file holds {body} bytes after it"
        )));
    }
    let b = &bytes[HEADER..];
    Ok(if width == 2 {
        b.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
            .collect()
    } else {
        b.chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    })
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

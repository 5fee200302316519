//! Deduplication of a corpus: exact duplicates by the hash of the normalised text, near
//! duplicates by MinHash signatures ([`super::minhash`]) and LSH banding (documents that
//! agree on every value of some band of `rows` values are candidates; candidates are
//! joined into clusters, as connected components), keeping the first document of each
//! cluster.
//!
//! Two streaming passes over the input: the first computes each unit's keys (in
//! parallel, a batch at a time) and joins the clusters; the second writes the kept units.
//! Memory grows with the number of units (a few words per band each), not with the
//! size of the text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use unicode_normalization::UnicodeNormalization;

use super::minhash::{MinHasher, Scheme, Shingle};
use super::stream::LineBatches;
use crate::{Error, Result};

/// What one document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Each line.
    Line,
    /// Each block of lines between blank lines.
    Paragraph,
    /// Each input file.
    Document,
}

impl Unit {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "line" => Ok(Unit::Line),
            "paragraph" => Ok(Unit::Paragraph),
            "document" => Ok(Unit::Document),
            _ => Err(Error::invalid(
                "unit",
                format!("{s:?} is not a unit (line, paragraph or document)"),
            )),
        }
    }
}

/// Near-duplicate detection's parameters.
#[derive(Clone, Debug, Serialize)]
pub struct Near {
    pub threshold: f64,
    pub num_perm: usize,
    pub ngram: usize,
    pub shingle: Shingle,
    pub scheme: Scheme,
    pub seed: u64,
    pub bands: usize,
    pub rows: usize,
    /// Join a candidate pair only when the true Jaccard similarity of the two units'
    /// shingle sets is at least `threshold` (checked in a pass of its own over the
    /// candidates), rather than on the band collision alone.
    pub verify: bool,
}

impl Near {
    /// Bands and rows for `threshold` as datasketch's `MinHashLSH` chooses them: the
    /// split of `num_perm` that minimises the equally weighted sum of the probabilities
    /// of a false positive (pairs below the threshold that become candidates) and of a
    /// false negative (pairs above it that do not), each the integral over the Jaccard
    /// similarity of the candidate probability 1 − (1 − s^r)^b.
    pub fn optimal_bands(threshold: f64, num_perm: usize) -> (usize, usize) {
        Self::weighted_bands(threshold, num_perm, 0.5, 0.5)
    }

    /// [`Self::optimal_bands`] with the two errors weighted: `fp` for false positives,
    /// `fn_` for false negatives (datasketch's `weights`). With `verify`, a false
    /// positive costs only a check, so the default there is (0.1, 0.9): on the Gutenberg
    /// test corpus (`scripts/dedup_reference.py`) it finds 99% of the pairs at or above
    /// 0.8 where the even weighting finds 89%.
    pub fn weighted_bands(threshold: f64, num_perm: usize, fp: f64, fn_: f64) -> (usize, usize) {
        let p = |s: f64, b: usize, r: usize| 1.0 - (1.0 - s.powi(r as i32)).powi(b as i32);
        let integrate = |f: &dyn Fn(f64) -> f64, a: f64, z: f64| {
            // Composite Simpson's rule, 1000 intervals.
            let n = 1000;
            let h = (z - a) / n as f64;
            let mut sum = f(a) + f(z);
            for i in 1..n {
                sum += f(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            sum * h / 3.0
        };
        let (fp_w, fn_w) = (fp, fn_);
        let mut best = (f64::INFINITY, 1, 1);
        for b in 1..=num_perm {
            for r in 1..=num_perm / b {
                let fp = integrate(&|s| p(s, b, r), 0.0, threshold);
                let fn_ = integrate(&|s| 1.0 - p(s, b, r), threshold, 1.0);
                let err = fp_w * fp + fn_w * fn_;
                if err < best.0 {
                    best = (err, b, r);
                }
            }
        }
        (best.1, best.2)
    }
}

/// What to remove.
#[derive(Clone, Debug)]
pub struct DedupConfig {
    pub unit: Unit,
    pub exact: bool,
    pub near: Option<Near>,
    /// Skip (and count) lines, or documents, that are not valid UTF-8 instead of
    /// failing; a skipped unit is neither compared nor written.
    pub skip_invalid: bool,
}

/// What a run found and wrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DedupReport {
    pub units: usize,
    pub kept: usize,
    /// Units removed as exact copies of an earlier one.
    pub exact_duplicates: usize,
    /// Units removed as near copies (not exact ones).
    pub near_duplicates: usize,
    /// Clusters of two or more units, and their sizes: `[size, count]`, by size.
    pub clusters: usize,
    pub cluster_sizes: Vec<[usize; 2]>,
    pub largest_cluster: usize,
    /// Units with nothing to compare (empty after normalisation): kept, not matched.
    pub empty_units: usize,
    /// Lines (documents with `--unit document`) skipped as not valid UTF-8.
    pub invalid_skipped: u64,
    /// With `verify`: the candidate pairs checked, and those below the threshold.
    pub candidate_pairs: u64,
    pub rejected_pairs: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub near: Option<Near>,
}

/// The text a unit is compared by: NFC, whitespace runs as one space, trimmed.
pub fn normalise(text: &str) -> String {
    let nfc: String = text.nfc().collect();
    nfc.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One unit: its input file, its first line (from 1) and its text.
struct Item {
    file: usize,
    line: u64,
    text: String,
}

/// The units of the input files in order, a batch at a time.
struct Units<'a> {
    files: &'a [PathBuf],
    unit: Unit,
    at: usize,
    lines: Option<LineBatches>,
    /// A paragraph being gathered: its first line and text.
    para: Option<(u64, String)>,
    skip_invalid: bool,
    /// Lines or documents skipped as not UTF-8.
    skipped: u64,
}

impl<'a> Units<'a> {
    fn new(files: &'a [PathBuf], cfg: &DedupConfig) -> Self {
        Units {
            files,
            unit: cfg.unit,
            at: 0,
            lines: None,
            para: None,
            skip_invalid: cfg.skip_invalid,
            skipped: 0,
        }
    }

    /// Up to about `max` units (none at the end).
    fn next_batch(&mut self, max: usize) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        while out.len() < max && self.at < self.files.len() {
            let path = &self.files[self.at];
            if self.unit == Unit::Document {
                let bytes = crate::guard::read_file(path, 1 << 30)?;
                super::stream::count_read(bytes.len());
                match String::from_utf8(bytes) {
                    Ok(text) => out.push(Item {
                        file: self.at,
                        line: 1,
                        text,
                    }),
                    Err(_) if self.skip_invalid => self.skipped += 1,
                    Err(e) => {
                        return Err(Error::bad_file(
                            path,
                            format!(
                                "is not valid UTF-8 (byte {}); pass --skip-invalid to skip such documents",
                                e.utf8_error().valid_up_to()
                            ),
                        ))
                    }
                }
                self.at += 1;
                continue;
            }
            if self.lines.is_none() {
                self.lines = Some(LineBatches::open(path)?.skip_invalid(self.skip_invalid));
            }
            let lines = self.lines.as_mut().unwrap();
            let before = lines.skipped();
            let batch = lines.next_numbered(4096)?;
            self.skipped += lines.skipped() - before;
            if batch.is_empty() {
                if let Some((line, text)) = self.para.take() {
                    out.push(Item {
                        file: self.at,
                        line,
                        text,
                    });
                }
                self.lines = None;
                self.at += 1;
                continue;
            }
            for (line, l) in batch {
                match self.unit {
                    Unit::Line => out.push(Item {
                        file: self.at,
                        line,
                        text: l,
                    }),
                    _ => {
                        if l.trim().is_empty() {
                            if let Some((line, text)) = self.para.take() {
                                out.push(Item {
                                    file: self.at,
                                    line,
                                    text,
                                });
                            }
                        } else {
                            match &mut self.para {
                                Some((_, t)) => {
                                    t.push('\n');
                                    t.push_str(&l);
                                }
                                None => self.para = Some((line, l)),
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Union-find over unit ids, the smallest id of a set its root (the unit kept).
struct Clusters(Vec<u32>);

impl Clusters {
    fn root(&mut self, mut x: u32) -> u32 {
        while self.0[x as usize] != x {
            let p = self.0[x as usize];
            self.0[x as usize] = self.0[p as usize];
            x = p;
        }
        x
    }
    fn join(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra != rb {
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.0[hi as usize] = lo;
        }
    }
}

/// A 64-bit key of a band of signature values (a strong mix: distinct bands collide with
/// probability about 2⁻⁶⁴ per pair).
fn band_key(band: usize, values: &[u32]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64 ^ band as u64;
    for &v in values {
        h = (h ^ v as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
        h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 29;
    }
    h
}

/// The exact key of a unit's normalised text: the first 16 bytes of its SHA-1.
pub(crate) fn exact_key(norm: &str) -> u128 {
    use sha1::{Digest, Sha1};
    let d = Sha1::digest(norm.as_bytes());
    u128::from_le_bytes(d[..16].try_into().unwrap())
}

/// The most earlier members of a bucket a unit is checked against (with `verify`), so
/// that a bucket of many copies costs a bounded number of checks per unit.
const MAX_COMPARED: usize = 64;

/// A unit's shingles as a sorted set of 64-bit hashes.
fn shingle_set(norm: &str, n: &Near) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    let mut v: Vec<u64> = super::minhash::shingles(norm, n.ngram, n.shingle)
        .iter()
        .map(|s| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            s.hash(&mut h);
            h.finish()
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The Jaccard similarity of two sorted sets.
fn set_jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        1.0
    } else {
        both as f64 / union as f64
    }
}

/// Whether each candidate pair's true Jaccard similarity reaches the threshold: a pass
/// over the units that keeps the shingle sets of those in some pair.
fn verify_pairs(
    files: &[PathBuf],
    cfg: &DedupConfig,
    n: &Near,
    pairs: &[(u32, u32)],
) -> Result<Vec<bool>> {
    let needed: std::collections::HashSet<u32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    let mut sets: HashMap<u32, Vec<u64>> = HashMap::with_capacity(needed.len());
    let mut units = Units::new(files, cfg);
    let mut id = 0u32;
    loop {
        let batch = units.next_batch(8192)?;
        if batch.is_empty() {
            break;
        }
        let ids: Vec<u32> = (id..id + batch.len() as u32).collect();
        id += batch.len() as u32;
        let got: Vec<(u32, Vec<u64>)> = batch
            .par_iter()
            .zip(ids)
            .filter(|(_, i)| needed.contains(i))
            .map(|(it, i)| (i, shingle_set(&normalise(&it.text), n)))
            .collect();
        sets.extend(got);
    }
    if sets.len() != needed.len() {
        return Err(Error::invalid(
            "input",
            "the input files changed between the two passes",
        ));
    }
    Ok(pairs
        .par_iter()
        .map(|(a, b)| set_jaccard(&sets[a], &sets[b]) >= n.threshold)
        .collect())
}

/// Each unit's cluster root after the first pass.
pub struct Found {
    roots: Vec<u32>,
    /// `(file, line)` of each unit, kept when asked for (for `--explain`).
    places: Vec<(u32, u64)>,
}

/// Find the duplicates among the units of `files`; with `keep_places`, remember where
/// each unit is (for [`Found::clusters`]).
pub fn find(
    files: &[PathBuf],
    cfg: &DedupConfig,
    report: &mut DedupReport,
    keep_places: bool,
) -> Result<Found> {
    if !cfg.exact && cfg.near.is_none() {
        return Err(Error::invalid("dedup", "ask for --exact, --near or both"));
    }
    let near = match &cfg.near {
        Some(n) => {
            if !(0.0..=1.0).contains(&n.threshold) {
                return Err(Error::invalid(
                    "threshold",
                    format!("{} is not in [0, 1]", n.threshold),
                ));
            }
            if n.bands == 0 || n.rows == 0 || n.bands * n.rows > n.num_perm {
                return Err(Error::invalid(
                    "bands",
                    format!(
                        "{} bands of {} rows need {} permutations; --num-perm is {}",
                        n.bands,
                        n.rows,
                        n.bands * n.rows,
                        n.num_perm
                    ),
                ));
            }
            Some((MinHasher::new(n.num_perm, n.seed, n.scheme)?, n))
        }
        None => None,
    };
    let mut units = Units::new(files, cfg);
    let mut clusters = Clusters(Vec::new());
    let mut exact = Vec::new();
    let mut places = Vec::new();
    let mut seen: HashMap<u128, u32> = HashMap::new();
    let mut buckets: Vec<HashMap<u64, u32>> = near
        .as_ref()
        .map_or(Vec::new(), |(_, n)| vec![HashMap::new(); n.bands]);
    let verify = near.as_ref().is_some_and(|(_, n)| n.verify);
    // With `verify`: the later members of buckets that hold more than one unit (the
    // first is in `buckets`), and the candidate pairs, each once.
    let mut more: HashMap<(usize, u64), Vec<u32>> = HashMap::new();
    let mut pairs: std::collections::HashSet<(u32, u32)> = Default::default();
    loop {
        let batch = units.next_batch(8192)?;
        if batch.is_empty() {
            break;
        }
        // (exact key, band keys) of each unit; None for an empty one.
        let keys: Vec<Option<(u128, Vec<u64>)>> = batch
            .par_iter()
            .map(|it| {
                let norm = normalise(&it.text);
                if norm.is_empty() {
                    return None;
                }
                let bands = match &near {
                    Some((h, n)) => {
                        let sig = h.signature_of(&norm, n.ngram, n.shingle);
                        (0..n.bands)
                            .map(|b| band_key(b, &sig[b * n.rows..(b + 1) * n.rows]))
                            .collect()
                    }
                    None => Vec::new(),
                };
                Some((exact_key(&norm), bands))
            })
            .collect();
        for (it, k) in batch.iter().zip(keys) {
            let id = u32::try_from(clusters.0.len())
                .map_err(|_| Error::invalid("input", "more than 2^32 units"))?;
            clusters.0.push(id);
            if keep_places {
                places.push((it.file as u32, it.line));
            }
            report.units += 1;
            report.bytes_in += it.text.len() as u64;
            let Some((ek, bands)) = k else {
                exact.push(false);
                report.empty_units += 1;
                continue;
            };
            let mut is_exact = false;
            let mut copy = false;
            if cfg.exact || near.is_some() {
                match seen.get(&ek) {
                    Some(&first) => {
                        clusters.join(first, id);
                        is_exact = cfg.exact;
                        copy = true;
                    }
                    None => {
                        seen.insert(ek, id);
                    }
                }
            }
            exact.push(is_exact);
            // An exact copy has its first copy's bands, which are in the buckets already:
            // it would only add the same joins (and, with `verify`, the same checks).
            if copy {
                continue;
            }
            for (b, key) in bands.into_iter().enumerate() {
                match buckets[b].get(&key) {
                    Some(&other) if verify => {
                        let rest = more.entry((b, key)).or_default();
                        for &m in std::iter::once(&other)
                            .chain(rest.iter())
                            .take(MAX_COMPARED)
                        {
                            pairs.insert((m, id));
                        }
                        rest.push(id);
                    }
                    Some(&other) => clusters.join(other, id),
                    None => {
                        buckets[b].insert(key, id);
                    }
                }
            }
        }
    }
    report.invalid_skipped = units.skipped;
    drop((buckets, more));
    if let Some((_, n)) = near.as_ref().filter(|_| verify) {
        let pairs: Vec<(u32, u32)> = pairs.into_iter().collect();
        let ok = verify_pairs(files, cfg, n, &pairs)?;
        report.candidate_pairs = pairs.len() as u64;
        for (&(a, b), good) in pairs.iter().zip(ok) {
            if good {
                clusters.join(a, b);
            } else {
                report.rejected_pairs += 1;
            }
        }
    }
    let n = clusters.0.len();
    let roots: Vec<u32> = (0..n as u32).map(|i| clusters.root(i)).collect();
    let mut sizes: HashMap<u32, usize> = HashMap::new();
    for &r in &roots {
        *sizes.entry(r).or_default() += 1;
    }
    let mut hist: HashMap<usize, usize> = HashMap::new();
    for &s in sizes.values().filter(|&&s| s > 1) {
        *hist.entry(s).or_default() += 1;
    }
    let mut hist: Vec<[usize; 2]> = hist.into_iter().map(|(s, c)| [s, c]).collect();
    hist.sort_unstable();
    report.clusters = hist.iter().map(|h| h[1]).sum();
    report.largest_cluster = hist.last().map_or(1, |h| h[0]);
    report.cluster_sizes = hist;
    for (i, &r) in roots.iter().enumerate() {
        if r as usize == i {
            report.kept += 1;
        } else if exact[i] {
            report.exact_duplicates += 1;
        } else {
            report.near_duplicates += 1;
        }
    }
    report.near = cfg.near.clone();
    Ok(Found { roots, places })
}

impl Found {
    /// Whether unit `i` is kept (the first of its cluster).
    pub fn kept(&self, i: usize) -> bool {
        self.roots[i] as usize == i
    }

    /// The clusters of two or more units, each as its units' `(file, line)`, the kept
    /// one first (the places [`find`] was asked to keep).
    pub fn clusters(&self) -> Vec<Vec<(u32, u64)>> {
        let mut by_root: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, &r) in self.roots.iter().enumerate() {
            by_root.entry(r).or_default().push(i);
        }
        let mut out: Vec<Vec<usize>> = by_root.into_values().filter(|v| v.len() > 1).collect();
        out.sort_unstable_by_key(|v| v[0]);
        out.into_iter()
            .map(|v| v.into_iter().map(|i| self.places[i]).collect())
            .collect()
    }
}

/// Deduplicate `files` into `out` (one output file per input file, same name, holding
/// its kept units: lines, or paragraphs separated by a blank line, or the whole file),
/// each written atomically; returns the report (also written as `dedup_report.json`),
/// and with `explain` the clusters in `clusters.jsonl`.
pub fn dedup(
    files: &[PathBuf],
    out: &Path,
    cfg: &DedupConfig,
    explain: bool,
) -> Result<DedupReport> {
    super::stream::output_names(files)?;
    let mut report = DedupReport::default();
    let found = find(files, cfg, &mut report, explain)?;
    let mut outputs = super::stream::Outputs::new(out)?;
    // Second pass: the kept units, file by file, streamed to the outputs.
    let mut units = Units::new(files, cfg);
    let mut id = 0usize;
    let mut current: Option<(usize, super::stream::Staged)> = None;
    let sep: &[u8] = if cfg.unit == Unit::Paragraph {
        b"\n\n"
    } else {
        b"\n"
    };
    let name = |f: usize| files[f].file_name().unwrap().to_string_lossy().into_owned();
    let mut written = vec![false; files.len()];
    loop {
        let batch = units.next_batch(8192)?;
        if batch.is_empty() {
            break;
        }
        for it in batch {
            if current.as_ref().is_some_and(|(f, _)| *f != it.file) {
                outputs.keep(current.take().unwrap().1)?;
            }
            let kept = found.kept(id);
            id += 1;
            // A removed document leaves no file.
            if cfg.unit == Unit::Document && !kept {
                continue;
            }
            if current.is_none() {
                written[it.file] = true;
                current = Some((it.file, outputs.create(&name(it.file))?));
            }
            if kept {
                let w = &mut current.as_mut().unwrap().1;
                w.write_all(it.text.as_bytes())?;
                report.bytes_out += it.text.len() as u64;
                if cfg.unit != Unit::Document {
                    w.write_all(sep)?;
                    report.bytes_out += sep.len() as u64;
                }
            }
        }
    }
    if let Some((_, w)) = current {
        outputs.keep(w)?;
    }
    // Inputs without any unit (empty files) give empty outputs.
    for (f, w) in written.iter().enumerate() {
        if !w && cfg.unit != Unit::Document {
            outputs.write(&name(f), b"")?;
        }
    }
    if id != found.roots.len() {
        return Err(Error::invalid(
            "input",
            "the input files changed between the two passes",
        ));
    }
    if explain {
        let mut text = String::new();
        for c in found.clusters() {
            let members: Vec<serde_json::Value> = c
                .iter()
                .map(|&(f, line)| {
                    serde_json::json!({"file": files[f as usize].display().to_string(), "line": line})
                })
                .collect();
            text.push_str(&serde_json::json!({ "size": c.len(), "units": members }).to_string());
            text.push('\n');
        }
        outputs.write("clusters.jsonl", text.as_bytes())?;
    }
    let json =
        serde_json::to_value(&report).map_err(|e| Error::invalid("report", e.to_string()))?;
    outputs.write_json("dedup_report.json", &json)?;
    outputs.commit()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_and_rows_are_datasketchs() {
        // datasketch.lsh._optimal_param(threshold, num_perm, 0.5, 0.5), datasketch 2.0.0.
        for (t, n, want) in [
            (0.5, 64, (14, 4)),
            (0.5, 128, (25, 5)),
            (0.5, 256, (42, 6)),
            (0.7, 128, (14, 9)),
            (0.8, 64, (5, 11)),
            (0.8, 128, (9, 13)),
            (0.8, 256, (17, 15)),
            (0.9, 128, (5, 25)),
        ] {
            assert_eq!(
                Near::optimal_bands(t, n),
                want,
                "threshold {t}, {n} permutations"
            );
        }
        // _optimal_param(threshold, num_perm, 0.1, 0.9): the weighting `verify` uses.
        for (t, n, want) in [
            (0.8, 128, (14, 9)),
            (0.5, 128, (32, 4)),
            (0.9, 256, (13, 19)),
            (0.7, 64, (12, 5)),
        ] {
            assert_eq!(Near::weighted_bands(t, n, 0.1, 0.9), want, "{t}, {n}");
        }
    }

    #[test]
    fn set_jaccard_counts_shared_hashes() {
        assert_eq!(set_jaccard(&[1, 2, 3, 4], &[3, 4, 5]), 0.4);
        assert_eq!(set_jaccard(&[], &[]), 1.0);
        assert_eq!(set_jaccard(&[1], &[2]), 0.0);
    }

    #[test]
    fn normalising_ignores_spacing_and_composition() {
        assert_eq!(
            normalise("  Caf\u{0065}\u{0301}\t au  lait \n"),
            "Café au lait"
        );
        assert_eq!(normalise(" \t "), "");
    }
}

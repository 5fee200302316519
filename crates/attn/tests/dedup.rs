//! Deduplication: exact copies always go; near copies go as MinHash LSH decides, the
//! clusters equal to those of a brute-force comparison of every pair's bands; the kept
//! units are written in order for each unit kind.

mod common;

use std::path::{Path, PathBuf};

use attn::data::dedup::{dedup, normalise, DedupConfig, Near, Unit};
use attn::data::minhash::{shingles, MinHasher, Scheme, Shingle};
use attn::rng::Rng;

/// Paragraphs of a Gutenberg book, one per line, at least 25 words each.
fn paragraphs(n: usize) -> Option<Vec<String>> {
    let data = common::data_dir()?;
    let text = std::fs::read_to_string(data.join("gutenberg/melville-moby_dick.txt"))
        .unwrap()
        .replace("\r\n", "\n");
    let mut out: Vec<String> = text
        .split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| p.split(' ').count() >= 25)
        .collect();
    out.dedup();
    out.truncate(n);
    Some(out)
}

fn near(threshold: f64) -> Near {
    let (bands, rows) = Near::optimal_bands(threshold, 128);
    Near {
        threshold,
        num_perm: 128,
        ngram: 5,
        shingle: Shingle::Word,
        scheme: Scheme::Affine32,
        seed: 1,
        bands,
        rows,
        verify: false,
    }
}

/// The corpus: the paragraphs, then exact copies (other spacing) of every 7th and copies
/// of every 5th with one word changed, in a fixed shuffled order.
fn corpus(base: &[String]) -> (Vec<String>, Vec<usize>) {
    let mut docs: Vec<(String, usize)> = base
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, p)| (p, i))
        .collect();
    for (i, p) in base.iter().enumerate() {
        if i % 7 == 0 {
            docs.push((format!("  {}  ", p.replace(' ', "   ")), i));
        }
        if i % 5 == 0 {
            let mut w: Vec<&str> = p.split(' ').collect();
            let k = w.len() / 2;
            w[k] = "harpoon";
            docs.push((w.join(" "), i));
        }
    }
    let mut rng = Rng::new(3);
    for i in (1..docs.len()).rev() {
        docs.swap(i, rng.below(i + 1));
    }
    docs.into_iter().unzip()
}

/// Each document's signature (128 permutations, seed 1, word 5-shingles).
fn signatures(docs: &[String]) -> Vec<Vec<u32>> {
    let h = MinHasher::new(128, 1, Scheme::Affine32).unwrap();
    docs.iter()
        .map(|d| h.signature_of(&normalise(d), 5, Shingle::Word))
        .collect()
}

/// The root of `x` in the union-find forest `r`.
fn find(r: &mut [usize], mut x: usize) -> usize {
    while r[x] != x {
        x = r[x];
    }
    x
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    p
}

#[test]
fn exact_and_near_copies_go_and_clusters_equal_a_brute_force_comparison() {
    let Some(base) = paragraphs(400) else { return };
    assert_eq!(base.len(), 400);
    let (docs, origin) = corpus(&base);
    let dir = common::temp_dir("dedup");
    let input = write(&dir, "corpus.txt", &docs);
    let n = near(0.8);
    let cfg = DedupConfig {
        unit: Unit::Line,
        exact: true,
        near: Some(n.clone()),
        skip_invalid: false,
    };
    let out = dir.join("out");
    let r = dedup(std::slice::from_ref(&input), &out, &cfg, true).unwrap();
    assert_eq!(r.units, docs.len());
    let copies = docs.len() - base.len();
    assert_eq!(
        r.exact_duplicates,
        base.len().div_ceil(7),
        "every exact copy"
    );
    // Brute force: every pair's bands compared, components by union-find.
    let sigs = signatures(&docs);
    let mut root: Vec<usize> = (0..docs.len()).collect();
    for i in 0..docs.len() {
        for j in i + 1..docs.len() {
            let shares = (0..n.bands).any(|b| {
                sigs[i][b * n.rows..(b + 1) * n.rows] == sigs[j][b * n.rows..(b + 1) * n.rows]
            });
            if shares {
                let (a, b) = (find(&mut root, i), find(&mut root, j));
                root[a.max(b)] = a.min(b);
            }
        }
    }
    let kept_brute: Vec<usize> = (0..docs.len())
        .filter(|&i| find(&mut root, i) == i)
        .collect();
    // The output holds exactly the units the brute force keeps, in order.
    let got = std::fs::read_to_string(out.join("corpus.txt")).unwrap();
    let want: String = kept_brute
        .iter()
        .map(|&i| format!("{}\n", docs[i]))
        .collect();
    assert_eq!(got, want);
    assert_eq!(r.kept, kept_brute.len());
    // One-word edits of paragraphs of 25+ words are near copies (true Jaccard of their
    // 5-word shingles at least 0.8): count how many the LSH found.
    let mut above = 0;
    let mut found = 0;
    for (i, d) in docs.iter().enumerate() {
        let first = origin.iter().position(|&o| o == origin[i]).unwrap();
        if first == i {
            continue;
        }
        let (a, b) = (
            shingles(&normalise(d), 5, Shingle::Word),
            shingles(&normalise(&docs[first]), 5, Shingle::Word),
        );
        let (a, b): (std::collections::HashSet<_>, std::collections::HashSet<_>) =
            (a.into_iter().collect(), b.into_iter().collect());
        let j = a.intersection(&b).count() as f64 / a.union(&b).count() as f64;
        if j >= 0.8 {
            above += 1;
            found += usize::from(find(&mut root, i) == find(&mut root, first));
        }
    }
    eprintln!("{copies} copies, {above} at Jaccard >= 0.8, {found} found; report {r:?}");
    // Measured 99 of 108 (datasketch's bands and rows for 0.8 find a pair at exactly 0.8
    // with probability 0.40, at 0.9 with 0.93); the bound leaves room for none of that to
    // change silently.
    assert!(found as f64 >= 0.85 * above as f64, "{found} of {above}");
    // The report and the clusters are written.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dedup_report.json")).unwrap())
            .unwrap();
    assert_eq!(report["kept"], r.kept);
    let clusters = std::fs::read_to_string(out.join("clusters.jsonl")).unwrap();
    assert_eq!(clusters.lines().count(), r.clusters);
    std::fs::remove_dir_all(&dir).ok();
}

/// The true Jaccard similarity of two units' shingle sets.
fn true_jaccard(a: &str, b: &str) -> f64 {
    let set = |t: &str| -> std::collections::HashSet<String> {
        shingles(&normalise(t), 5, Shingle::Word)
            .into_iter()
            .collect()
    };
    let (a, b) = (set(a), set(b));
    a.intersection(&b).count() as f64 / a.union(&b).count() as f64
}

/// With `verify`, clusters are the components of the pairs that share a band and whose
/// true Jaccard similarity reaches the threshold (a brute force over every pair gives
/// the same kept units), and the recall-weighted bands find the one-word edits.
#[test]
fn verified_clusters_hold_only_pairs_at_the_threshold() {
    let Some(base) = paragraphs(400) else { return };
    let (docs, origin) = corpus(&base);
    let dir = common::temp_dir("dedup-verify");
    let input = write(&dir, "corpus.txt", &docs);
    let (bands, rows) = Near::weighted_bands(0.8, 128, 0.1, 0.9);
    let n = Near {
        bands,
        rows,
        verify: true,
        ..near(0.8)
    };
    let cfg = DedupConfig {
        unit: Unit::Line,
        exact: false,
        near: Some(n.clone()),
        skip_invalid: false,
    };
    let r = dedup(std::slice::from_ref(&input), &dir.join("out"), &cfg, false).unwrap();
    assert!(r.candidate_pairs > 0 && r.rejected_pairs <= r.candidate_pairs);
    let sigs = signatures(&docs);
    let mut root: Vec<usize> = (0..docs.len()).collect();
    // Exact copies (after normalisation) join their first copy and are not compared
    // again; the other units' band-sharing pairs are the candidates.
    let norm: Vec<String> = docs.iter().map(|d| normalise(d)).collect();
    let mut copy = vec![false; docs.len()];
    for j in 0..docs.len() {
        if let Some(i) = (0..j).find(|&i| norm[i] == norm[j]) {
            copy[j] = true;
            let (a, b) = (find(&mut root, i), find(&mut root, j));
            root[a.max(b)] = a.min(b);
        }
    }
    let (mut candidates, mut rejected) = (0, 0);
    for i in (0..docs.len()).filter(|&i| !copy[i]) {
        for j in (i + 1..docs.len()).filter(|&j| !copy[j]) {
            let band = |k: usize, b: usize| &sigs[k][b * rows..(b + 1) * rows];
            if !(0..bands).any(|b| band(i, b) == band(j, b)) {
                continue;
            }
            candidates += 1;
            if true_jaccard(&docs[i], &docs[j]) < 0.8 {
                rejected += 1;
                continue;
            }
            let (a, b) = (find(&mut root, i), find(&mut root, j));
            root[a.max(b)] = a.min(b);
        }
    }
    assert_eq!(
        (r.candidate_pairs, r.rejected_pairs),
        (candidates, rejected)
    );
    let kept: Vec<usize> = (0..docs.len())
        .filter(|&i| find(&mut root, i) == i)
        .collect();
    let got = std::fs::read_to_string(dir.join("out/corpus.txt")).unwrap();
    let want: String = kept.iter().map(|&i| format!("{}\n", docs[i])).collect();
    assert_eq!(got, want);
    // Recall of the copies at or above 0.8.
    let (mut above, mut found) = (0, 0);
    for i in 0..docs.len() {
        let first = origin.iter().position(|&o| o == origin[i]).unwrap();
        if first != i && true_jaccard(&docs[i], &docs[first]) >= 0.8 {
            above += 1;
            found += usize::from(find(&mut root, i) == find(&mut root, first));
        }
    }
    // Measured: every one of them (the plain bands find 99 of 108).
    assert!(found as f64 >= 0.97 * above as f64, "{found} of {above}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn paragraphs_and_documents_are_units_too() {
    let dir = common::temp_dir("dedup-units");
    let a = dir.join("a.txt");
    std::fs::write(
        &a,
        "first para\nline two\n\n\nsecond para\n\nfirst   para\nline two\n",
    )
    .unwrap();
    let b = dir.join("b.txt");
    std::fs::write(&b, "second para\n").unwrap();
    let c = dir.join("c.txt");
    std::fs::write(
        &c,
        "first para\nline two\n\n\nsecond para\n\nfirst   para\nline two\n",
    )
    .unwrap();
    let exact = |unit| DedupConfig {
        unit,
        exact: true,
        near: None,
        skip_invalid: false,
    };
    let out = dir.join("p");
    let r = dedup(
        &[a.clone(), b.clone()],
        &out,
        &exact(Unit::Paragraph),
        false,
    )
    .unwrap();
    assert_eq!((r.units, r.kept, r.exact_duplicates), (4, 2, 2));
    assert_eq!(
        std::fs::read_to_string(out.join("a.txt")).unwrap(),
        "first para\nline two\n\nsecond para\n\n"
    );
    assert_eq!(std::fs::read_to_string(out.join("b.txt")).unwrap(), "");
    let out = dir.join("d");
    let r = dedup(
        &[a.clone(), b.clone(), c.clone()],
        &out,
        &exact(Unit::Document),
        false,
    )
    .unwrap();
    assert_eq!((r.units, r.kept, r.exact_duplicates), (3, 2, 1));
    assert!(out.join("a.txt").is_file() && out.join("b.txt").is_file());
    assert!(
        !out.join("c.txt").exists(),
        "a removed document leaves no file"
    );
    // Two inputs with one name, and nothing asked for, are refused.
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::copy(&a, sub.join("a.txt")).unwrap();
    let e = dedup(
        &[a.clone(), sub.join("a.txt")],
        &dir.join("x"),
        &exact(Unit::Line),
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("a.txt"), "{e}");
    let none = DedupConfig {
        unit: Unit::Line,
        exact: false,
        near: None,
        skip_invalid: false,
    };
    assert!(dedup(&[a], &dir.join("y"), &none, false).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// A line that is not UTF-8 stops dedup and scrub with its file and byte, leaving no
/// output behind (the first file's included); with `skip_invalid` the line is skipped
/// and counted, and the rest goes through.
#[test]
fn bad_bytes_stop_cleanly_or_are_skipped_and_counted() {
    use attn::data::pii::{scrub, Mode, ALL};
    let dir = common::temp_dir("dedup-bad-bytes");
    let a = dir.join("a.txt");
    std::fs::write(&a, "one line\none line\nmail me: x@example.com\n").unwrap();
    let b = dir.join("b.txt");
    std::fs::write(&b, b"fine\nbroken \xc3\x28 line\nfine\n").unwrap();
    let files = [a, b];
    let mut cfg = DedupConfig {
        unit: Unit::Line,
        exact: true,
        near: None,
        skip_invalid: false,
    };
    let outputs = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let out = dir.join("d");
    let e = dedup(&files, &out, &cfg, false).unwrap_err().to_string();
    assert!(
        e.contains("b.txt") && e.contains("line 2") && e.contains("byte 12"),
        "{e}"
    );
    assert!(outputs(&out).is_empty(), "{:?}", outputs(&out));
    let out = dir.join("s");
    let e = scrub(&files, &out, &ALL, Mode::Mask, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("b.txt") && e.contains("line 2"), "{e}");
    assert!(outputs(&out).is_empty(), "{:?}", outputs(&out));

    cfg.skip_invalid = true;
    let out = dir.join("d2");
    let r = dedup(&files, &out, &cfg, false).unwrap();
    assert_eq!((r.units, r.kept, r.invalid_skipped), (5, 3, 1));
    assert_eq!(
        std::fs::read_to_string(out.join("b.txt")).unwrap(),
        "fine\n"
    );
    assert_eq!(outputs(&out), ["a.txt", "b.txt", "dedup_report.json"]);
    let out = dir.join("s2");
    let r = scrub(&files, &out, &ALL, Mode::Mask, true).unwrap();
    assert_eq!((r.lines, r.invalid_skipped), (5, 1));
    assert_eq!(
        std::fs::read_to_string(out.join("a.txt")).unwrap(),
        "one line\none line\nmail me: <EMAIL>\n"
    );
    assert_eq!(outputs(&out), ["a.txt", "b.txt", "scrub_report.json"]);
    std::fs::remove_dir_all(&dir).ok();
}

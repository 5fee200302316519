//! ROUGE and the Porter stemmer against rouge-score 0.1.2 and NLTK (fixtures from
//! scripts/make_rouge_fixtures.py): every per-line precision, recall and F-measure and
//! every corpus mean within 1e-12, every stem identical.
//!
//! The fixture's numbers are read with Rust's correctly rounding `str::parse::<f64>`
//! (serde_json's default float parsing can be one unit in the last place off), so that the
//! count of bit-identical values the score test prints is meaningful.

use attn::metrics::porter;
use attn::metrics::rouge::{
    score_corpus, score_pair, tokenize, RougeConfig, RougeTokenize, ROUGE_SCORE_VERSION,
};
use serde_json::Value;

const TOL: f64 = 1e-12;

/// The fixture with every JSON number turned into a string holding its literal.
fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rouge/cases.json"
    ))
    .unwrap();
    let mut out = String::with_capacity(text.len() * 2);
    let (mut in_str, mut escaped, mut in_num) = (false, false, false);
    for c in text.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        if in_num && !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')) {
            out.push('"');
            in_num = false;
        }
        if !in_num && (c.is_ascii_digit() || c == '-') {
            out.push('"');
            in_num = true;
        }
        in_str = c == '"';
        out.push(c);
    }
    serde_json::from_str(&out).unwrap()
}

fn num(v: &Value) -> f64 {
    v.as_str().unwrap().parse().unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(num).collect()
}

fn config(case: &Value, stem: bool) -> RougeConfig {
    RougeConfig {
        stem,
        tokenize: case["tokenize"].as_str().unwrap().parse().unwrap(),
        newline_token: case["newline_token"].as_str().map(str::to_string),
    }
}

/// Largest absolute difference, and the number of values compared.
#[derive(Default)]
struct Worst {
    diff: f64,
    at: String,
    values: usize,
    exact: usize,
}

impl Worst {
    fn check(&mut self, got: &[f64; 12], want: &[f64], fields: &[String], at: &str) {
        assert_eq!(want.len(), 12);
        for k in 0..12 {
            let d = (got[k] - want[k]).abs();
            assert!(
                d <= TOL,
                "{at} {}: attn {} vs rouge-score {}",
                fields[k],
                got[k],
                want[k]
            );
            self.values += 1;
            self.exact += (got[k] == want[k]) as usize;
            if d > self.diff {
                self.diff = d;
                self.at = format!("{at} {}", fields[k]);
            }
        }
    }
}

#[test]
fn scores_match_rouge_score() {
    let f = fixture();
    assert_eq!(f["rouge_score_version"], ROUGE_SCORE_VERSION);
    let fields = strings(&f["fields"]);
    let mut worst = Worst::default();
    let mut pairs = 0;
    for case in f["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let hyps = strings(&case["hyps"]);
        let refs = strings(&case["refs"]);
        for (key, stem) in [("nostem", false), ("stem", true)] {
            let cfg = config(case, stem);
            let want = &case["scores"][key];
            let (mean, lines) = score_corpus(&hyps, &refs, &cfg).unwrap();
            let want_lines = want["lines"].as_array().unwrap();
            assert_eq!(lines.len(), want_lines.len());
            for (i, (got, w)) in lines.iter().zip(want_lines).enumerate() {
                let at = format!(
                    "{name}/{key} line {i} (hyp {:?}, ref {:?})",
                    hyps[i], refs[i]
                );
                worst.check(&got.to_array(), &floats(w), &fields, &at);
                // score_pair is what score_corpus runs per line.
                assert_eq!(*got, score_pair(&hyps[i], &refs[i], &cfg));
            }
            worst.check(
                &mean.to_array(),
                &floats(&want["mean"]),
                &fields,
                &format!("{name}/{key} mean"),
            );
            pairs += hyps.len();
        }
    }
    assert!(pairs >= 4000, "{pairs} scored pairs");
    eprintln!(
        "{pairs} scored pairs: worst difference {:e} ({}); {} of {} values bit-identical",
        worst.diff, worst.at, worst.exact, worst.values
    );
}

#[test]
fn stemmer_matches_nltk() {
    let f = fixture();
    let stems = f["stems"].as_array().unwrap();
    assert!(stems.len() >= 5000);
    let mut wrong = vec![];
    for p in stems {
        let (w, s) = (p[0].as_str().unwrap(), p[1].as_str().unwrap());
        let got = porter::stem(w);
        if got != s {
            wrong.push(format!("{w:?}: attn {got:?}, NLTK {s:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} words differ:\n{}",
        wrong.len(),
        stems.len(),
        wrong.join("\n")
    );
}

/// The characters whose Python lowercase holds ASCII letters or digits (the Kelvin sign,
/// the dotted capital I) are exactly those whose Rust lowercase does, with the same
/// tokens; every other non-ASCII character is dropped.
#[test]
fn unicode_lowercasing_matches_python() {
    let f = fixture();
    let mut want = std::collections::HashMap::new();
    for p in f["lower_ascii"].as_array().unwrap() {
        let c = char::from_u32(num(&p[0]) as u32).unwrap();
        let lower = p[1].as_str().unwrap();
        let toks: Vec<String> = lower
            .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        want.insert(c, toks);
    }
    assert!(want.contains_key(&'\u{212A}') && want.contains_key(&'\u{130}'));
    for cfg in [
        RougeConfig::default(),
        RougeConfig {
            tokenize: RougeTokenize::ZhChar,
            ..Default::default()
        },
    ] {
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            if c.is_ascii_alphanumeric() || attn::metrics::rouge::is_zh_char(c) {
                continue;
            }
            let got = tokenize(&c.to_string(), &cfg);
            let expected = want.get(&c).cloned().unwrap_or_default();
            assert_eq!(got, expected, "U+{:04X}", c as u32);
        }
    }
}

/// On text without CJK, kana or Hangul, zh-char tokenizes as the default tokenizer.
#[test]
fn zh_char_equals_default_without_cjk() {
    let f = fixture();
    let mut texts = 0;
    for case in f["cases"].as_array().unwrap() {
        for t in strings(&case["hyps"])
            .into_iter()
            .chain(strings(&case["refs"]))
        {
            if t.chars().any(attn::metrics::rouge::is_zh_char) {
                continue;
            }
            for stem in [false, true] {
                let d = RougeConfig {
                    stem,
                    ..Default::default()
                };
                let z = RougeConfig {
                    stem,
                    tokenize: RougeTokenize::ZhChar,
                    ..Default::default()
                };
                assert_eq!(tokenize(&t, &d), tokenize(&t, &z), "{t:?}");
                assert_eq!(score_pair(&t, "the cat", &d), score_pair(&t, "the cat", &z));
            }
            texts += 1;
        }
    }
    assert!(texts > 3000, "{texts}");
}

#[test]
fn zh_char_tokens() {
    let z = RougeConfig {
        tokenize: RougeTokenize::ZhChar,
        ..Default::default()
    };
    let toks = tokenize("我们testing，ひら\u{20000}ＡＢ한국 Running!", &z);
    assert_eq!(
        toks,
        [
            "我",
            "们",
            "testing",
            "ひ",
            "ら",
            "\u{20000}",
            "한",
            "국",
            "running"
        ]
    );
    let stem = RougeConfig { stem: true, ..z };
    assert_eq!(tokenize("中文Running", &stem), ["中", "文", "run"]);
    // rouge-score's own tokenizer drops all of it but the ASCII words.
    assert_eq!(
        tokenize("我们testing", &RougeConfig::default()),
        ["testing"]
    );
}

#[test]
fn bad_input_is_an_error() {
    let cfg = RougeConfig::default();
    let e = score_corpus(&["a", "b"], &["a"], &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 reference lines but 2 hypotheses"), "{e}");
    let none: [&str; 0] = [];
    let e = score_corpus(&none, &none, &cfg).unwrap_err().to_string();
    assert!(e.contains("no lines"), "{e}");
    let empty_token = RougeConfig {
        newline_token: Some(String::new()),
        ..Default::default()
    };
    assert!(score_corpus(&["a"], &["a"], &empty_token).is_err());
    assert!("zh".parse::<RougeTokenize>().is_err());
}

#[test]
fn newline_token_splits_sentences() {
    let cfg = RougeConfig {
        newline_token: Some("<n>".into()),
        ..Default::default()
    };
    let a = score_pair("a b<n>c d", "c d<n>a b", &cfg);
    let b = score_pair("a b\nc d", "c d\na b", &RougeConfig::default());
    assert_eq!(a, b);
    // rougeLsum sees two sentences, each matched in full; rougeL only "a b" or "c d".
    assert_eq!(a.rouge_lsum.fmeasure, 1.0);
    assert_eq!(a.rouge_l.fmeasure, 0.5);
    // Without the substitution "<n>" is the word "n", and there is one sentence.
    let c = score_pair("a b<n>c d", "c d<n>a b", &RougeConfig::default());
    assert_eq!(c.rouge1.precision, 1.0);
    assert_eq!(c.rouge_lsum, c.rouge_l);
    assert!(c.rouge_lsum.fmeasure < 1.0);
}

//! Personal data in text: e-mail addresses, phone numbers, payment card numbers, IBANs,
//! IP addresses, URLs, Chinese resident ID numbers and Chinese mobile numbers, found by
//! pattern and confirmed by checksum where the format has one (Luhn for cards, ISO 7064
//! mod 97-10 for IBANs, GB 11643 for resident IDs, with a real birth date), so that
//! look-alikes (order numbers, failed checksums, impossible dates, octets above 255)
//! are left alone. Text needs no spaces around a match (Chinese has none): a match
//! only may not continue a run of the same kind of characters.

use std::sync::OnceLock;

use regex::Regex;

use crate::{Error, Result};

/// The kinds of personal data, in the order they claim text (a URL's digits are not a
/// phone number; a resident ID is not a card).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiType {
    Url,
    Email,
    Iban,
    CnId,
    CreditCard,
    CnMobile,
    Phone,
    Ip,
}

pub const ALL: [PiiType; 8] = [
    PiiType::Url,
    PiiType::Email,
    PiiType::Iban,
    PiiType::CnId,
    PiiType::CreditCard,
    PiiType::CnMobile,
    PiiType::Phone,
    PiiType::Ip,
];

impl PiiType {
    pub fn name(self) -> &'static str {
        match self {
            PiiType::Url => "url",
            PiiType::Email => "email",
            PiiType::Iban => "iban",
            PiiType::CnId => "cn-id",
            PiiType::CreditCard => "credit-card",
            PiiType::CnMobile => "cn-mobile",
            PiiType::Phone => "phone",
            PiiType::Ip => "ip",
        }
    }

    /// The placeholder that replaces a match: `<EMAIL>`, `<CREDIT_CARD>`, ...
    pub fn placeholder(self) -> String {
        format!("<{}>", self.name().to_uppercase().replace('-', "_"))
    }

    pub fn parse(s: &str) -> Result<Self> {
        ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            Error::invalid(
                "types",
                format!(
                    "{s:?} is not a kind of personal data ({})",
                    ALL.map(|t| t.name()).join(", ")
                ),
            )
        })
    }

    /// A comma-separated list of kinds.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        let mut out: Vec<Self> = s
            .split(',')
            .map(|t| Self::parse(t.trim()))
            .collect::<Result<_>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// One match: byte range in the text, and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub ty: PiiType,
}

struct Patterns {
    url: Regex,
    email: Regex,
    iban: Regex,
    digits: Regex,
    phone: Regex,
    ipv4: Regex,
    ipv6: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let r = |s: &str| Regex::new(s).expect("valid pattern");
        Patterns {
            url: r(r"(?:(?:https?|ftp)://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+"),
            email: r(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"),
            iban: r(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?"),
            // Digit runs with single spaces or hyphens between them (cards, IDs, mobiles).
            digits: r(r"\+?[0-9](?:[ \-]?[0-9Xx])*"),
            phone: r(r"\+[0-9]{1,3}(?:[ \-.]?\(?[0-9]{1,5}\)?){2,5}|\([0-9]{3}\) ?[0-9]{3}[\-. ][0-9]{4}|[0-9]{3}[\-.][0-9]{3}[\-.][0-9]{4}"),
            ipv4: r(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"),
            ipv6: r(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"),
        }
    })
}

/// Whether the character before `at` and the one at `end` leave the match whole: neither
/// is in `cont` (the characters that would continue it).
fn bounded(text: &str, at: usize, end: usize, cont: impl Fn(char) -> bool) -> bool {
    let before = text[..at].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(&cont) && !after.is_some_and(&cont)
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = (d - b'0') as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// A card number's issuer prefix and length are those of a network (Visa, Mastercard,
/// American Express, Discover, JCB, UnionPay, Diners Club).
fn card_network(d: &[u8]) -> bool {
    let n = d.len();
    let p = |k: usize| -> u32 { std::str::from_utf8(&d[..k]).unwrap().parse().unwrap() };
    match d[0] {
        b'4' => matches!(n, 13 | 16 | 19),
        b'5' => (51..=55).contains(&p(2)) && n == 16,
        b'2' => (2221..=2720).contains(&p(4)) && n == 16,
        b'3' => match p(2) {
            34 | 37 => n == 15,
            35 => (3528..=3589).contains(&p(4)) && (16..=19).contains(&n),
            30 | 36 | 38 | 39 => (14..=19).contains(&n),
            _ => false,
        },
        b'6' => {
            (p(4) == 6011 || p(2) == 65 || (644..=649).contains(&p(3)) || p(2) == 62)
                && (16..=19).contains(&n)
        }
        _ => false,
    }
}

fn iban_length(cc: &str) -> Option<usize> {
    const L: &[(&str, usize)] = &[
        ("AD", 24),
        ("AE", 23),
        ("AT", 20),
        ("BE", 16),
        ("BG", 22),
        ("CH", 21),
        ("CY", 28),
        ("CZ", 24),
        ("DE", 22),
        ("DK", 18),
        ("EE", 20),
        ("ES", 24),
        ("FI", 18),
        ("FR", 27),
        ("GB", 22),
        ("GR", 27),
        ("HR", 21),
        ("HU", 28),
        ("IE", 22),
        ("IS", 26),
        ("IT", 27),
        ("LI", 21),
        ("LT", 20),
        ("LU", 20),
        ("LV", 21),
        ("MC", 27),
        ("MT", 31),
        ("NL", 18),
        ("NO", 15),
        ("PL", 28),
        ("PT", 25),
        ("RO", 24),
        ("SA", 24),
        ("SE", 24),
        ("SI", 19),
        ("SK", 24),
        ("SM", 27),
        ("TR", 26),
    ];
    L.iter().find(|(c, _)| *c == cc).map(|&(_, n)| n)
}

fn iban_valid(compact: &str) -> bool {
    let b = compact.as_bytes();
    if b.len() < 15 || b.len() > 34 || iban_length(&compact[..2]).is_some_and(|n| n != b.len()) {
        return false;
    }
    let mut rem = 0u32;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = if c.is_ascii_digit() {
            (c - b'0') as u32
        } else {
            (c - b'A') as u32 + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// GB 11643: 17 digits (region, birth date, sequence) and a check character.
fn cn_id_valid(s: &[u8]) -> bool {
    if s.len() != 18 || !s[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let num =
        |a: usize, b: usize| -> u32 { std::str::from_utf8(&s[a..b]).unwrap().parse().unwrap() };
    let (y, m, d) = (num(6, 10), num(10, 12), num(12, 14));
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1900..=2100).contains(&y) || !(1..=12).contains(&m) || d == 0 || d > days[m as usize - 1] {
        return false;
    }
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = s[..17]
        .iter()
        .zip(W)
        .map(|(&c, w)| (c - b'0') as u32 * w)
        .sum();
    b"10X98765432"[(sum % 11) as usize] == s[17].to_ascii_uppercase()
}

/// Every match of the `types` asked for in `text`, non-overlapping, in order of position
/// (where two kinds claim the same text, the one earlier in [`ALL`] keeps it).
pub fn find(text: &str, types: &[PiiType]) -> Vec<Span> {
    let p = patterns();
    let mut cands: Vec<Span> = Vec::new();
    let want = |t: PiiType| types.contains(&t);
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if want(PiiType::Url) {
        for m in p.url.find_iter(text) {
            let mut end = m.end();
            // Trailing punctuation ends the sentence, not the URL; a closing bracket
            // without its opening one is the text's.
            loop {
                let s = &text[m.start()..end];
                let last = s.chars().next_back().unwrap();
                let unbalanced = (last == ')' && s.matches('(').count() < s.matches(')').count())
                    || (last == ']' && s.matches('[').count() < s.matches(']').count());
                if ".,;:!?'".contains(last) || unbalanced {
                    end -= last.len_utf8();
                } else {
                    break;
                }
            }
            let after_word = text[..m.start()].chars().next_back().is_some_and(alnum);
            if end > m.start() + 4 && !after_word {
                cands.push(Span {
                    start: m.start(),
                    end,
                    ty: PiiType::Url,
                });
            }
        }
    }
    if want(PiiType::Email) {
        for m in p.email.find_iter(text) {
            let local = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-.@".contains(c);
            let domain = |c: char| c.is_ascii_alphanumeric() || "-_@".contains(c);
            let before = text[..m.start()].chars().next_back().is_some_and(local);
            let after = text[m.end()..].chars().next().is_some_and(domain);
            if !before && !after {
                cands.push(Span {
                    start: m.start(),
                    end: m.end(),
                    ty: PiiType::Email,
                });
            }
        }
    }
    if want(PiiType::Iban) {
        for m in p.iban.find_iter(text) {
            let compact: String = m.as_str().chars().filter(|c| *c != ' ').collect();
            if bounded(text, m.start(), m.end(), alnum) && iban_valid(&compact) {
                cands.push(Span {
                    start: m.start(),
                    end: m.end(),
                    ty: PiiType::Iban,
                });
            }
        }
    }
    let digit_run = |c: char| c.is_ascii_digit();
    if want(PiiType::CnId) || want(PiiType::CreditCard) || want(PiiType::CnMobile) {
        for m in p.digits.find_iter(text) {
            let s = m.as_str();
            if !bounded(text, m.start(), m.end(), |c| c.is_ascii_alphanumeric()) {
                continue;
            }
            let d: Vec<u8> = s.bytes().filter(|b| b.is_ascii_alphanumeric()).collect();
            let seps: Vec<u8> = s.bytes().filter(|b| *b == b' ' || *b == b'-').collect();
            let one_sep = seps.windows(2).all(|w| w[0] == w[1]);
            if want(PiiType::CnId) && seps.is_empty() && !s.starts_with('+') && cn_id_valid(&d) {
                cands.push(Span {
                    start: m.start(),
                    end: m.end(),
                    ty: PiiType::CnId,
                });
                continue;
            }
            if d.iter().any(|b| !b.is_ascii_digit()) {
                continue;
            }
            if want(PiiType::CreditCard)
                && !s.starts_with('+')
                && one_sep
                && (13..=19).contains(&d.len())
                && card_network(&d)
                && luhn(&d)
            {
                cands.push(Span {
                    start: m.start(),
                    end: m.end(),
                    ty: PiiType::CreditCard,
                });
                continue;
            }
            if want(PiiType::CnMobile) {
                // 1[3-9] and nine digits, as 11 digits, 3-4-4, or after +86.
                let (body, plus86) = match s.strip_prefix("+86") {
                    Some(rest) => (rest.trim_start_matches([' ', '-']), true),
                    None => (s, false),
                };
                let bd: Vec<u8> = body.bytes().filter(u8::is_ascii_digit).collect();
                let grouped = body.len() == 11
                    || (body.len() == 13
                        && body.as_bytes()[3] == b'-'
                        && body.as_bytes()[8] == b'-');
                if bd.len() == 11
                    && bd[0] == b'1'
                    && (b'3'..=b'9').contains(&bd[1])
                    && grouped
                    && (plus86 || !s.starts_with('+'))
                {
                    cands.push(Span {
                        start: m.start(),
                        end: m.end(),
                        ty: PiiType::CnMobile,
                    });
                }
            }
        }
    }
    if want(PiiType::Phone) {
        for m in p.phone.find_iter(text) {
            let mut end = m.end();
            // A closing bracket the number did not open belongs to the text.
            if text[m.start()..end].ends_with(')') && !text[m.start()..end].contains('(') {
                end -= 1;
            }
            let n = text[m.start()..end]
                .bytes()
                .filter(u8::is_ascii_digit)
                .count();
            if (10..=15).contains(&n) && bounded(text, m.start(), end, digit_run) {
                cands.push(Span {
                    start: m.start(),
                    end,
                    ty: PiiType::Phone,
                });
            }
        }
    }
    if want(PiiType::Ip) {
        for m in p.ipv4.find_iter(text) {
            let ok = m.as_str().split('.').all(|o| {
                o.parse::<u32>().is_ok_and(|v| v <= 255) && (o == "0" || !o.starts_with('0'))
            });
            // A dot around the address continues it only before or after a digit (a
            // sentence may end after one).
            let mut after = text[m.end()..].chars();
            let mut before = text[..m.start()].chars().rev();
            let cont = |it: &mut dyn Iterator<Item = char>| match it.next() {
                Some('.') => it.next().is_some_and(|c| c.is_ascii_digit()),
                Some(c) => c.is_ascii_digit(),
                None => false,
            };
            if ok && !cont(&mut after) && !cont(&mut before) {
                cands.push(Span {
                    start: m.start(),
                    end: m.end(),
                    ty: PiiType::Ip,
                });
            }
        }
        for m in p.ipv6.find_iter(text) {
            let s = m.as_str();
            let groups = s.split(':').count();
            let doubles = s.matches("::").count();
            let full = groups == 8 && doubles == 0 && s.split(':').all(|g| !g.is_empty());
            let short = doubles == 1 && groups <= 8 && !s.contains(":::");
            if (full || short)
                && bounded(text, m.start(), m.end(), |c| {
                    c.is_ascii_hexdigit() || c == ':'
                })
            {
                cands.push(Span {
                    start: m.start(),
                    end: m.end(),
                    ty: PiiType::Ip,
                });
            }
        }
    }
    // Earlier kinds claim first; then position.
    cands.sort_by_key(|s| (s.ty, s.start));
    let mut taken: Vec<Span> = Vec::new();
    for c in cands {
        if !taken.iter().any(|t| c.start < t.end && t.start < c.end) {
            taken.push(c);
        }
    }
    taken.sort_by_key(|s| s.start);
    taken
}

/// `text` with each match replaced by its kind's placeholder.
pub fn mask(text: &str, spans: &[Span]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for s in spans {
        out.push_str(&text[at..s.start]);
        out.push_str(&s.ty.placeholder());
        at = s.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn(b"4111111111111111") && !luhn(b"4111111111111112"));
        assert!(iban_valid("GB82WEST12345698765432") && !iban_valid("GB82WEST12345698765433"));
        assert!(cn_id_valid(b"11010519491231002X") && !cn_id_valid(b"110105194912310021"));
        assert!(!cn_id_valid(b"110105194902300027"), "February 30th");
    }

    #[test]
    fn matches_need_no_spaces_and_keep_their_kind() {
        let t = "访问www.example.net/a了解 邮箱a.b+c@mail.example.co.uk。卡4111 1111 1111 1111, ip 10.0.0.1";
        let s = find(t, &ALL);
        let kinds: Vec<&str> = s.iter().map(|s| s.ty.name()).collect();
        assert_eq!(kinds, ["url", "email", "credit-card", "ip"], "{s:?}");
        assert_eq!(&t[s[0].start..s[0].end], "www.example.net/a");
        assert_eq!(
            mask("mail me: x@y.io!", &find("mail me: x@y.io!", &ALL)),
            "mail me: <EMAIL>!"
        );
        assert!(find("order 4111111111111112 and 999.1.2.3", &ALL).is_empty());
    }
}

/// What `scrub` does with a line holding personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Replace each match by its kind's placeholder.
    Mask,
    /// Drop the whole line.
    RemoveLine,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "mask" => Ok(Mode::Mask),
            "remove-line" => Ok(Mode::RemoveLine),
            _ => Err(Error::invalid(
                "mode",
                format!("{s:?} is not mask or remove-line"),
            )),
        }
    }
}

/// What a scrub found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ScrubReport {
    pub lines: usize,
    pub lines_with_pii: usize,
    pub lines_removed: usize,
    /// Lines skipped as not valid UTF-8 (with `skip_invalid`; left out of the output).
    pub invalid_skipped: u64,
    /// Matches by kind.
    pub counts: std::collections::BTreeMap<String, usize>,
}

/// Scrub each of `files` line by line into `out` (same file names; the report as
/// `scrub_report.json`), streaming: the outputs appear together when every input was
/// read. With `skip_invalid`, lines that are not UTF-8 are left out and counted.
pub fn scrub(
    files: &[std::path::PathBuf],
    out: &std::path::Path,
    types: &[PiiType],
    mode: Mode,
    skip_invalid: bool,
) -> Result<ScrubReport> {
    use rayon::prelude::*;
    super::stream::output_names(files)?;
    let mut outputs = super::stream::Outputs::new(out)?;
    let mut report = ScrubReport::default();
    for f in files {
        let mut lines = super::stream::LineBatches::open(f)?.skip_invalid(skip_invalid);
        let mut buf = outputs.create(&f.file_name().unwrap().to_string_lossy())?;
        loop {
            let batch = lines.next_batch(8192)?;
            if batch.is_empty() {
                break;
            }
            let done: Vec<(Option<String>, Vec<PiiType>)> = batch
                .par_iter()
                .map(|t| {
                    let spans = find(t, types);
                    let kinds = spans.iter().map(|s| s.ty).collect();
                    let line = match (mode, spans.is_empty()) {
                        (_, true) => Some(t.clone()),
                        (Mode::Mask, false) => Some(mask(t, &spans)),
                        (Mode::RemoveLine, false) => None,
                    };
                    (line, kinds)
                })
                .collect();
            for (line, kinds) in done {
                report.lines += 1;
                if !kinds.is_empty() {
                    report.lines_with_pii += 1;
                }
                for k in kinds {
                    *report.counts.entry(k.name().to_string()).or_default() += 1;
                }
                match line {
                    Some(l) => {
                        buf.write_all(l.as_bytes())?;
                        buf.write_all(b"\n")?;
                    }
                    None => report.lines_removed += 1,
                }
            }
        }
        report.invalid_skipped += lines.skipped();
        outputs.keep(buf)?;
    }
    let json =
        serde_json::to_value(&report).map_err(|e| Error::invalid("report", e.to_string()))?;
    outputs.write_json("scrub_report.json", &json)?;
    outputs.commit()?;
    Ok(report)
}

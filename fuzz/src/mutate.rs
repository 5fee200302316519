//! Deterministic mutations of seed inputs, for the smoke tests that stand in for the
//! fuzzer in CI: byte flips, interesting bytes, truncations, deleted and repeated
//! ranges, splices of two seeds, and JSON-aware ones (numbers replaced by huge,
//! negative, fractional or out-of-range values; strings emptied, lengthened or given
//! escapes; nesting; a safetensors header length changed), stacked one to four deep.

/// SplitMix64: small, seedable, the same sequence everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Numbers that find overflow, truncation, sign and float-parsing mistakes.
pub const NUMBERS: [&str; 24] = [
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "255",
    "256",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "100000000000000000000000000000",
    "-9223372036854775808",
    "1e308",
    "1e999",
    "-0.0",
    "0.5",
    "1e-320",
];

/// String bodies for JSON strings (already escaped for JSON).
pub const STRINGS: [&str; 10] = [
    "",
    " ",
    "\\u0000",
    "\\ud800",
    "\\ud83d\\ude42",
    "\\n\\t\\r",
    "<|endoftext|>",
    "[UNK]",
    "gpt2",
    "\u{00e9}\u{65e5}",
];

/// Bytes that matter to the formats fuzzed here.
const BYTES: [u8; 16] = [
    0, 0xFF, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'\n', b'\r', b'\t', b'0', b'9', 0xC3,
];

/// Up to four stacked mutations of `seed`, with `others` for splices.
pub fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        v = mutate_once(rng, v, others);
    }
    v
}

fn mutate_once(rng: &mut Rng, mut v: Vec<u8>, others: &[Vec<u8>]) -> Vec<u8> {
    let len = v.len();
    match rng.below(13) {
        // Flip one bit.
        0 if len > 0 => {
            let i = rng.below(len);
            v[i] ^= 1 << rng.below(8);
        }
        // An interesting byte over another, or inserted.
        1 if len > 0 => {
            let i = rng.below(len);
            v[i] = *rng.pick(&BYTES);
        }
        2 => {
            let i = rng.below(len + 1);
            v.insert(i, *rng.pick(&BYTES));
        }
        // Truncate.
        3 if len > 0 => v.truncate(rng.below(len)),
        // Delete a range.
        4 if len > 1 => {
            let a = rng.below(len);
            let b = (a + 1 + rng.below(64)).min(len);
            v.drain(a..b);
        }
        // Repeat a range (up to 8 times).
        5 if len > 1 => {
            let a = rng.below(len);
            let b = (a + 1 + rng.below(32)).min(len);
            let piece = v[a..b].repeat(1 + rng.below(8));
            v.splice(b..b, piece);
        }
        // Splice: this input's head, another's tail.
        6 if !others.is_empty() => {
            let o = rng.pick(others);
            let a = rng.below(len + 1);
            let b = rng.below(o.len() + 1);
            v.truncate(a);
            v.extend_from_slice(&o[b..]);
        }
        // A JSON number replaced.
        7 | 8 => {
            if let Some((a, b)) = pick_run(rng, &v, |c| c.is_ascii_digit()) {
                let (a, b) = widen_number(&v, a, b);
                v.splice(a..b, rng.pick(&NUMBERS).bytes());
            }
        }
        // A JSON string's body replaced, or made long.
        9 => {
            if let Some((a, b)) = pick_string(rng, &v) {
                let body: Vec<u8> = if rng.below(4) == 0 {
                    b"ab".repeat(1 + rng.below(2000))
                } else {
                    rng.pick(&STRINGS).as_bytes().to_vec()
                };
                v.splice(a..b, body);
            }
        }
        // A JSON value wrapped in an array or an object, or replaced by null/true/[]/{}.
        10 => {
            if let Some((a, b)) = pick_run(rng, &v, |c| c.is_ascii_digit()).or(pick_string(rng, &v))
            {
                let (a, b) = if v.get(a.wrapping_sub(1)) == Some(&b'"') {
                    (a - 1, (b + 1).min(len))
                } else {
                    widen_number(&v, a, b)
                };
                let inner = v[a..b].to_vec();
                let new: Vec<u8> = match rng.below(6) {
                    0 => [b"[".as_slice(), &inner, b"]"].concat(),
                    1 => [b"{\"k\": ".as_slice(), &inner, b"}"].concat(),
                    2 => b"null".to_vec(),
                    3 => b"true".to_vec(),
                    4 => b"[]".to_vec(),
                    _ => b"{}".to_vec(),
                };
                v.splice(a..b, new);
            }
        }
        // The safetensors header length (the first 8 bytes after a 0xFF split, or of
        // the input) set to a neighbour of the real one or to something absurd.
        11 => {
            let at = v.iter().position(|&c| c == 0xFF).map_or(0, |i| i + 1);
            if v.len() >= at + 8 {
                let mut n = u64::from_le_bytes(v[at..at + 8].try_into().unwrap());
                n = match rng.below(5) {
                    0 => n.wrapping_add(1),
                    1 => n.wrapping_sub(1),
                    2 => n.wrapping_mul(2),
                    3 => u64::MAX >> rng.below(64),
                    _ => rng.next_u64(),
                };
                v[at..at + 8].copy_from_slice(&n.to_le_bytes());
            }
        }
        // Random bytes over a range.
        _ if len > 0 => {
            let a = rng.below(len);
            let b = (a + 1 + rng.below(8)).min(len);
            for c in &mut v[a..b] {
                *c = rng.next_u64() as u8;
            }
        }
        _ => v.push(rng.next_u64() as u8),
    }
    v
}

/// A random maximal run of bytes satisfying `f`, as `(start, end)`.
fn pick_run(rng: &mut Rng, v: &[u8], f: impl Fn(u8) -> bool) -> Option<(usize, usize)> {
    let mut runs = vec![];
    let mut i = 0;
    while i < v.len() {
        if f(v[i]) {
            let a = i;
            while i < v.len() && f(v[i]) {
                i += 1;
            }
            runs.push((a, i));
        } else {
            i += 1;
        }
    }
    (!runs.is_empty()).then(|| *rng.pick(&runs))
}

/// Grow a digit run to the whole JSON number around it (sign, fraction, exponent).
fn widen_number(v: &[u8], mut a: usize, mut b: usize) -> (usize, usize) {
    let num = |c: u8| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E');
    while a > 0 && num(v[a - 1]) {
        a -= 1;
    }
    while b < v.len() && num(v[b]) {
        b += 1;
    }
    (a, b)
}

/// The body of a random JSON string (between its quotes), as `(start, end)`.
fn pick_string(rng: &mut Rng, v: &[u8]) -> Option<(usize, usize)> {
    let mut spans = vec![];
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'"' {
            let a = i + 1;
            let mut j = a;
            while j < v.len() && v[j] != b'"' {
                j += if v[j] == b'\\' { 2 } else { 1 };
            }
            if j >= v.len() {
                break;
            }
            spans.push((a, j));
            i = j + 1;
        } else {
            i += 1;
        }
    }
    (!spans.is_empty()).then(|| *rng.pick(&spans))
}

/// Every file of `dir` (sorted by name), as `(name, bytes)`; none if it is absent.
pub fn read_dir_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                out.push((name, std::fs::read(&p).expect("read a corpus file")));
            }
        }
    }
    out.sort();
    out
}

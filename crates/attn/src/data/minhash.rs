//! MinHash signatures (Broder 1997) equal value for value to those of the `datasketch`
//! Python package, so that Jaccard estimates and near-duplicate decisions agree with
//! the tool people check against.
//!
//! A signature has one value per permutation: the smallest permuted hash over the
//! text's shingles. Each shingle is hashed as its UTF-8 bytes by SHA-1, keeping the
//! first four bytes of the digest as a little-endian `u32` (datasketch's `sha1_hash32`).
//! The permutations are datasketch's two schemes, their parameters drawn as datasketch
//! draws them, with NumPy's legacy `RandomState(seed)` (the MT19937 generator and
//! NumPy's masked rejection sampling, reproduced here):
//!
//! - [`Scheme::Affine32`] (datasketch ≥ 2.0's default): the hash goes through
//!   MurmurHash3's 32-bit finaliser, then `a·h + b mod 2³²` with odd `a`;
//! - [`Scheme::Legacy`] (datasketch before 2.0): `(a·h + b mod 2⁶¹ − 1) & (2³² − 1)`,
//!   with `a·h` wrapping modulo 2⁶⁴ as NumPy's `uint64` product does.
//!
//! `scripts/make_minhash_fixtures.py` records datasketch's signatures for the tests.

use crate::{Error, Result};

/// datasketch's permutation schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Affine32,
    Legacy,
}

impl Scheme {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "affine32" => Ok(Scheme::Affine32),
            "legacy" => Ok(Scheme::Legacy),
            _ => Err(Error::invalid(
                "scheme",
                format!("{s:?} is not a MinHash scheme (affine32 or legacy)"),
            )),
        }
    }
}

/// What a shingle is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shingle {
    /// `k` consecutive whitespace-separated words, joined by one space.
    Word,
    /// `k` consecutive characters (Unicode scalar values).
    Char,
}

impl Shingle {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "word" => Ok(Shingle::Word),
            "char" => Ok(Shingle::Char),
            _ => Err(Error::invalid(
                "shingle",
                format!("{s:?} is not a shingle kind (word or char)"),
            )),
        }
    }
}

/// The shingles of `text`: every window of `k` words or characters; a text shorter
/// than `k` is one shingle (all of it), an empty one (no words, or no characters) none.
pub fn shingles(text: &str, k: usize, kind: Shingle) -> Vec<String> {
    let k = k.max(1);
    match kind {
        Shingle::Word => {
            let words: Vec<&str> = text.split_whitespace().collect();
            if words.is_empty() {
                return Vec::new();
            }
            if words.len() < k {
                return vec![words.join(" ")];
            }
            words.windows(k).map(|w| w.join(" ")).collect()
        }
        Shingle::Char => {
            let ends: Vec<usize> = text
                .char_indices()
                .map(|(i, _)| i)
                .chain(std::iter::once(text.len()))
                .collect();
            let n = ends.len() - 1;
            if n == 0 {
                return Vec::new();
            }
            if n < k {
                return vec![text.to_string()];
            }
            (0..=n - k)
                .map(|i| text[ends[i]..ends[i + k]].to_string())
                .collect()
        }
    }
}

/// The most permutations a signature may have (datasketch's limit, 2³²).
const MAX_PERM: usize = 1 << 32;
const MERSENNE_61: u64 = (1 << 61) - 1;

/// Permutations for signatures of `num_perm` values.
#[derive(Clone, Debug)]
pub struct MinHasher {
    scheme: Scheme,
    a: Vec<u64>,
    b: Vec<u64>,
}

impl MinHasher {
    /// datasketch's `MinHash(num_perm, seed, scheme)` permutations. `seed` must fit in
    /// 32 bits, as NumPy's `RandomState` requires.
    pub fn new(num_perm: usize, seed: u64, scheme: Scheme) -> Result<Self> {
        if num_perm == 0 || num_perm > MAX_PERM {
            return Err(Error::invalid(
                "num-perm",
                format!("{num_perm} is not in 1..=2^32"),
            ));
        }
        let seed = u32::try_from(seed).map_err(|_| {
            Error::invalid(
                "seed",
                format!("{seed} is not in 0..2^32 (NumPy's seed range)"),
            )
        })?;
        crate::guard::check_memory("--num-perm (the permutations)", 16.0 * num_perm as f64)?;
        let mut mt = Mt19937::new(seed);
        let (a, b) = match scheme {
            // One (a, b) pair per permutation, each a scalar randint of uint64.
            Scheme::Legacy => (0..num_perm)
                .map(|_| {
                    let a = 1 + mt.masked_u64(MERSENNE_61 - 2);
                    let b = mt.masked_u64(MERSENNE_61 - 1);
                    (a, b)
                })
                .unzip(),
            // `a` drawn for every permutation, then `b`: randint(0, 2^31) · 2 + 1 and
            // randint(0, 2^32) as uint32 arrays.
            Scheme::Affine32 => {
                let a = (0..num_perm)
                    .map(|_| (mt.masked_u32((1 << 31) - 1) as u64) * 2 + 1)
                    .collect();
                let b = (0..num_perm).map(|_| mt.next_u32() as u64).collect();
                (a, b)
            }
        };
        Ok(MinHasher { scheme, a, b })
    }

    pub fn num_perm(&self) -> usize {
        self.a.len()
    }

    /// The permutations' parameters `(a, b)`, as datasketch's `MinHash.permutations`.
    pub fn parameters(&self) -> (&[u64], &[u64]) {
        (&self.a, &self.b)
    }

    /// The signature of a set of shingles (their UTF-8 bytes): all values `2³² − 1` for
    /// an empty set, as datasketch leaves a MinHash that saw nothing.
    pub fn signature<'s>(&self, shingles: impl IntoIterator<Item = &'s [u8]>) -> Vec<u32> {
        let mut sig = vec![u32::MAX; self.a.len()];
        for s in shingles {
            let h = sha1_hash32(s);
            match self.scheme {
                Scheme::Affine32 => {
                    let h = fmix32(h);
                    for ((m, &a), &b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                        let v = (a as u32).wrapping_mul(h).wrapping_add(b as u32);
                        *m = (*m).min(v);
                    }
                }
                Scheme::Legacy => {
                    for ((m, &a), &b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                        let v = a.wrapping_mul(h as u64).wrapping_add(b) % MERSENNE_61;
                        *m = (*m).min((v & 0xFFFF_FFFF) as u32);
                    }
                }
            }
        }
        sig
    }

    /// The signature of `text`'s shingles ([`shingles`]).
    pub fn signature_of(&self, text: &str, k: usize, kind: Shingle) -> Vec<u32> {
        let sh = shingles(text, k, kind);
        self.signature(sh.iter().map(|s| s.as_bytes()))
    }
}

/// The Jaccard estimate of two signatures: the fraction of equal values.
pub fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len(), "signatures of different lengths");
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len() as f64
}

/// The first four bytes of the SHA-1 digest of `data`, little-endian.
fn sha1_hash32(data: &[u8]) -> u32 {
    use sha1::{Digest, Sha1};
    let d = Sha1::digest(data);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

/// MurmurHash3's 32-bit finaliser.
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

/// The Mersenne Twister MT19937 (Matsumoto & Nishimura 1998) as NumPy's legacy
/// `RandomState(seed)` seeds and draws it.
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7FFF_FFFF);
                let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_B0DF;
                }
                self.state[i] = v;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9D2C_5680;
        y ^= (y << 15) & 0xEFC6_0000;
        y ^ (y >> 18)
    }

    /// NumPy's 64-bit draw: the first 32-bit draw is the high half.
    fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        (hi << 32) | self.next_u32() as u64
    }

    /// A value in `0..=rng` by NumPy's masked rejection (the legacy `randint`).
    fn masked_u32(&mut self, rng: u32) -> u32 {
        if rng == u32::MAX {
            return self.next_u32();
        }
        let mask = u32::MAX >> rng.leading_zeros();
        loop {
            let v = self.next_u32() & mask;
            if v <= rng {
                return v;
            }
        }
    }

    /// A value in `0..=rng` as NumPy draws a `uint64` (32-bit draws for a range that
    /// fits in 32 bits).
    fn masked_u64(&mut self, rng: u64) -> u64 {
        if let Ok(r) = u32::try_from(rng) {
            return self.masked_u32(r) as u64;
        }
        let mask = u64::MAX >> rng.leading_zeros();
        loop {
            let v = self.next_u64() & mask;
            if v <= rng {
                return v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_gives_the_reference_sequence() {
        // The reference implementation's first outputs for init_genrand(5489), its
        // default seed (mt19937ar.c), which NumPy's RandomState(5489) also gives.
        let mut mt = Mt19937::new(5489);
        let first: Vec<u32> = (0..3).map(|_| mt.next_u32()).collect();
        assert_eq!(first, [3499211612, 581869302, 3890346734]);
    }

    #[test]
    fn shingles_follow_the_rules() {
        assert_eq!(
            shingles("a  b\tc d", 2, Shingle::Word),
            ["a b", "b c", "c d"]
        );
        assert_eq!(shingles("a b", 5, Shingle::Word), ["a b"]);
        assert!(shingles("   ", 2, Shingle::Word).is_empty());
        assert_eq!(shingles("héllo", 4, Shingle::Char), ["héll", "éllo"]);
        assert_eq!(shingles("ab", 3, Shingle::Char), ["ab"]);
        assert!(shingles("", 3, Shingle::Char).is_empty());
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(MinHasher::new(0, 1, Scheme::Affine32).is_err());
        assert!(MinHasher::new(8, 1 << 32, Scheme::Legacy).is_err());
        let m = MinHasher::new(16, 1, Scheme::Affine32).unwrap();
        assert_eq!(m.signature(std::iter::empty()), vec![u32::MAX; 16]);
    }
}

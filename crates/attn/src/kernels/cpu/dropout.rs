//! Inverted dropout whose mask is a counter-based hash of (site seed, element index):
//! the backward pass recomputes the mask instead of storing it, and any thread computes
//! the same mask for the same element.

use rayon::prelude::*;

use super::vmath::dispatch;

/// Inverted dropout drawn from a counter-based hash: element `i` of a site is kept (and
/// scaled by `1/(1−p)`) or zeroed by a hash of `(seed, i)`, so a mask is recomputed in the
/// backward pass instead of stored, and is the same whichever thread computes it.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    /// Per-site seed (see [`Dropout::site`]).
    pub seed: u64,
    /// Elements whose hash's top 32 bits fall below this are dropped (`p · 2³²`).
    threshold: u64,
    /// `1/(1−p)`.
    scale: f32,
}

impl Dropout {
    /// Dropout with probability `p` for the masks of one step drawn from `seed`; `None`
    /// when `p` is zero.
    pub fn new(p: f32, seed: u64) -> Option<Self> {
        (p > 0.0).then(|| Dropout {
            seed,
            threshold: (p as f64 * 4294967296.0) as u64,
            scale: 1.0 / (1.0 - p),
        })
    }

    /// The same dropout for another site (layer and place), with its own masks.
    pub fn site(self, site: u64) -> Self {
        Dropout {
            seed: mix(self.seed ^ mix(site.wrapping_add(0x5151_5151))),
            ..self
        }
    }

    /// The masks from element `by` on: element `i` of the result is element `by + i`
    /// here (a shard of a batch). The counter is the seed's low half, so the shift moves
    /// it alone.
    pub fn shifted(self, by: u64) -> Self {
        Dropout {
            seed: (self.seed & !0xFFFF_FFFF) | self.counter(by) as u64,
            ..self
        }
    }

    /// Element `i`'s counter: the seed's low half plus `i` steps (mod 2³²).
    #[inline(always)]
    fn counter(&self, i: u64) -> u32 {
        (self.seed as u32).wrapping_add((i as u32).wrapping_mul(STEP))
    }

    /// The hash of a counter, keyed with the seed's high half.
    #[inline(always)]
    fn hash(&self, z: u32) -> u32 {
        mix32(z ^ (self.seed >> 32) as u32)
    }

    /// The drop threshold on the hash's top 32 bits (`p · 2³²`), for other backends.
    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    /// The factor kept elements are scaled by, `1/(1−p)`.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The mask value of element `i`: 0 or `1/(1−p)`. The hash is 32 bits wide (a
    /// counter, the seed's low half plus `i` steps, keyed with its high half, through a
    /// 32-bit finaliser): 32-bit multiplies are one instruction in AVX2 and AVX-512F,
    /// where SplitMix64's 64-bit ones cost three each and the mask had cost 0.9 ns an
    /// element. Sites' seeds still come from the 64-bit mix. The CUDA kernel computes the
    /// same bits.
    #[inline(always)]
    pub fn factor(&self, i: u64) -> f32 {
        if (self.hash(self.counter(i)) as u64) < self.threshold {
            0.0
        } else {
            self.scale
        }
    }
}

/// The counter's step: 2³² over the golden ratio, odd (every step distinct mod 2³²).
const STEP: u32 = 0x9E37_79B9;

/// A 32-bit finaliser (xor-shifts and two odd multipliers: every bit of the input
/// reaches every bit of the output).
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// SplitMix64's finaliser.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline(always)]
fn drop_body(x: &mut [f32], d: Dropout, first: u64) {
    // The counter and the comparison in 32-bit lanes (eight to an AVX2 register; the
    // 64-bit index of `factor` would halve that).
    let all = d.threshold > u32::MAX as u64;
    let thr = d.threshold.min(u32::MAX as u64) as u32;
    let mut z = d.counter(first);
    for v in x.iter_mut() {
        *v *= if d.hash(z) < thr || all { 0.0 } else { d.scale };
        z = z.wrapping_add(STEP);
    }
}
dispatch!(
    /// `x[i] ← x[i] · mask(first + i)`.
    drop_row = drop_body, drop512, drop256, (x: &mut [f32], d: Dropout, first: u64) -> ()
);

/// `out = x ⊙ mask` over whole buffers (element `i` of `x` is mask element `i`), on both
/// cores.
pub fn dropout_into(x: &[f32], d: Dropout, out: &mut [f32]) {
    const CH: usize = 1 << 14;
    out[..x.len()]
        .par_chunks_mut(CH)
        .enumerate()
        .for_each(|(c, o)| {
            o.copy_from_slice(&x[c * CH..c * CH + o.len()]);
            drop_row(o, d, (c * CH) as u64);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_masks_drop_the_asked_fraction_and_repeat() {
        for p in [0.1f32, 0.5] {
            let d = Dropout::new(p, 42).unwrap().site(3);
            let n = 200_000u64;
            let dropped = (0..n).filter(|&i| d.factor(i) == 0.0).count() as f64 / n as f64;
            assert!(
                (dropped - p as f64).abs() < 0.005,
                "p {p}: dropped {dropped}"
            );
            assert!((0..n).all(|i| d.factor(i) == 0.0 || d.factor(i) == 1.0 / (1.0 - p)));
            // The vectorised row form gives the same mask as the scalar one.
            let mut row = vec![1f32; 1000];
            drop_row(&mut row, d, 5000);
            for (i, v) in row.iter().enumerate() {
                assert_eq!(*v, d.factor(5000 + i as u64));
            }
            // Other sites and seeds: other masks.
            let e = Dropout::new(p, 42).unwrap().site(4);
            let f = Dropout::new(p, 43).unwrap().site(3);
            let same = |a: Dropout, b: Dropout| (0..1000).all(|i| a.factor(i) == b.factor(i));
            assert!(!same(d, e) && !same(d, f));
        }
        assert!(Dropout::new(0.0, 1).is_none());
    }
}

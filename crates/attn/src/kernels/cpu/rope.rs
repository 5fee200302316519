//! Rotary position embeddings: tables in transformers' arithmetic, and the rotation of
//! the query and key heads in place (the inverse rotation is its backward).

use rayon::prelude::*;

use super::attention::Heads;
use super::rows_per_task;

// ---------------------------------------------------------------- rotary positions

/// How the rotary frequencies are stretched for contexts longer than the model was
/// first trained on (transformers' `rope_type`; the attention scale is 1 for all of them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `theta^(−2i/dim)`.
    None,
    /// Every frequency divided by `factor` (positions interpolated).
    Linear { factor: f64 },
    /// Llama 3.1's: wavelengths longer than `original / low_freq_factor` divided by
    /// `factor`, shorter than `original / high_freq_factor` kept, and a smooth blend
    /// between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original: usize,
    },
    /// Dynamic NTK: a sequence of `len > original` positions uses the base
    /// `theta · (factor·len/original − (factor − 1))^(dim/(dim−2))`, computed for the
    /// positions of each call (as transformers does: keys already cached keep the
    /// rotation they were given).
    Dynamic { factor: f64, original: usize },
}

/// Rotary positions: the base and its scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    pub fn plain(theta: f64) -> Self {
        Rope {
            theta,
            scaling: RopeScaling::None,
        }
    }

    /// Whether a sequence of `len` positions needs frequencies of its own (dynamic NTK
    /// past the original context).
    pub fn stretches(&self, len: usize) -> bool {
        matches!(self.scaling, RopeScaling::Dynamic { original, .. } if len > original)
    }

    /// Rows the model's own table needs for a context of `context` positions: with
    /// dynamic scaling, a sequence past the original context gets tables of its own, so
    /// the shared one stops there.
    pub fn table_rows(&self, context: usize) -> usize {
        match self.scaling {
            RopeScaling::Dynamic { original, .. } => context.min(original),
            _ => context,
        }
    }

    /// The inverse frequencies of heads `dim` wide for a sequence of `len` positions
    /// (computed in f64 and rounded to f32, where transformers keeps them).
    pub fn inv_freq(&self, dim: usize, len: usize) -> Vec<f32> {
        let base = match self.scaling {
            RopeScaling::Dynamic { factor, original } if len > original => {
                let d = dim as f64;
                self.theta
                    * (factor * len as f64 / original as f64 - (factor - 1.0)).powf(d / (d - 2.0))
            }
            _ => self.theta,
        };
        let plain = (0..dim / 2).map(|i| (1.0 / base.powf(2.0 * i as f64 / dim as f64)) as f32);
        match self.scaling {
            RopeScaling::None | RopeScaling::Dynamic { .. } => plain.collect(),
            RopeScaling::Linear { factor } => plain.map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original,
            } => {
                let old = original as f64;
                let (low_wave, high_wave) = (old / low_freq_factor, old / high_freq_factor);
                plain
                    .map(|f| {
                        let f = f as f64;
                        let wave = 2.0 * std::f64::consts::PI / f;
                        let g = if wave > low_wave {
                            f / factor
                        } else if wave < high_wave {
                            f
                        } else {
                            let s = (old / wave - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - s) * f / factor + s * f
                        };
                        g as f32
                    })
                    .collect()
            }
        }
    }
}

/// Rotary tables for positions `first..first + n`: `cos`, `sin` `[n, dim / 2]` (the
/// angle `position · frequency` in f32, as transformers computes it).
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
    /// The first position the table holds.
    pub first: usize,
}

impl RopeTable {
    /// The tables for `n` positions of heads `dim` wide, with the frequencies of a
    /// sequence no longer than the original context; sized by a config alone, so their
    /// memory is checked first (`what` names the setting in the error).
    pub fn new(dim: usize, n: usize, rope: &Rope, what: &str) -> crate::Result<Self> {
        crate::guard::check_memory(what, 2.0 * n as f64 * (dim / 2) as f64 * 4.0)?;
        Ok(Self::span(dim, 0..n, &rope.inv_freq(dim, 0)))
    }

    /// The tables for `positions` of a sequence `len` long (dynamic NTK frequencies
    /// when it is past the original context).
    pub fn for_len(dim: usize, positions: std::ops::Range<usize>, len: usize, rope: &Rope) -> Self {
        Self::span(dim, positions, &rope.inv_freq(dim, len))
    }

    fn span(dim: usize, positions: std::ops::Range<usize>, inv: &[f32]) -> Self {
        let half = dim / 2;
        let first = positions.start;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for pos in positions {
            for f in inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        RopeTable {
            cos,
            sin,
            half,
            first,
        }
    }

    /// Rotate each `2·half`-long head in `x` to position `pos` (the pairs `(i, i + half)`,
    /// transformers' rotate-half form); `inverse` rotates back, which is the backward
    /// pass (the rotation's transpose).
    pub fn rotate(&self, x: &mut [f32], pos: usize, inverse: bool) {
        let h = self.half;
        let at = (pos - self.first) * h;
        let (cos, sin) = (&self.cos[at..][..h], &self.sin[at..][..h]);
        let sign = if inverse { -1.0 } else { 1.0 };
        for head in x.chunks_exact_mut(2 * h) {
            let (a, b) = head.split_at_mut(h);
            for i in 0..h {
                let (x1, x2, s) = (a[i], b[i], sign * sin[i]);
                a[i] = x1 * cos[i] - x2 * s;
                b[i] = x2 * cos[i] + x1 * s;
            }
        }
    }
}

/// Rotary positions on the queries and keys of `qkv [m, heads.width()]` in place; row
/// `r` is position `r % t`. With `inverse`, the backward pass on their gradients.
pub fn rope(qkv: &mut [f32], m: usize, t: usize, heads: Heads, table: &RopeTable, inverse: bool) {
    let w = heads.width();
    let rot = (heads.n + heads.kv) * heads.dim;
    let per = rows_per_task(m, w);
    qkv[..m * w]
        .par_chunks_mut(per * w)
        .enumerate()
        .for_each(|(c, rows)| {
            for (i, row) in rows.chunks_mut(w).enumerate() {
                table.rotate(&mut row[..rot], (c * per + i) % t, inverse);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rotation by table equals the textbook rotate-half form computed in f64, and
    /// the inverse rotation undoes it.
    #[test]
    fn rope_rotates_pairs_half_a_head_apart() {
        let rope = RopeTable::new(8, 16, &Rope::plain(100.0), "test").unwrap();
        let x: Vec<f32> = (0..16).map(|i| 0.3 * i as f32 - 1.0).collect();
        for pos in [0, 1, 7, 15] {
            let mut got = x.clone();
            rope.rotate(&mut got, pos, false);
            for head in 0..2 {
                for i in 0..4 {
                    let (a, b) = (head * 8 + i, head * 8 + i + 4);
                    let f = 1.0 / 100f64.powf(2.0 * i as f64 / 8.0);
                    let (c, s) = ((pos as f64 * f).cos(), (pos as f64 * f).sin());
                    let (x1, x2) = (x[a] as f64, x[b] as f64);
                    assert!(
                        (got[a] as f64 - (x1 * c - x2 * s)).abs() < 1e-5,
                        "pos {pos} i {i}"
                    );
                    assert!((got[b] as f64 - (x2 * c + x1 * s)).abs() < 1e-5);
                }
            }
            rope.rotate(&mut got, pos, true);
            for (g, w) in got.iter().zip(&x) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "pos {pos}: the inverse gives {g}, not {w}"
                );
            }
        }
    }
}

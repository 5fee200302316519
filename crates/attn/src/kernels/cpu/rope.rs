//! Rotary position embeddings: tables in transformers' arithmetic, and the rotation of
//! the query and key heads in place (the inverse rotation is its backward).

use rayon::prelude::*;

use super::attention::Heads;
use super::rows_per_task;

// ---------------------------------------------------------------- rotary positions

/// Rotary tables for positions `0..n`: `cos`, `sin` `[n, dim / 2]`, frequencies
/// `theta^(−2i/dim)` (transformers' arithmetic: the frequency in f32 from an f64 power,
/// the angle in f32).
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl RopeTable {
    /// The tables for `n` positions of heads `dim` wide; sized by a config alone, so
    /// their memory is checked first (`what` names the setting in the error).
    pub fn new(dim: usize, n: usize, theta: f64, what: &str) -> crate::Result<Self> {
        let half = dim / 2;
        crate::guard::check_memory(what, 2.0 * n as f64 * half as f64 * 4.0)?;
        let inv: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf(2.0 * i as f64 / dim as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            for f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(RopeTable { cos, sin, half })
    }

    /// Rotate each `2·half`-long head in `x` to position `pos` (the pairs `(i, i + half)`,
    /// transformers' rotate-half form); `inverse` rotates back, which is the backward
    /// pass (the rotation's transpose).
    pub fn rotate(&self, x: &mut [f32], pos: usize, inverse: bool) {
        let h = self.half;
        let (cos, sin) = (&self.cos[pos * h..][..h], &self.sin[pos * h..][..h]);
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
        let rope = RopeTable::new(8, 16, 100.0, "test").unwrap();
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

//! Weight matrices for inference in four storage types, and the matrix products over them.
//!
//! A [`QMatrix`] is `[rows, cols]` with one output per row (`y = W x`). Storage types:
//! - `F32` and `F16` (IEEE half, converted in registers with F16C) in column panels of 32
//!   rows ([`super::panel`], [`super::half`]), which a product streams front to back;
//! - `Q8`: blocks of 32 weights along a row, each an `i8` in −127..=127 times one f16
//!   scale per block (`max|w| / 127`): 34 bytes per 32 weights;
//! - `Q4`: blocks of 32, each a 4-bit code 0..=15 standing for `(code − 8) · d` with the
//!   f16 scale `d = w_max / −8` (`w_max` the weight of largest magnitude, sign kept),
//!   two codes per byte (element `i` in the low nibble of byte `i`, element `i + 16` in the
//!   high nibble): 18 bytes per 32 weights.
//!
//! The quantized types are row-major, so a product reads each row once, front to back.
//! Codes and scales are kept in two separate arrays, so that eight scales convert with
//! one instruction. For the quantized types the input vector is itself quantized to 8
//! bits per block of 32 (scale `max|x| / 127`) and each block's dot product is done in
//! integers (AVX2 `maddubs`/`madd`), then scaled.
//!
//! Why one file of this length: the storage formats, their quantizers and their dot
//! products (scalar, AVX2 and AVX-512 VNNI for each of 8-bit and 4-bit) must agree
//! on one block layout; keeping them together is what keeps them agreeing.

use half::f16;
use rayon::prelude::*;

use super::huge::HugeVec;
use crate::{Error, Result};

/// Weights per quantization block.
pub const QK: usize = 32;

/// How a weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
    Q8,
    Q4,
}

impl WeightType {
    /// Parse `f32`, `f16`, `q8` (`q8_0`) or `q4` (`q4_0`).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => WeightType::F32,
            "f16" | "float16" => WeightType::F16,
            "q8" | "q8_0" => WeightType::Q8,
            "q4" | "q4_0" => WeightType::Q4,
            other => {
                return Err(Error::invalid(
                    "dtype",
                    format!("{other:?} is not one of f32, f16, q8, q4"),
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::Q8 => "q8_0",
            WeightType::Q4 => "q4_0",
        }
    }

    /// The arithmetic of a prompt's products with weights of this type on this CPU:
    /// `"bf16"` for 8- and 4-bit weights where AVX-512 BF16 runs them, else `"f32"`.
    pub fn prompt_arithmetic(self) -> &'static str {
        if self.is_quantized() && super::bf16::available() {
            "bf16"
        } else {
            "f32"
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, WeightType::Q8 | WeightType::Q4)
    }

    /// Bytes of one stored row of `cols` weights.
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            WeightType::F32 => 4 * cols,
            WeightType::F16 => 2 * cols,
            WeightType::Q8 => cols / QK * (QK + 2),
            WeightType::Q4 => cols / QK * (QK / 2 + 2),
        }
    }
}

/// The stored values of a [`QMatrix`].
#[derive(Clone)]
pub enum Data {
    /// Panels of 32 rows, `[cols][32]` each (see [`super::panel`]).
    F32(HugeVec<f32>),
    /// IEEE half bits in the same panels (see [`super::half`]).
    F16(HugeVec<u16>),
    /// Codes `[rows · cols]` and f16 scale bits `[rows · cols / 32]`.
    Q8 { qs: HugeVec<i8>, d: Vec<u16> },
    /// Packed codes `[rows · cols / 2]` and f16 scale bits `[rows · cols / 32]`.
    Q4 { qs: HugeVec<u8>, d: Vec<u16> },
}

/// A `[rows, cols]` weight matrix (one output per row).
#[derive(Clone)]
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Data,
}

/// The panels of row-major `values` `[rows, cols]` in a buffer of their own (huge
/// pages: decoding streams every weight at every token).
fn packed(values: &[f32], rows: usize, cols: usize) -> HugeVec<f32> {
    let mut out = HugeVec::zeroed(super::panel::packed_len(rows, cols));
    super::panel::pack_into(values, rows, cols, &mut out);
    out
}

/// Row-major `v` `[rows, cols]` as f32 or f16 panels (`ty` one of the two).
fn float_data(v: &[f32], rows: usize, cols: usize, ty: WeightType) -> Data {
    match ty {
        WeightType::F16 => Data::F16(super::half::pack(v, rows, cols)),
        _ => Data::F32(packed(v, rows, cols)),
    }
}

impl QMatrix {
    /// Store row-major f32 values `[rows, cols]` as `ty`. The quantized types need `cols`
    /// to be a multiple of 32.
    pub fn from_f32(values: &[f32], rows: usize, cols: usize, ty: WeightType) -> Result<Self> {
        if values.len() != rows * cols {
            return Err(Error::invalid(
                "weights",
                format!("{} values for a {rows}×{cols} matrix", values.len()),
            ));
        }
        if ty.is_quantized() && !cols.is_multiple_of(QK) {
            return Err(Error::invalid(
                "dtype",
                format!(
                    "{} needs rows whose length is a multiple of {QK}; this matrix has {cols}",
                    ty.name()
                ),
            ));
        }
        let data = match ty {
            WeightType::F32 | WeightType::F16 => float_data(values, rows, cols, ty),
            WeightType::Q8 => {
                let mut qs = HugeVec::<i8>::zeroed(values.len());
                let mut d = vec![0u16; values.len() / QK];
                qs.par_chunks_mut(QK)
                    .zip(d.par_iter_mut())
                    .zip(values.par_chunks(QK))
                    .for_each(|((q, d), x)| *d = quantize_q8_block(x, q));
                Data::Q8 { qs, d }
            }
            WeightType::Q4 => {
                let mut qs = HugeVec::<u8>::zeroed(values.len() / 2);
                let mut d = vec![0u16; values.len() / QK];
                qs.par_chunks_mut(QK / 2)
                    .zip(d.par_iter_mut())
                    .zip(values.par_chunks(QK))
                    .for_each(|((q, d), x)| *d = quantize_q4_block(x, q));
                Data::Q4 { qs, d }
            }
        };
        Ok(QMatrix { rows, cols, data })
    }

    pub fn weight_type(&self) -> WeightType {
        match self.data {
            Data::F32(_) => WeightType::F32,
            Data::F16(_) => WeightType::F16,
            Data::Q8 { .. } => WeightType::Q8,
            Data::Q4 { .. } => WeightType::Q4,
        }
    }

    /// Bytes of weights read by one product.
    pub fn bytes(&self) -> usize {
        self.rows * self.weight_type().row_bytes(self.cols)
    }

    /// Row `r` as f32 values, written to `out` (`cols` long).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        for (k, tile) in out[..self.cols].chunks_mut(QK).enumerate() {
            self.tile_row(r, k * QK, tile);
        }
    }

    /// Rows `32p..32p+32` as one f32 panel `[cols][32]` (zeros past the last row), for
    /// the panel product: 32×32 tiles are expanded row by row, then transposed in cache.
    pub(crate) fn fill_panel(&self, p: usize, panel: &mut [f32]) {
        const T: usize = 32;
        let (rows, cols) = (self.rows, self.cols);
        if let Data::F16(h) = &self.data {
            // Already in panel order: one conversion pass.
            return super::half::expand(&h[p * cols * T..(p + 1) * cols * T], panel);
        }
        let r0 = p * T;
        let valid = T.min(rows - r0);
        assert!(panel.len() >= cols * T);
        #[cfg(target_arch = "x86_64")]
        if super::isa() == super::Isa::Avx2 && avx2() && self.weight_type().is_quantized() {
            // SAFETY: AVX2, FMA and F16C were detected; the matrix is quantized, with
            // rows r0..r0 + valid and cols a multiple of 32; the panel's length was
            // asserted.
            return unsafe { avx::fill_quantized(&self.data, cols, r0, valid, panel.as_mut_ptr()) };
        }
        let mut tile = [[0f32; T]; T];
        let isa = super::isa();
        let side = super::panel::transpose_side(isa);
        assert!(panel.len() >= cols * T);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = side;
        for c0 in (0..cols).step_by(T) {
            let width = T.min(cols - c0);
            for (j, t) in tile.iter_mut().enumerate() {
                if j < valid {
                    self.tile_row(r0 + j, c0, &mut t[..width]);
                } else {
                    *t = [0.0; T];
                }
            }
            #[cfg(target_arch = "x86_64")]
            if side > 0 && width == T {
                for i0 in (0..T).step_by(side) {
                    for j0 in (0..T).step_by(side) {
                        // SAFETY: the tile is T × T and panel rows c0..c0 + T ≤ cols hold
                        // T values each (asserted above); the ISA was detected.
                        unsafe {
                            super::panel::transpose_block(
                                isa,
                                tile.as_ptr().cast::<f32>().add(j0 * T + i0),
                                T,
                                panel.as_mut_ptr().add((c0 + i0) * T + j0),
                                T,
                            )
                        }
                    }
                }
                continue;
            }
            for i in 0..width {
                let dst: &mut [f32] = &mut panel[(c0 + i) * T..(c0 + i + 1) * T];
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = tile[j][i];
                }
            }
        }
    }

    /// The codes [`Self::fill_panel`] reads for panel `p` (rows `32p..32p+32`, which
    /// are contiguous; the scales, 1/16 of the bytes for 8 bits, are left out; for f16,
    /// the panel).
    pub(crate) fn panel_source(&self, p: usize) -> &[u8] {
        let c = self.cols;
        let r0 = (p * QK).min(self.rows);
        let r1 = (r0 + QK).min(self.rows);
        use super::panel::bytes_of;
        match &self.data {
            Data::F32(_) => &[],
            Data::F16(v) => {
                let end = ((p + 1) * c * QK).min(v.len());
                bytes_of(&v[(p * c * QK).min(end)..end])
            }
            Data::Q8 { qs, .. } => bytes_of(&qs[r0 * c..r1 * c]),
            Data::Q4 { qs, .. } => &qs[r0 * c / 2..r1 * c / 2],
        }
    }

    /// Elements `c0..c0 + out.len()` of row `r` as f32 (for the quantized types `c0` is
    /// a block start and the length one block, which is how `row_to_f32` and
    /// `fill_panel` call it).
    pub(crate) fn tile_row(&self, r: usize, c0: usize, out: &mut [f32]) {
        let c = self.cols;
        #[cfg(target_arch = "x86_64")]
        if avx2() && out.len() == QK {
            // SAFETY: the features were detected; each source holds the block (the
            // indices are those of the portable code below, which checks them).
            unsafe {
                match &self.data {
                    Data::F32(_) | Data::F16(_) => {}
                    Data::Q8 { qs, d } => {
                        let b = (r * c + c0) / QK;
                        let src = &qs[b * QK..(b + 1) * QK];
                        return avx::expand_q8(src.as_ptr(), d[b], out.as_mut_ptr());
                    }
                    Data::Q4 { qs, d } => {
                        let b = (r * c + c0) / QK;
                        let src = &qs[b * QK / 2..(b + 1) * QK / 2];
                        return avx::expand_q4(src.as_ptr(), d[b], out.as_mut_ptr());
                    }
                }
            }
        }
        self.tile_row_portable(r, c0, out)
    }

    /// [`Self::tile_row`] without SIMD: the reference the SIMD expansion is tested against.
    fn tile_row_portable(&self, r: usize, c0: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.data {
            Data::F32(v) => super::panel::unpack_range(v, c, r, c0, out),
            Data::F16(v) => super::half::unpack_range(v, c, r, c0, out),
            Data::Q8 { qs, d } => {
                let s = f16::from_bits(d[(r * c + c0) / QK]).to_f32();
                for (o, &q) in out.iter_mut().zip(&qs[r * c + c0..r * c + c0 + QK]) {
                    *o = q as f32 * s;
                }
            }
            Data::Q4 { qs, d } => {
                let b = (r * c + c0) / QK;
                let s = f16::from_bits(d[b]).to_f32();
                let q = &qs[b * QK / 2..(b + 1) * QK / 2];
                let (lo, hi) = out.split_at_mut(QK / 2);
                for i in 0..QK / 2 {
                    lo[i] = ((q[i] & 15) as i32 - 8) as f32 * s;
                    hi[i] = ((q[i] >> 4) as i32 - 8) as f32 * s;
                }
            }
        }
    }

    /// Rows `r0..r1` as a matrix of their own (the same weight type, the same values).
    pub fn row_range(&self, r0: usize, r1: usize) -> QMatrix {
        let (rows, cols) = (r1 - r0, self.cols);
        let data = match &self.data {
            Data::F32(_) | Data::F16(_) => {
                // Panels start at multiples of 32 rows: packed again (f16 values convert
                // to f32 and back exactly).
                let mut v = vec![0f32; rows * cols];
                for (i, o) in v.chunks_mut(cols.max(1)).enumerate() {
                    self.row_to_f32(r0 + i, o);
                }
                float_data(&v, rows, cols, self.weight_type())
            }
            Data::Q8 { qs, d } => Data::Q8 {
                qs: HugeVec::from_slice(&qs[r0 * cols..r1 * cols]),
                d: d[r0 * cols / QK..r1 * cols / QK].to_vec(),
            },
            Data::Q4 { qs, d } => Data::Q4 {
                qs: HugeVec::from_slice(&qs[r0 * cols / 2..r1 * cols / 2]),
                d: d[r0 * cols / QK..r1 * cols / QK].to_vec(),
            },
        };
        QMatrix { rows, cols, data }
    }

    /// The rows of `parts` stacked in order; all must have the same columns and type.
    pub fn concat_rows(parts: &[QMatrix]) -> Result<QMatrix> {
        let first = parts
            .first()
            .ok_or_else(|| Error::invalid("weights", "no matrices to stack"))?;
        let (cols, ty) = (first.cols, first.weight_type());
        if parts.len() == 1 {
            return Ok(first.clone());
        }
        if let Some(p) = parts
            .iter()
            .find(|p| p.cols != cols || p.weight_type() != ty)
        {
            return Err(Error::invalid(
                "weights",
                format!(
                    "cannot stack a {} {}×{} matrix under {} ones of {cols} columns",
                    p.weight_type().name(),
                    p.rows,
                    p.cols,
                    ty.name()
                ),
            ));
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let data = match ty {
            WeightType::F32 | WeightType::F16 => {
                let v: Vec<f32> = parts.iter().flat_map(|p| p.to_f32()).collect();
                float_data(&v, rows, cols, ty)
            }
            WeightType::Q8 | WeightType::Q4 => {
                let (mut codes8, mut codes4, mut scales) = (Vec::new(), Vec::new(), Vec::new());
                for p in parts {
                    match &p.data {
                        Data::Q8 { qs, d } => {
                            codes8.push(&qs[..]);
                            scales.extend_from_slice(d);
                        }
                        Data::Q4 { qs, d } => {
                            codes4.push(&qs[..]);
                            scales.extend_from_slice(d);
                        }
                        _ => unreachable!("checked: all of one quantized type"),
                    }
                }
                if ty == WeightType::Q8 {
                    Data::Q8 {
                        qs: HugeVec::concat(&codes8),
                        d: scales,
                    }
                } else {
                    Data::Q4 {
                        qs: HugeVec::concat(&codes4),
                        d: scales,
                    }
                }
            }
        };
        Ok(QMatrix { rows, cols, data })
    }

    /// All values as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1))
            .enumerate()
            .for_each(|(r, o)| self.row_to_f32(r, o));
        out
    }
}

/// Quantize 32 values to `i8` codes; returns the f16 scale bits.
fn quantize_q8_block(x: &[f32], q: &mut [i8]) -> u16 {
    f16::from_f32(quantize_8bit(x, q)).to_bits()
}

/// Codes `round(x · 127 / max|x|)` into `q`; returns the scale `max|x| / 127`.
fn quantize_8bit(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round_code(v * inv);
    }
    amax / 127.0
}

/// `y.round().clamp(−127, 127) as i8` (halves away from zero, NaN to 0) without calling
/// `roundf`: the truncation and the exact remainder `y − trunc(y)` are plain SSE2, so
/// loops over it vectorize (decoding quantizes every product's input, and a call per
/// value took 3% of a 4-bit decoding step, on one thread while the other waited).
#[inline(always)]
fn round_code(y: f32) -> i8 {
    let y = y.clamp(-128.0, 128.0);
    let t = y as i32;
    let rest = y - t as f32;
    let r = t + (rest >= 0.5) as i32 - (rest <= -0.5) as i32;
    r.clamp(-127, 127) as i8
}

/// Quantize 32 values to packed 4-bit codes; returns the f16 scale bits.
///
/// The scale is chosen for the least squared error: starting from `w_max / −8` (which
/// represents the largest weight exactly), a few nearby scales are tried, each refitted
/// by least squares to its own codes, and the best is kept.
fn quantize_q4_block(x: &[f32], q: &mut [u8]) -> u16 {
    let wmax = x
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if wmax == 0.0 {
        q.iter_mut().for_each(|b| *b = 0x88);
        return f16::from_f32(0.0).to_bits();
    }
    let codes = |d: f32| -> [i32; QK] {
        let inv = 1.0 / d;
        let mut c = [0i32; QK];
        for (c, &v) in c.iter_mut().zip(x) {
            *c = ((v * inv + 8.5).floor() as i32).clamp(0, 15) - 8;
        }
        c
    };
    let error = |d: f32, c: &[i32; QK]| -> f32 {
        x.iter()
            .zip(c)
            .map(|(&v, &k)| (v - k as f32 * d).powi(2))
            .sum()
    };
    // The scale as stored (f16), so that the error measured is the error obtained.
    let round = |d: f32| f16::from_f32(d).to_f32();
    let mut best_d = round(wmax / -8.0);
    let mut best_c = codes(best_d);
    let mut best_e = error(best_d, &best_c);
    for step in 1..=8 {
        let d0 = wmax / -(8.0 - 0.125 * step as f32);
        let c = codes(d0);
        // Least-squares scale for these codes: Σ x·k / Σ k².
        let (num, den) = x.iter().zip(&c).fold((0f32, 0f32), |(n, d), (&v, &k)| {
            (n + v * k as f32, d + (k * k) as f32)
        });
        for d in [
            round(d0),
            if den > 0.0 {
                round(num / den)
            } else {
                round(d0)
            },
        ] {
            if d == 0.0 || !d.is_finite() {
                continue;
            }
            let c = codes(d);
            let e = error(d, &c);
            if e < best_e {
                (best_d, best_c, best_e) = (d, c, e);
            }
        }
    }
    for i in 0..QK / 2 {
        q[i] = (best_c[i] + 8) as u8 | (((best_c[i + QK / 2] + 8) as u8) << 4);
    }
    f16::from_f32(best_d).to_bits()
}

/// An input vector quantized to 8 bits per block of 32 (f32 scales).
struct QVec {
    qs: Vec<i8>,
    d: Vec<f32>,
    /// Per block, the scale times the sum of the codes: with it the 4-bit kernels
    /// multiply the stored unsigned codes `u` directly and subtract `8·Σx` afterwards
    /// (`Σ (u − 8)·x = Σ u·x − 8·Σ x`), which saves unpacking signs per block.
    s: Vec<f32>,
}

fn quantize_input(x: &[f32]) -> QVec {
    let mut qs = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / QK];
    for ((q, d), x) in qs.chunks_mut(QK).zip(d.iter_mut()).zip(x.chunks(QK)) {
        *d = quantize_8bit(x, q);
    }
    let s = qs
        .chunks(QK)
        .zip(&d)
        .map(|(q, d)| d * q.iter().map(|&v| v as i32).sum::<i32>() as f32)
        .collect();
    QVec { qs, d, s }
}

/// [`quantize_input`] for the 4-bit kernels: the codes of each pair of blocks in the
/// order in which those kernels unpack 32 stored bytes (the low nibbles of both blocks,
/// then the high nibbles), that is elements `0..16, 32..48, 16..32, 48..64` of the pair
/// (a last unpaired block keeps its order). Each product then reads the weights with
/// one shift and mask per 64 codes and no shuffle.
fn quantize_input_q4(x: &[f32]) -> QVec {
    let mut v = quantize_input(x);
    let mut tmp = [0i8; 2 * QK];
    for pair in v.qs.chunks_exact_mut(2 * QK) {
        tmp.copy_from_slice(pair);
        pair[16..32].copy_from_slice(&tmp[32..48]);
        pair[32..48].copy_from_slice(&tmp[16..32]);
    }
    v
}

/// Where element `e` of block `b` (of `nb`) sits in a [`quantize_input_q4`] vector.
fn q4_input_index(b: usize, e: usize, nb: usize) -> usize {
    if b + 1 < nb || b % 2 == 1 {
        let (pair, second) = (b / 2, b % 2);
        let half = e / 16;
        pair * 2 * QK + half * 32 + second * 16 + e % 16
    } else {
        b * QK + e
    }
}

// ------------------------------------------------------------------ dot products

/// Whether the AVX2 kernels can run here.
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            super::isa() >= super::Isa::Avx2 && std::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 (with VNNI) kernels can run here.
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            avx2()
                && super::isa() == super::Isa::Avx512
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// For each module of dot products, `rows(x, w, out)`: the product of one input vector
/// with consecutive weight rows (`out.len()` of them, from the first of `w`), inside the
/// module's `target_feature`s so that the per-row kernel is inlined and the CPU check
/// and call happen once per run of rows rather than once per row.
macro_rules! rows_of {
    ($(#[$attr:meta])* $vis:vis) => {
        /// # Safety
        /// The CPU must have the module's features (those of its dot products).
        $(#[$attr])*
        $vis unsafe fn rows(q: &super::QVec, w: &super::Data, cols: usize, r0: usize, out: &mut [f32]) {
            let nb = cols / QK;
            for (k, o) in out.iter_mut().enumerate() {
                let r = r0 + k;
                *o = match w {
                    super::Data::Q8 { qs, d } => {
                        dot_q8(&q.qs, &q.d, &qs[r * cols..(r + 1) * cols], &d[r * nb..(r + 1) * nb])
                    }
                    super::Data::Q4 { qs, d } => dot_q4(
                        &q.qs,
                        &q.d,
                        &q.s,
                        &qs[r * cols / 2..(r + 1) * cols / 2],
                        &d[r * nb..(r + 1) * nb],
                    ),
                    _ => unreachable!("f32 and f16 products go through the panels"),
                };
            }
        }
    };
}

mod scalar {
    use super::{f16, QK};

    rows_of!(pub);

    pub fn dot_q8(xq: &[i8], xd: &[f32], wq: &[i8], wd: &[u16]) -> f32 {
        let mut sum = 0f32;
        for b in 0..wd.len() {
            let mut acc = 0i32;
            for i in b * QK..(b + 1) * QK {
                acc += xq[i] as i32 * wq[i] as i32;
            }
            sum += acc as f32 * xd[b] * f16::from_bits(wd[b]).to_f32();
        }
        sum
    }

    /// The reference: codes shifted to signed before the product (`xs` is not used);
    /// `xq` in [`super::quantize_input_q4`]'s order.
    pub fn dot_q4(xq: &[i8], xd: &[f32], _xs: &[f32], wq: &[u8], wd: &[u16]) -> f32 {
        let nb = wd.len();
        let mut sum = 0f32;
        for b in 0..nb {
            let mut acc = 0i32;
            let x = |e: usize| xq[super::q4_input_index(b, e, nb)] as i32;
            for i in 0..QK / 2 {
                let byte = wq[b * QK / 2 + i];
                acc += x(i) * ((byte & 15) as i32 - 8);
                acc += x(i + QK / 2) * ((byte >> 4) as i32 - 8);
            }
            sum += acc as f32 * xd[b] * f16::from_bits(wd[b]).to_f32();
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::QK;
    use std::arch::x86_64::*;

    rows_of!(#[target_feature(enable = "avx2,fma,f16c")] pub);

    /// # Safety
    /// The CPU must have AVX (the callers' `target_feature`s include it).
    #[inline(always)]
    pub(super) unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Σ over 32 lanes of x·w for signed bytes (|x| ≤ 127), as 8 f32 partial sums.
    ///
    /// # Safety
    /// The CPU must have AVX2 (inlined into the callers' AVX2 code).
    #[inline(always)]
    unsafe fn block_dot(x: __m256i, w: __m256i) -> __m256 {
        let ax = _mm256_sign_epi8(x, x);
        let sw = _mm256_sign_epi8(w, x);
        let p16 = _mm256_maddubs_epi16(ax, sw);
        let p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(p32)
    }

    /// The scales of blocks `b..b+8`: x's f32 scales times w's f16 scales.
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C; `xd` and `wd` must each point at 8 readable values.
    #[inline(always)]
    pub(super) unsafe fn scales8(xd: *const f32, wd: *const u16) -> [f32; 8] {
        let w = _mm256_cvtph_ps(_mm_loadu_si128(wd as *const __m128i));
        let s = _mm256_mul_ps(_mm256_loadu_ps(xd), w);
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out
    }

    /// # Safety
    /// The CPU must have the features in `target_feature`; with `nb = wd.len()` blocks, `xq`
    /// and `wq` must hold `32·nb` codes and `xd` `nb` scales.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn dot_q8(xq: &[i8], xd: &[f32], wq: &[i8], wd: &[u16]) -> f32 {
        let nb = wd.len();
        let (px, pw) = (xq.as_ptr(), wq.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut b = 0;
        while b + 8 <= nb {
            // The codes 4 KiB ahead into L2 (the rows follow each other, so this runs
            // into the next rows): more reads in flight than the hardware starts alone.
            for l in 0..4 {
                _mm_prefetch::<_MM_HINT_T1>(pw.wrapping_add(b * QK + 4096 + 64 * l));
            }
            let s = scales8(xd.as_ptr().add(b), wd.as_ptr().add(b));
            for k in (0..8).step_by(2) {
                let o = (b + k) * QK;
                let x0 = _mm256_loadu_si256(px.add(o) as *const __m256i);
                let w0 = _mm256_loadu_si256(pw.add(o) as *const __m256i);
                let x1 = _mm256_loadu_si256(px.add(o + QK) as *const __m256i);
                let w1 = _mm256_loadu_si256(pw.add(o + QK) as *const __m256i);
                acc0 = _mm256_fmadd_ps(block_dot(x0, w0), _mm256_set1_ps(s[k]), acc0);
                acc1 = _mm256_fmadd_ps(block_dot(x1, w1), _mm256_set1_ps(s[k + 1]), acc1);
            }
            b += 8;
        }
        while b < nb {
            let o = b * QK;
            let x0 = _mm256_loadu_si256(px.add(o) as *const __m256i);
            let w0 = _mm256_loadu_si256(pw.add(o) as *const __m256i);
            let s = xd[b] * half::f16::from_bits(wd[b]).to_f32();
            acc0 = _mm256_fmadd_ps(block_dot(x0, w0), _mm256_set1_ps(s), acc0);
            b += 1;
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }

    /// One 8-bit block (32 codes at `src`, scale `d`) as f32 at `dst`.
    ///
    /// # Safety
    /// The CPU must have the features in `target_feature`; `src` must hold 32 codes and
    /// `dst` room for 32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn expand_q8(src: *const i8, d: u16, dst: *mut f32) {
        let s = _mm256_set1_ps(scale(d));
        for i in (0..QK).step_by(8) {
            let q = _mm_loadl_epi64(src.add(i) as *const __m128i);
            let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            _mm256_storeu_ps(dst.add(i), _mm256_mul_ps(v, s));
        }
    }

    /// One 4-bit block (16 bytes at `src`: low nibbles the first 16 values, high nibbles
    /// the last 16; scale `d`) as f32 at `dst`.
    ///
    /// # Safety
    /// The CPU must have the features in `target_feature`; `src` must hold 16 bytes and
    /// `dst` room for 32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn expand_q4(src: *const u8, d: u16, dst: *mut f32) {
        let s = _mm256_set1_ps(scale(d));
        let eight = _mm256_set1_epi32(8);
        let raw = _mm_loadu_si128(src as *const __m128i);
        let mask = _mm_set1_epi8(15);
        let halves = [
            _mm_and_si128(raw, mask),
            _mm_and_si128(_mm_srli_epi16(raw, 4), mask),
        ];
        for (h, codes) in halves.into_iter().enumerate() {
            for (j, part) in [codes, _mm_srli_si128(codes, 8)].into_iter().enumerate() {
                let q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(part), eight);
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(q), s);
                _mm256_storeu_ps(dst.add(16 * h + 8 * j), v);
            }
        }
    }

    /// One f16 scale as f32, by F16C.
    ///
    /// # Safety
    /// The CPU must have F16C (inlined into the callers' code, which has it).
    #[inline(always)]
    unsafe fn scale(d: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(d as i32)))
    }

    /// Rows `r0..r0 + valid` (`valid` ≤ 32) of an 8- or 4-bit matrix `cols` wide as one
    /// f32 panel `[cols][32]` at `panel` (rows past `valid` zero): each 32 × 32 tile
    /// expanded block by block into a stack tile, then transposed in 8 × 8 register
    /// blocks, everything inlined (through `QMatrix::tile_row`, a call and a match per
    /// block and a call per 8 × 8 block took as long as the work: 14% of an AVX2 4-bit
    /// prompt's time against 72% in the products).
    ///
    /// # Safety
    /// The CPU must have the features in `target_feature`; `w` must be `Q8` or `Q4` with
    /// at least `r0 + valid` rows of `cols` (a multiple of 32) and `panel` must hold
    /// `cols · 32` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn fill_quantized(
        w: &super::Data,
        cols: usize,
        r0: usize,
        valid: usize,
        panel: *mut f32,
    ) {
        let nb = cols / QK;
        let mut tile = [[0f32; QK]; QK];
        for kb in 0..nb {
            for (j, t) in tile.iter_mut().enumerate().take(valid) {
                let b = (r0 + j) * nb + kb;
                match w {
                    super::Data::Q8 { qs, d } => {
                        expand_q8(qs.as_ptr().add(b * QK), *d.get_unchecked(b), t.as_mut_ptr())
                    }
                    super::Data::Q4 { qs, d } => expand_q4(
                        qs.as_ptr().add(b * QK / 2),
                        *d.get_unchecked(b),
                        t.as_mut_ptr(),
                    ),
                    _ => unreachable!("8- or 4-bit weights"),
                }
            }
            let src = tile.as_ptr().cast::<f32>();
            for i0 in (0..QK).step_by(8) {
                for j0 in (0..QK).step_by(8) {
                    super::super::panel::transpose8(
                        src.add(j0 * QK + i0),
                        QK,
                        panel.add((kb * QK + i0) * QK + j0),
                        QK,
                    );
                }
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX2; `p` must point at 16 readable bytes (one Q4 block).
    #[inline(always)]
    unsafe fn unpack_q4(p: *const u8) -> __m256i {
        let raw = _mm_loadu_si128(p as *const __m128i);
        let both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
        _mm256_and_si256(both, _mm256_set1_epi8(15))
    }

    /// Σ over 32 lanes of u·x for unsigned codes `u` < 16 and signed `x`, as 8 f32
    /// partial sums (the pair sums, at most 2·15·127, fit in i16).
    ///
    /// # Safety
    /// The CPU must have AVX2 (inlined into the callers' AVX2 code).
    #[inline(always)]
    unsafe fn block_dot_u(x: __m256i, u: __m256i) -> __m256 {
        let p16 = _mm256_maddubs_epi16(u, x);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }

    /// # Safety
    /// The CPU must have the features in `target_feature`; with `nb = wd.len()` blocks, `xq`
    /// must hold `32·nb` codes, `wq` `16·nb` bytes and `xd`, `xs` `nb` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn dot_q4(xq: &[i8], xd: &[f32], xs: &[f32], wq: &[u8], wd: &[u16]) -> f32 {
        let nb = wd.len();
        assert!(xq.len() >= nb * QK && xd.len() >= nb && xs.len() >= nb && wq.len() >= nb * QK / 2);
        let (px, pw) = (xq.as_ptr(), wq.as_ptr());
        let mask = _mm256_set1_epi8(15);
        let ones = _mm256_set1_epi16(1);
        // Σ over a pair of blocks (32 stored bytes, 64 input codes in pair order) as 8
        // i32 lanes, lanes 0–3 the first block's and 4–7 the second's.
        let pair = |p: usize| {
            let raw = _mm256_loadu_si256(pw.add(p * QK) as *const __m256i);
            let lo = _mm256_and_si256(raw, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            let xlo = _mm256_loadu_si256(px.add(p * 2 * QK) as *const __m256i);
            let xhi = _mm256_loadu_si256(px.add(p * 2 * QK + QK) as *const __m256i);
            let dlo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xlo), ones);
            let dhi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xhi), ones);
            _mm256_cvtepi32_ps(_mm256_add_epi32(dlo, dhi))
        };
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        // Σ_b w-scale · x-scale · Σ x-codes, subtracted 8 times at the end.
        let mut corr = _mm256_setzero_ps();
        let mut b = 0;
        while b + 8 <= nb {
            // The codes 2 KiB ahead into L2 (as dot_q8's).
            for l in 0..2 {
                _mm_prefetch::<_MM_HINT_T1>(
                    pw.wrapping_add(b * QK / 2 + 2048 + 64 * l) as *const i8
                );
            }
            let wd8 = _mm256_cvtph_ps(_mm_loadu_si128(wd.as_ptr().add(b) as *const __m128i));
            corr = _mm256_fmadd_ps(wd8, _mm256_loadu_ps(xs.as_ptr().add(b)), corr);
            let s = _mm256_mul_ps(wd8, _mm256_loadu_ps(xd.as_ptr().add(b)));
            // The scales of blocks (k, k + 1) in lanes 0–3 and 4–7.
            let sc = |k: i32| {
                _mm256_permutevar8x32_ps(
                    s,
                    _mm256_setr_epi32(k, k, k, k, k + 1, k + 1, k + 1, k + 1),
                )
            };
            let p = b / 2;
            acc0 = _mm256_fmadd_ps(pair(p), sc(0), acc0);
            acc1 = _mm256_fmadd_ps(pair(p + 1), sc(2), acc1);
            acc0 = _mm256_fmadd_ps(pair(p + 2), sc(4), acc0);
            acc1 = _mm256_fmadd_ps(pair(p + 3), sc(6), acc1);
            b += 8;
        }
        let mut total = hsum(_mm256_add_ps(acc0, acc1)) - 8.0 * hsum(corr);
        let scale = |b: usize| xd[b] * half::f16::from_bits(wd[b]).to_f32();
        let corr_of = |b: usize| 8.0 * half::f16::from_bits(wd[b]).to_f32() * xs[b];
        while b + 2 <= nb {
            let sc = _mm256_set_m128(_mm_set1_ps(scale(b + 1)), _mm_set1_ps(scale(b)));
            total += hsum(_mm256_mul_ps(pair(b / 2), sc)) - corr_of(b) - corr_of(b + 1);
            b += 2;
        }
        if b < nb {
            // The last, unpaired block, in element order.
            let x0 = _mm256_loadu_si256(px.add(b * QK) as *const __m256i);
            let w0 = unpack_q4(pw.add(b * QK / 2));
            total += hsum(block_dot_u(x0, w0)) * scale(b) - corr_of(b);
        }
        total
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::avx::scales8;
    use super::QK;
    use std::arch::x86_64::*;

    rows_of!(#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,f16c,fma")] pub);

    /// Σ x·w over 64 signed bytes (two blocks) as 16 i32 lanes, lanes 0–7 the first
    /// block's and 8–15 the second's: |x| (unsigned) times w with x's sign, by VNNI.
    ///
    /// # Safety
    /// The CPU must have AVX-512BW and AVX-512 VNNI (inlined into the callers' code).
    #[inline(always)]
    unsafe fn pair_dot(x: __m512i, w: __m512i) -> __m512 {
        let ax = _mm512_abs_epi8(x);
        let neg = _mm512_movepi8_mask(x);
        let sw = _mm512_mask_sub_epi8(w, neg, _mm512_setzero_si512(), w);
        _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ax, sw))
    }

    /// Scale `a` in lanes 0–7 and `b` in lanes 8–15.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[inline(always)]
    unsafe fn pair_scale(a: f32, b: f32) -> __m512 {
        _mm512_shuffle_f32x4::<0b01_00_01_00>(_mm512_set1_ps(a), _mm512_set1_ps(b))
    }

    /// # Safety
    /// The CPU must have the features in `target_feature`; with `nb = wd.len()` blocks, `xq`
    /// and `wq` must hold `32·nb` codes and `xd` `nb` scales.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,f16c,fma")]
    #[inline]
    pub unsafe fn dot_q8(xq: &[i8], xd: &[f32], wq: &[i8], wd: &[u16]) -> f32 {
        let nb = wd.len();
        let (px, pw) = (xq.as_ptr(), wq.as_ptr());
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut b = 0;
        while b + 8 <= nb {
            // The codes 2 KiB ahead, and 8 KiB ahead into L2, and the scales.
            for l in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(pw.add(b * QK + 2048 + 64 * l));
                _mm_prefetch::<_MM_HINT_T1>(pw.wrapping_add(b * QK + 8192 + 64 * l));
            }
            _mm_prefetch::<_MM_HINT_T0>(wd.as_ptr().add(b + 64) as *const i8);
            let s = scales8(xd.as_ptr().add(b), wd.as_ptr().add(b));
            for k in (0..8).step_by(4) {
                let o = (b + k) * QK;
                let x0 = _mm512_loadu_si512(px.add(o) as *const __m512i);
                let w0 = _mm512_loadu_si512(pw.add(o) as *const __m512i);
                let x1 = _mm512_loadu_si512(px.add(o + 2 * QK) as *const __m512i);
                let w1 = _mm512_loadu_si512(pw.add(o + 2 * QK) as *const __m512i);
                a0 = _mm512_fmadd_ps(pair_dot(x0, w0), pair_scale(s[k], s[k + 1]), a0);
                a1 = _mm512_fmadd_ps(pair_dot(x1, w1), pair_scale(s[k + 2], s[k + 3]), a1);
            }
            b += 8;
        }
        let mut total = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        if b < nb {
            total += super::scalar::dot_q8(&xq[b * QK..], &xd[b..], &wq[b * QK..], &wd[b..]);
        }
        total
    }

    /// # Safety
    /// The CPU must have the features in `target_feature`; with `nb = wd.len()` blocks, `xq`
    /// must hold `32·nb` codes, `wq` `16·nb` bytes and `xd`, `xs` `nb` values. The
    /// stored unsigned codes go straight into VNNI's unsigned × signed product; `8·Σx`
    /// is subtracted at the end (see [`super::QVec::s`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,f16c,fma")]
    #[inline]
    pub unsafe fn dot_q4(xq: &[i8], xd: &[f32], xs: &[f32], wq: &[u8], wd: &[u16]) -> f32 {
        let nb = wd.len();
        assert!(xq.len() >= nb * QK && xd.len() >= nb && xs.len() >= nb && wq.len() >= nb * QK / 2);
        let (px, pw) = (xq.as_ptr(), wq.as_ptr());
        let mask = _mm512_set1_epi8(15);
        // Σ over a pair of blocks (32 stored bytes, 64 input codes in pair order) as 16
        // i32 lanes: 0–3 and 8–11 the first block's, 4–7 and 12–15 the second's.
        let pair = |p: usize| {
            let raw = _mm256_loadu_si256(pw.add(p * QK) as *const __m256i);
            let both =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4));
            let x = _mm512_loadu_si512(px.add(p * 2 * QK) as *const __m512i);
            let w = _mm512_and_si512(both, mask);
            _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x))
        };
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut corr = _mm256_setzero_ps();
        let mut b = 0;
        while b + 8 <= nb {
            // The codes 1 KiB ahead, and 4 KiB ahead into L2, and the scales.
            _mm_prefetch::<_MM_HINT_T0>(pw.add(b * QK / 2 + 1024) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(pw.add(b * QK / 2 + 1024 + 64) as *const i8);
            _mm_prefetch::<_MM_HINT_T1>(pw.wrapping_add(b * QK / 2 + 4096) as *const i8);
            _mm_prefetch::<_MM_HINT_T1>(pw.wrapping_add(b * QK / 2 + 4096 + 64) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(wd.as_ptr().add(b + 64) as *const i8);
            let wd8 = _mm256_cvtph_ps(_mm_loadu_si128(wd.as_ptr().add(b) as *const __m128i));
            corr = _mm256_fmadd_ps(wd8, _mm256_loadu_ps(xs.as_ptr().add(b)), corr);
            let s = _mm512_castps256_ps512(_mm256_mul_ps(wd8, _mm256_loadu_ps(xd.as_ptr().add(b))));
            // The scales of blocks (k, k + 1) in the lanes of `pair`.
            let sc = |k: i32| {
                let (u, v) = (k, k + 1);
                _mm512_permutexvar_ps(
                    _mm512_setr_epi32(u, u, u, u, v, v, v, v, u, u, u, u, v, v, v, v),
                    s,
                )
            };
            let p = b / 2;
            a0 = _mm512_fmadd_ps(pair(p), sc(0), a0);
            a1 = _mm512_fmadd_ps(pair(p + 1), sc(2), a1);
            a0 = _mm512_fmadd_ps(pair(p + 2), sc(4), a0);
            a1 = _mm512_fmadd_ps(pair(p + 3), sc(6), a1);
            b += 8;
        }
        let mut total = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) - 8.0 * super::avx::hsum(corr);
        if b < nb {
            // Fewer than eight blocks left: the AVX2 kernel takes them (pair order too).
            total += super::avx::dot_q4(
                &xq[b * QK..],
                &xd[b..],
                &xs[b..],
                &wq[b * QK / 2..],
                &wd[b..],
            );
        }
        total
    }
}

/// [`rows_of`] for the widest kernels this CPU has.
fn dot_rows(x: &QVec, w: &Data, cols: usize, r0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F/BW/VNNI (and AVX2, FMA, F16C) were detected.
        return unsafe { avx512::rows(x, w, cols, r0, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2, FMA and F16C were detected.
        return unsafe { avx::rows(x, w, cols, r0, out) };
    }
    // SAFETY: the portable module needs no CPU feature.
    unsafe { scalar::rows(x, w, cols, r0, out) }
}

/// A dot product that runs the widest kernel this CPU has: AVX-512 (with VNNI), AVX2,
/// or the portable one.
macro_rules! widest {
    ($name:ident ($($a:ident: $t:ty),*)) => {
        fn $name($($a: $t),*) -> f32 {
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                // SAFETY: AVX-512F/BW/VNNI (and AVX2, FMA, F16C) were detected; the
                // kernels read only within the slices given.
                return unsafe { avx512::$name($($a),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: AVX2, FMA and F16C were detected; as above.
                return unsafe { avx::$name($($a),*) };
            }
            scalar::$name($($a),*)
        }
    };
}

widest!(dot_q8(xq: &[i8], xd: &[f32], wq: &[i8], wd: &[u16]));
widest!(dot_q4(xq: &[i8], xd: &[f32], xs: &[f32], wq: &[u8], wd: &[u16]));

// ------------------------------------------------------------------ products

/// Input rows from which a quantized product expands its weights to f32 panels.
const PANEL_MIN_ROWS: usize = 8;

/// `out[i, r] = Σ_c x[i, c] · W[r, c] (+ bias[r])` for `n` input rows. `out` is
/// `[n, rows]`. Work is split over the rayon pool by weight rows, so each weight is read
/// once for all `n` inputs.
pub fn matmul(x: &[f32], n: usize, w: &QMatrix, bias: Option<&[f32]>, out: &mut [f32]) {
    match bias {
        Some(b) => {
            let add = |_: usize, rows: &mut [f32]| {
                for o in rows.chunks_mut(w.rows) {
                    o.iter_mut().zip(b).for_each(|(o, b)| *o += b);
                }
            };
            matmul_then(x, n, w, out, Some(&add))
        }
        None => matmul_then(x, n, w, out, None),
    }
}

/// [`matmul`], then `epilogue` on the finished output rows (as
/// [`super::panel::matmul_then`] runs it).
pub fn matmul_then(
    x: &[f32],
    n: usize,
    w: &QMatrix,
    out: &mut [f32],
    epilogue: Option<super::panel::Epilogue<'_>>,
) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(x.len(), n * cols, "matmul: input length");
    assert_eq!(out.len(), n * rows, "matmul: output length");
    if let Data::F32(panels) = &w.data {
        let panels = super::panel::Panels::Stored(panels);
        super::panel::matmul_then(x, n, rows, cols, panels, out, epilogue);
    } else if let (Data::F16(panels), 1) = (&w.data, n) {
        // One input row: the panels streamed, converted in registers.
        super::half::matvec(x, panels, rows, cols, out);
        super::panel::run_epilogue(out, rows, epilogue);
    } else if n >= PANEL_MIN_ROWS && w.weight_type().is_quantized() && super::bf16::available() {
        // Many input rows, quantized weights, a CPU with bf16 dot products: panels of
        // bf16 pairs, twice the multiply-adds of f32 an instruction.
        super::bf16::matmul_then(x, n, w, out, epilogue);
    } else if n >= PANEL_MIN_ROWS || w.weight_type() == WeightType::F16 {
        // Many input rows (or f16 panels, whose expansion is one conversion pass): each
        // task expands a panel of weight rows to f32 (once for all inputs) and runs the
        // panel product on it.
        let nr = super::panel::NR;
        let fill = |p: usize, panel: &mut [f32]| w.fill_panel(p, panel);
        let source = |p: usize| w.panel_source(p);
        debug_assert_eq!(nr, QK);
        let panels = super::panel::Panels::Fill(&fill, &source);
        super::panel::matmul_then(x, n, rows, cols, panels, out, epilogue);
    } else {
        // Quantize the inputs once for the integer kernels.
        let qx: Vec<QVec> = match w.weight_type() {
            WeightType::Q8 => x.chunks(cols).map(quantize_input).collect(),
            _ => x.chunks(cols).map(quantize_input_q4).collect(),
        };
        // Each task takes a run of weight rows and computes them for every input row.
        let dot = |r: usize, i: usize| -> f32 {
            match &w.data {
                Data::F32(_) | Data::F16(_) => unreachable!("f32 and f16 go through the panels"),
                Data::Q8 { qs, d } => {
                    let nb = cols / QK;
                    dot_q8(
                        &qx[i].qs,
                        &qx[i].d,
                        &qs[r * cols..(r + 1) * cols],
                        &d[r * nb..(r + 1) * nb],
                    )
                }
                Data::Q4 { qs, d } => {
                    let nb = cols / QK;
                    dot_q4(
                        &qx[i].qs,
                        &qx[i].d,
                        &qx[i].s,
                        &qs[r * cols / 2..(r + 1) * cols / 2],
                        &d[r * nb..(r + 1) * nb],
                    )
                }
            }
        };
        let threads = rayon::current_num_threads().max(1);
        let per = (rows / (threads * 8)).clamp(8, 256).min(rows.max(1));
        if n == 1 {
            out.par_chunks_mut(per)
                .enumerate()
                .for_each(|(t, o)| dot_rows(&qx[0], &w.data, cols, t * per, o));
        } else {
            // Written `[rows, n]` by the tasks, then transposed into `out`.
            let mut tmp = vec![0f32; rows * n];
            tmp.par_chunks_mut(per * n)
                .enumerate()
                .for_each(|(t, buf)| {
                    for (k, o) in buf.chunks_mut(n).enumerate() {
                        for (i, o) in o.iter_mut().enumerate() {
                            *o = dot(t * per + k, i);
                        }
                    }
                });
            for r in 0..rows {
                for i in 0..n {
                    out[i * rows + r] = tmp[r * n + i];
                }
            }
        }
        if let Some(e) = epilogue {
            e(0, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    fn reference(x: &[f32], n: usize, w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * rows];
        for i in 0..n {
            for r in 0..rows {
                out[i * rows + r] = (0..cols).map(|c| x[i * cols + c] * w[r * cols + c]).sum();
            }
        }
        out
    }

    /// The rounding of codes is `round` (halves away from zero), clamped, NaN to 0: over
    /// every float in [−130, 130] a step of 2^-10 apart, the halves and their neighbours,
    /// and the specials.
    #[test]
    fn codes_round_as_round_does() {
        let want = |y: f32| y.round().clamp(-127.0, 127.0) as i8;
        let mut ys: Vec<f32> = (-130 * 1024..=130 * 1024)
            .map(|i| i as f32 / 1024.0)
            .collect();
        for k in -130..130 {
            let h = k as f32 + 0.5;
            ys.extend([h, h.next_down(), h.next_up()]);
        }
        ys.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            -0.0,
        ]);
        ys.extend([0.49999997, -0.49999997, 1e-30, -1e-30]);
        for y in ys {
            assert_eq!(round_code(y), want(y), "{y:e}");
        }
    }

    /// Every block of every weight type expands to exactly what the portable code
    /// gives (the SIMD expansion, where this CPU has it, feeds the prompt products).
    #[test]
    fn block_expansion_matches_the_portable_code() {
        let (rows, cols) = (5, 96);
        let w = values(rows * cols, 9);
        for ty in [WeightType::F16, WeightType::Q8, WeightType::Q4] {
            let q = QMatrix::from_f32(&w, rows, cols, ty).unwrap();
            for r in 0..rows {
                for c0 in (0..cols).step_by(QK) {
                    let (mut a, mut b) = ([0f32; QK], [1f32; QK]);
                    q.tile_row(r, c0, &mut a);
                    q.tile_row_portable(r, c0, &mut b);
                    assert_eq!(a, b, "{ty:?} row {r} block {c0}");
                }
            }
        }
    }

    #[test]
    fn products_match_the_dequantized_weights() {
        // 7, 10 and 11 blocks a row: the 4-bit kernels' pairs, groups of eight blocks,
        // and a last unpaired block.
        for cols in [224, 320, 352] {
            products_match(37, cols);
        }
    }

    fn products_match(rows: usize, cols: usize) {
        let w = values(rows * cols, 1);
        for n in [1, 3, 9] {
            let x = values(n * cols, 2 + n as u64);
            for ty in [
                WeightType::F32,
                WeightType::F16,
                WeightType::Q8,
                WeightType::Q4,
            ] {
                let q = QMatrix::from_f32(&w, rows, cols, ty).unwrap();
                let deq = q.to_f32();
                let mut out = vec![0f32; n * rows];
                matmul(&x, n, &q, None, &mut out);
                let want = reference(&x, n, &deq, rows, cols);
                // The quantized kernels of few rows also round the input to 8 bits per
                // block; many rows multiply f32 inputs with the expanded weights, or
                // both rounded to bf16 where the CPU has its dot products (each product
                // then off by at most 2^-8 of |x·w|; checked exactly in `bf16::tests`).
                let bf16 =
                    ty.is_quantized() && n >= PANEL_MIN_ROWS && super::super::bf16::available();
                let tol = match ty {
                    WeightType::F32 | WeightType::F16 => 1e-4,
                    _ if n >= PANEL_MIN_ROWS => 1e-4,
                    _ => 0.08,
                };
                for (at, (a, b)) in out.iter().zip(&want).enumerate() {
                    let (i, r) = (at / rows, at % rows);
                    let bound = if bf16 {
                        let abs: f32 = (0..cols)
                            .map(|c| (x[i * cols + c] * deq[r * cols + c]).abs())
                            .sum();
                        abs / 256.0 + 1e-4 * (1.0 + b.abs())
                    } else {
                        tol * (1.0 + b.abs())
                    };
                    assert!((a - b).abs() <= bound, "{ty:?} n={n}: {a} vs {b}");
                }
                // The scalar and SIMD kernels agree closely on the integer path.
                if ty.is_quantized() {
                    let qx = if ty == WeightType::Q4 {
                        quantize_input_q4(&x[..cols])
                    } else {
                        quantize_input(&x[..cols])
                    };
                    let (simd, scal) = match &q.data {
                        Data::Q8 { qs, d } => (
                            dot_q8(&qx.qs, &qx.d, &qs[..cols], &d[..cols / QK]),
                            scalar::dot_q8(&qx.qs, &qx.d, &qs[..cols], &d[..cols / QK]),
                        ),
                        Data::Q4 { qs, d } => (
                            dot_q4(&qx.qs, &qx.d, &qx.s, &qs[..cols / 2], &d[..cols / QK]),
                            scalar::dot_q4(&qx.qs, &qx.d, &qx.s, &qs[..cols / 2], &d[..cols / QK]),
                        ),
                        _ => unreachable!(),
                    };
                    assert!(
                        (simd - scal).abs() < 1e-4 * (1.0 + scal.abs()),
                        "{simd} vs {scal}"
                    );
                    // Both SIMD widths, when this CPU has them, against the scalar kernel.
                    #[cfg(target_arch = "x86_64")]
                    if avx2() {
                        let a = match &q.data {
                            Data::Q8 { qs, d } => unsafe {
                                avx::dot_q8(&qx.qs, &qx.d, &qs[..cols], &d[..cols / QK])
                            },
                            Data::Q4 { qs, d } => unsafe {
                                avx::dot_q4(&qx.qs, &qx.d, &qx.s, &qs[..cols / 2], &d[..cols / QK])
                            },
                            _ => unreachable!(),
                        };
                        assert!(
                            (a - scal).abs() < 1e-4 * (1.0 + scal.abs()),
                            "avx2 {a} vs {scal}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn quantization_error_is_bounded_by_half_a_step() {
        let (rows, cols) = (4, 64);
        let w = values(rows * cols, 7);
        // Q8: round to nearest of 127 steps; Q4: 8 steps, and the extreme opposite in sign
        // to the block's largest weight may be clipped by one more half step.
        for (ty, step_div, steps_off) in [
            (WeightType::Q8, 127.0f32, 0.5f32),
            (WeightType::Q4, 8.0, 1.0),
        ] {
            let q = QMatrix::from_f32(&w, rows, cols, ty).unwrap();
            let deq = q.to_f32();
            for (blk, dq) in w.chunks(QK).zip(deq.chunks(QK)) {
                let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = amax / step_div;
                for (a, b) in blk.iter().zip(dq) {
                    assert!(
                        (a - b).abs() <= steps_off * step * 1.01 + 1e-3 * amax,
                        "{ty:?}: {a} vs {b}"
                    );
                }
            }
        }
        // The searched Q4 scale is never worse (squared error) than the plain max scale.
        let q = QMatrix::from_f32(&w, rows, cols, WeightType::Q4)
            .unwrap()
            .to_f32();
        for (blk, dq) in w.chunks(QK).zip(q.chunks(QK)) {
            let wmax = blk
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = f16::from_f32(wmax / -8.0).to_f32();
            let plain: f32 = blk
                .iter()
                .map(|&v| (v - (((v / d + 8.5).floor()).clamp(0.0, 15.0) - 8.0) * d).powi(2))
                .sum();
            let searched: f32 = blk.iter().zip(dq).map(|(a, b)| (a - b).powi(2)).sum();
            assert!(searched <= plain * (1.0 + 1e-5), "{searched} > {plain}");
        }
        assert_eq!(WeightType::Q8.row_bytes(768), 816);
        assert_eq!(WeightType::Q4.row_bytes(768), 432);
    }

    #[test]
    fn bad_shapes_are_refused() {
        let err = QMatrix::from_f32(&[0.0; 30], 1, 30, WeightType::Q8)
            .err()
            .unwrap();
        assert!(err.to_string().contains("multiple of 32"), "{err}");
        assert!(QMatrix::from_f32(&[0.0; 30], 2, 30, WeightType::F32).is_err());
        assert!(WeightType::parse("q3").is_err());
    }
}

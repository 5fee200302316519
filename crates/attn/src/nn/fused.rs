//! Fused CPU kernels, each with its backward pass: GELU (tanh approximation), layer norm,
//! softmax with scale and causal mask, softmax cross-entropy with label smoothing and
//! per-row weights, and the AdamW update done in place.
//!
//! candle runs a composite like layer norm as a chain of elementwise operations, each a
//! separate pass over memory with a fresh allocation, mostly on one core; its own fused
//! layer norm and softmax have no backward (DESIGN.md). Each kernel here is a candle
//! custom op whose forward is one pass per row (rows split over the rayon pool when the
//! work is large) and whose `bwd` is another such op, so autodiff works through it.
//! They take f32 and f64 tensors on the CPU; the callers in `nn` fall back to the
//! composite paths elsewhere, or when a test calls [`set_enabled`]`(false)`.
//!
//! Its length is temporary: this file serves the candle graph, which BERT and Marian
//! still run on and which "One engine, part 2" removes together with this file.

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp2,
    InplaceOp3, Layout, Shape, Tensor, WithDType,
};
use num_traits::Float;
use rayon::prelude::*;

use crate::Result;

/// 0: on (the default), 1: off.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Whether the fused kernels are used (yes unless a test turned them off).
pub fn enabled() -> bool {
    STATE.load(Ordering::Relaxed) == 0
}

/// Turn the fused kernels on or off for the whole process (tests compare both paths).
pub fn set_enabled(on: bool) {
    STATE.store(if on { 0 } else { 1 }, Ordering::Relaxed);
}

/// Whether `t` can go through the fused kernels.
pub fn usable(t: &Tensor) -> bool {
    enabled() && t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

trait Real: Float + WithDType + Send + Sync + std::iter::Sum {
    fn slice_mut(s: &mut CpuStorage) -> candle_core::Result<&mut [Self]>;
}
impl Real for f32 {
    fn slice_mut(s: &mut CpuStorage) -> candle_core::Result<&mut [Self]> {
        match s {
            CpuStorage::F32(v) => Ok(v),
            s => bail!("expected f32, found {:?}", s.dtype()),
        }
    }
}
impl Real for f64 {
    fn slice_mut(s: &mut CpuStorage) -> candle_core::Result<&mut [Self]> {
        match s {
            CpuStorage::F64(v) => Ok(v),
            s => bail!("expected f64, found {:?}", s.dtype()),
        }
    }
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => bail!("fused kernel: the input is not contiguous"),
    }
}

/// Elements below which a kernel stays on the calling thread.
const PAR_MIN: usize = 1 << 14;

/// Rows of `row` elements per parallel task: about `PAR_MIN` elements each, or all rows
/// in one task when the whole job is small.
fn rows_per_task(total: usize, row: usize) -> usize {
    let row = row.max(1);
    if total < 2 * PAR_MIN {
        (total / row).max(1)
    } else {
        (PAR_MIN / row).max(1)
    }
}

/// Run `f(first_row, out_rows)` over `out`, split into groups of whole rows.
pub(crate) fn for_rows<T: Send>(
    out: &mut [T],
    row: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let per = rows_per_task(out.len(), row);
    if per * row >= out.len() {
        f(0, out);
        return;
    }
    out.par_chunks_mut(per * row)
        .enumerate()
        .for_each(|(i, chunk)| f(i * per, chunk));
}

/// Sum per-task partial vectors into `out`.
fn add_partials<T: Real>(out: &mut [T], parts: Vec<Vec<T>>) {
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o = *o + v;
        }
    }
}

macro_rules! dispatch {
    ($s:expr, $f:ident ( $($a:expr),* )) => {
        match $s {
            CpuStorage::F32(_) => $f::<f32>($($a),*),
            CpuStorage::F64(_) => $f::<f64>($($a),*),
            s => bail!("fused kernel: dtype {:?} is not supported", s.dtype()),
        }
    };
}

// ---------------------------------------------------------------- GELU (tanh form)

const GELU_A: f64 = 0.044715;
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// tanh(u) as 1 − 2/(e^{2u} + 1): one exp, exact limits at ±∞.
#[inline(always)]
fn tanh_fast<T: Real>(u: T) -> T {
    let two = T::one() + T::one();
    T::one() - two / ((two * u).exp() + T::one())
}

struct GeluTanh;

fn gelu_fwd<T: Real>(s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
    let x = slice::<T>(s, l)?;
    let (c, a, half) = (
        T::from(SQRT_2_OVER_PI).unwrap(),
        T::from(GELU_A).unwrap(),
        T::from(0.5).unwrap(),
    );
    let mut y = vec![T::zero(); x.len()];
    for_rows(&mut y, 1, |start, out| {
        for (o, &v) in out.iter_mut().zip(&x[start..]) {
            let t = tanh_fast(c * (v + a * v * v * v));
            *o = half * v * (T::one() + t);
        }
    });
    Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
}

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "attn-gelu-tanh"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s, gelu_fwd(s, l))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &GeluTanhBwd)?))
    }
}

struct GeluTanhBwd;

fn gelu_bwd<T: Real>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (x, g) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?);
    let (c, a, half) = (
        T::from(SQRT_2_OVER_PI).unwrap(),
        T::from(GELU_A).unwrap(),
        T::from(0.5).unwrap(),
    );
    let three = T::from(3.0).unwrap();
    let mut dx = vec![T::zero(); x.len()];
    for_rows(&mut dx, 1, |start, out| {
        for ((o, &v), &gv) in out.iter_mut().zip(&x[start..]).zip(&g[start..]) {
            let t = tanh_fast(c * (v + a * v * v * v));
            let d = half * (T::one() + t)
                + half * v * (T::one() - t * t) * c * (T::one() + three * a * v * v);
            *o = gv * d;
        }
    });
    Ok((T::to_cpu_storage_owned(dx), l1.shape().clone()))
}

impl CustomOp2 for GeluTanhBwd {
    fn name(&self) -> &'static str {
        "attn-gelu-tanh-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s1, gelu_bwd(s1, l1, s2, l2))
    }
}

/// GELU with the tanh approximation (GPT-2's `gelu_new`), fused forward and backward.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(GeluTanh)?)
}

// ---------------------------------------------------------------- bias add

/// x + b with `b` broadcast over the rows of `x` (`[.., n]`, `b` `[n]`).
struct AddBias;

fn bias_fwd<T: Real>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (x, b) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?);
    let n = b.len();
    if n == 0 || x.len() % n != 0 {
        bail!("bias of {n} does not fit {:?}", l1.shape());
    }
    let mut y = vec![T::zero(); x.len()];
    for_rows(&mut y, n, |r0, out| {
        for (o, xv) in out.chunks_mut(n).zip(x[r0 * n..].chunks(n)) {
            for j in 0..n {
                o[j] = xv[j] + b[j];
            }
        }
    });
    Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
}

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "attn-add-bias"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s1, bias_fwd(s1, l1, s2, l2))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let db = g
            .contiguous()?
            .apply_op1_no_bwd(&ColumnSum)?
            .reshape(b.shape())?;
        Ok((Some(g.clone()), Some(db)))
    }
}

/// Sums over all rows: `[.., n]` → `[n]`.
struct ColumnSum;

fn colsum<T: Real>(s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
    let x = slice::<T>(s, l)?;
    let n = *l.dims().last().unwrap_or(&1);
    let rows = x.len() / n.max(1);
    let per = rows_per_task(x.len(), n);
    let task = |r0: usize, r1: usize| -> Vec<T> {
        let mut acc = vec![T::zero(); n];
        for r in r0..r1 {
            for (a, &v) in acc.iter_mut().zip(&x[r * n..(r + 1) * n]) {
                *a = *a + v;
            }
        }
        acc
    };
    let parts: Vec<Vec<T>> = if per >= rows {
        vec![task(0, rows)]
    } else {
        (0..rows.div_ceil(per))
            .into_par_iter()
            .map(|i| task(i * per, ((i + 1) * per).min(rows)))
            .collect()
    };
    let mut out = vec![T::zero(); n];
    add_partials(&mut out, parts);
    Ok((T::to_cpu_storage_owned(out), Shape::from(n)))
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "attn-column-sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s, colsum(s, l))
    }
}

/// `x + b`, `b` a vector broadcast over the last dimension; the bias gradient is one
/// pass of column sums.
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)?)
}

// ---------------------------------------------------------------- layer norm

struct LayerNorm {
    eps: f64,
}

/// Mean and 1/√(var + eps) of one row.
#[inline(always)]
fn moments<T: Real>(row: &[T], eps: T) -> (T, T) {
    let n = T::from(row.len()).unwrap();
    let mean = row.iter().copied().sum::<T>() / n;
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
    (mean, T::one() / (var + eps).sqrt())
}

fn ln_fwd<T: Real>(
    eps: f64,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (x, w, b) = (
        slice::<T>(s1, l1)?,
        slice::<T>(s2, l2)?,
        slice::<T>(s3, l3)?,
    );
    let d = w.len();
    if d == 0 || b.len() != d || x.len() % d != 0 {
        bail!(
            "layer norm: weight {} / bias {} do not fit rows of {:?}",
            d,
            b.len(),
            l1.shape()
        );
    }
    let eps = T::from(eps).unwrap();
    let mut y = vec![T::zero(); x.len()];
    for_rows(&mut y, d, |r0, out| {
        for (k, o) in out.chunks_mut(d).enumerate() {
            let xr = &x[(r0 + k) * d..(r0 + k + 1) * d];
            let (mean, rstd) = moments(xr, eps);
            for j in 0..d {
                o[j] = (xr[j] - mean) * rstd * w[j] + b[j];
            }
        }
    });
    Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "attn-layer-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s1, ln_fwd(self.eps, s1, l1, s2, l2, s3, l3))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let rows = x.elem_count() / d;
        let packed = x.apply_op3_no_bwd(w, &g.contiguous()?, &LayerNormBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(w.shape())?;
        let db = packed.narrow(0, rows + 1, 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Gradients of layer norm in one pass: `[rows + 2, d]` holding dx, then dweight, dbias.
struct LayerNormBwd {
    eps: f64,
}

fn ln_bwd<T: Real>(
    eps: f64,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (x, w, g) = (
        slice::<T>(s1, l1)?,
        slice::<T>(s2, l2)?,
        slice::<T>(s3, l3)?,
    );
    let d = w.len();
    let rows = x.len() / d;
    let eps = T::from(eps).unwrap();
    let n = T::from(d).unwrap();
    let mut out = vec![T::zero(); (rows + 2) * d];
    let (dx, dwb) = out.split_at_mut(rows * d);
    let per = rows_per_task(dx.len(), d);
    // Each task returns its partial dweight and dbias, summed afterwards.
    let task = |r0: usize, chunk: &mut [T]| -> Vec<T> {
        let mut acc = vec![T::zero(); 2 * d];
        let mut xhat = vec![T::zero(); d];
        for (k, o) in chunk.chunks_mut(d).enumerate() {
            let r = r0 + k;
            let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let (mean, rstd) = moments(xr, eps);
            let (mut m1, mut m2) = (T::zero(), T::zero());
            for j in 0..d {
                xhat[j] = (xr[j] - mean) * rstd;
                let gw = gr[j] * w[j];
                m1 = m1 + gw;
                m2 = m2 + gw * xhat[j];
                acc[j] = acc[j] + gr[j] * xhat[j];
                acc[d + j] = acc[d + j] + gr[j];
            }
            let (m1, m2) = (m1 / n, m2 / n);
            for j in 0..d {
                o[j] = rstd * (gr[j] * w[j] - m1 - xhat[j] * m2);
            }
        }
        acc
    };
    let partials: Vec<Vec<T>> = if per * d >= dx.len() {
        vec![task(0, dx)]
    } else {
        dx.par_chunks_mut(per * d)
            .enumerate()
            .map(|(i, c)| task(i * per, c))
            .collect()
    };
    add_partials(dwb, partials);
    Ok((T::to_cpu_storage_owned(out), Shape::from((rows + 2, d))))
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "attn-layer-norm-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s1, ln_bwd(self.eps, s1, l1, s2, l2, s3, l3))
    }
}

/// Layer norm over the last dimension with weight and bias, fused forward and backward.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })?)
}

// ---------------------------------------------------------------- softmax

/// softmax(scale · x) over the last dimension; with `causal = Some((tq, offset))` the
/// rows are queries `i = row % tq` and only keys `j ≤ offset + i` are seen (the others
/// get weight 0).
#[derive(Clone, Copy)]
struct Softmax {
    scale: f64,
    causal: Option<(usize, usize)>,
}

fn sm_fwd<T: Real>(
    op: Softmax,
    s: &CpuStorage,
    l: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let x = slice::<T>(s, l)?;
    let n = *l.dims().last().unwrap_or(&1);
    if n == 0 {
        return Ok((T::to_cpu_storage_owned(vec![]), l.shape().clone()));
    }
    let scale = T::from(op.scale).unwrap();
    let mut y = vec![T::zero(); x.len()];
    for_rows(&mut y, n, |r0, out| {
        for (k, o) in out.chunks_mut(n).enumerate() {
            let r = r0 + k;
            let xr = &x[r * n..(r + 1) * n];
            let seen = match op.causal {
                Some((tq, offset)) => (offset + r % tq + 1).min(n),
                None => n,
            };
            let max = xr[..seen]
                .iter()
                .fold(T::neg_infinity(), |m, &v| Float::max(m, v * scale));
            let mut sum = T::zero();
            for j in 0..seen {
                let e = (xr[j] * scale - max).exp();
                o[j] = e;
                sum = sum + e;
            }
            let inv = T::one() / sum;
            for v in o[..seen].iter_mut() {
                *v = *v * inv;
            }
        }
    });
    Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "attn-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s, sm_fwd(*self, s, l))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(
            &g.contiguous()?,
            &SoftmaxBwd { scale: self.scale },
        )?))
    }
}

/// dx = scale · y ⊙ (g − Σⱼ gⱼ yⱼ), row by row.
struct SoftmaxBwd {
    scale: f64,
}

fn sm_bwd<T: Real>(
    scale: f64,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (y, g) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?);
    let n = *l1.dims().last().unwrap_or(&1);
    let scale = T::from(scale).unwrap();
    let mut dx = vec![T::zero(); y.len()];
    if n > 0 {
        for_rows(&mut dx, n, |r0, out| {
            for (k, o) in out.chunks_mut(n).enumerate() {
                let r = r0 + k;
                let (yr, gr) = (&y[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
                let dot = yr.iter().zip(gr).map(|(&a, &b)| a * b).sum::<T>();
                for j in 0..n {
                    o[j] = scale * yr[j] * (gr[j] - dot);
                }
            }
        });
    }
    Ok((T::to_cpu_storage_owned(dx), l1.shape().clone()))
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "attn-softmax-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s1, sm_bwd(self.scale, s1, l1, s2, l2))
    }
}

/// softmax(scale · x) over the last dimension, fused forward and backward.
pub fn softmax(x: &Tensor, scale: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Softmax {
        scale,
        causal: None,
    })?)
}

/// Attention weights from raw scores `[.., tq, tk]`: softmax(scale · scores) with the
/// causal mask for queries at positions `offset..offset + tq` (`tk = offset + tq`),
/// without building the mask.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let dims = scores.dims();
    let (tq, tk) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if tk < tq {
        return Err(crate::Error::invalid(
            "attention",
            format!("{tq} queries against only {tk} keys"),
        ));
    }
    Ok(scores.contiguous()?.apply_op1(Softmax {
        scale,
        causal: Some((tq, tk - tq)),
    })?)
}

// ---------------------------------------------------------------- cross-entropy

/// Σ_r w_r · ((1 − ε) · (−log p_r[t_r]) + ε · mean_j(−log p_r[j])) over logits `[n, v]`,
/// targets `[n]` (u32) and row weights `[n]`.
struct CrossEntropy {
    smoothing: f64,
}

/// log Σ exp of a row.
#[inline(always)]
fn logsumexp<T: Real>(row: &[T]) -> T {
    let max = row.iter().fold(T::neg_infinity(), |m, &v| Float::max(m, v));
    max + row.iter().map(|&v| (v - max).exp()).sum::<T>().ln()
}

fn targets<'a>(s: &'a CpuStorage, l: &Layout, v: usize) -> candle_core::Result<&'a [u32]> {
    let t = slice::<u32>(s, l)?;
    if let Some(bad) = t.iter().find(|&&t| t as usize >= v) {
        bail!("cross-entropy: target {bad} is outside the vocabulary of {v}");
    }
    Ok(t)
}

fn ce_fwd<T: Real>(
    eps: f64,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let x = slice::<T>(s1, l1)?;
    let v = *l1.dims().last().unwrap_or(&1);
    let t = targets(s2, l2, v)?;
    let w = slice::<T>(s3, l3)?;
    let n = x.len() / v.max(1);
    if t.len() != n || w.len() != n {
        bail!(
            "cross-entropy: {n} rows, {} targets, {} weights",
            t.len(),
            w.len()
        );
    }
    let eps = T::from(eps).unwrap();
    let vf = T::from(v).unwrap();
    let row_loss = |r: usize| -> T {
        if w[r] == T::zero() {
            return T::zero();
        }
        let xr = &x[r * v..(r + 1) * v];
        let lse = logsumexp(xr);
        let nll = lse - xr[t[r] as usize];
        let smooth = if eps > T::zero() {
            lse - xr.iter().copied().sum::<T>() / vf
        } else {
            T::zero()
        };
        w[r] * ((T::one() - eps) * nll + eps * smooth)
    };
    let loss: T = if x.len() < 2 * PAR_MIN {
        (0..n).map(row_loss).sum()
    } else {
        (0..n).into_par_iter().map(row_loss).sum()
    };
    Ok((T::to_cpu_storage_owned(vec![loss]), Shape::from(())))
}

impl CustomOp3 for CrossEntropy {
    fn name(&self) -> &'static str {
        "attn-cross-entropy"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s1, ce_fwd(self.smoothing, s1, l1, s2, l2, s3, l3))
    }
    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        w: &Tensor,
        _loss: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let scale = g.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let dx = x.apply_op3_no_bwd(
            t,
            w,
            &CrossEntropyBwd {
                smoothing: self.smoothing,
                scale,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

/// d loss / d logits = scale · w_r · (p_r − (1 − ε) · onehot(t_r) − ε / v).
struct CrossEntropyBwd {
    smoothing: f64,
    scale: f64,
}

fn ce_bwd<T: Real>(
    op: &CrossEntropyBwd,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let x = slice::<T>(s1, l1)?;
    let v = *l1.dims().last().unwrap_or(&1);
    let t = targets(s2, l2, v)?;
    let w = slice::<T>(s3, l3)?;
    let eps = T::from(op.smoothing).unwrap();
    let scale = T::from(op.scale).unwrap();
    let uniform = eps / T::from(v).unwrap();
    let mut dx = vec![T::zero(); x.len()];
    for_rows(&mut dx, v, |r0, out| {
        for (k, o) in out.chunks_mut(v).enumerate() {
            let r = r0 + k;
            if w[r] == T::zero() {
                continue;
            }
            let xr = &x[r * v..(r + 1) * v];
            let lse = logsumexp(xr);
            let f = scale * w[r];
            for j in 0..v {
                o[j] = f * ((xr[j] - lse).exp() - uniform);
            }
            let tj = t[r] as usize;
            o[tj] = o[tj] - f * (T::one() - eps);
        }
    });
    Ok((T::to_cpu_storage_owned(dx), l1.shape().clone()))
}

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "attn-cross-entropy-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s1, ce_bwd(self, s1, l1, s2, l2, s3, l3))
    }
}

/// Weighted, label-smoothed softmax cross-entropy, summed over rows: logits `[n, v]`,
/// targets `[n]` (u32), weights `[n]` (same dtype as the logits; `1/n` everywhere gives
/// the mean). Rows of weight 0 cost nothing. Returns a scalar.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    smoothing: f64,
) -> Result<Tensor> {
    Ok(logits.contiguous()?.apply_op3(
        &targets.to_dtype(DType::U32)?.contiguous()?,
        &weights.to_dtype(logits.dtype())?.contiguous()?,
        CrossEntropy { smoothing },
    )?)
}

// ---------------------------------------------------------------- AdamW, in place

/// m ← β·m + (1 − β)·g, or with `square` v ← β·v + (1 − β)·g².
struct Moment {
    beta: f64,
    square: bool,
}

fn moment<T: Real>(
    op: &Moment,
    dst: &mut CpuStorage,
    dl: &Layout,
    g: &CpuStorage,
    gl: &Layout,
) -> candle_core::Result<()> {
    let g = slice::<T>(g, gl)?;
    let Some((a, b)) = dl.contiguous_offsets() else {
        bail!("adamw: moment not contiguous")
    };
    let m = &mut T::slice_mut(dst)?[a..b];
    if m.len() != g.len() {
        bail!("adamw: gradient of {} elements for {}", g.len(), m.len());
    }
    let beta = T::from(op.beta).unwrap();
    let one_m = T::one() - beta;
    for_rows(m, 1, |s, out| {
        for (o, &gv) in out.iter_mut().zip(&g[s..]) {
            let x = if op.square { gv * gv } else { gv };
            *o = beta * *o + one_m * x;
        }
    });
    Ok(())
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "attn-adamw-moment"
    }
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        match dst {
            CpuStorage::F32(_) => moment::<f32>(self, dst, dst_l, g, gl),
            CpuStorage::F64(_) => moment::<f64>(self, dst, dst_l, g, gl),
            s => bail!("adamw: dtype {:?} is not supported", s.dtype()),
        }
    }
}

/// p ← p·(1 − lr·wd) − lr · (m / bc1) / (√(v / bc2) + ε).
struct Update {
    lr: f64,
    decay: f64,
    bc1: f64,
    bc2: f64,
    eps: f64,
}

fn update<T: Real>(
    op: &Update,
    dst: &mut CpuStorage,
    dl: &Layout,
    srcs: [(&CpuStorage, &Layout); 2],
) -> candle_core::Result<()> {
    let [(m, ml), (v, vl)] = srcs;
    let (m, v) = (slice::<T>(m, ml)?, slice::<T>(v, vl)?);
    let Some((a, b)) = dl.contiguous_offsets() else {
        bail!("adamw: parameter not contiguous")
    };
    let p = &mut T::slice_mut(dst)?[a..b];
    if p.len() != m.len() || p.len() != v.len() {
        bail!("adamw: moments do not match the parameter");
    }
    let f = |x: f64| T::from(x).unwrap();
    let (keep, lr, bc1, bc2, eps) = (
        f(1.0 - op.lr * op.decay),
        f(op.lr),
        f(op.bc1),
        f(op.bc2),
        f(op.eps),
    );
    for_rows(p, 1, |s, out| {
        for ((o, &mv), &vv) in out.iter_mut().zip(&m[s..]).zip(&v[s..]) {
            *o = *o * keep - lr * (mv / bc1) / ((vv / bc2).sqrt() + eps);
        }
    });
    Ok(())
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "attn-adamw-update"
    }
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        let srcs = [(m, ml), (v, vl)];
        match dst {
            CpuStorage::F32(_) => update::<f32>(self, dst, dst_l, srcs),
            CpuStorage::F64(_) => update::<f64>(self, dst, dst_l, srcs),
            s => bail!("adamw: dtype {:?} is not supported", s.dtype()),
        }
    }
}

/// One AdamW step for one parameter, in place: moments `m`, `v` and the parameter `p`
/// (all contiguous, same dtype and size as the gradient `g`).
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    p: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    lr: f64,
    decay: f64,
    (beta1, beta2): (f64, f64),
    (bc1, bc2): (f64, f64),
    eps: f64,
) -> Result<()> {
    let g = g.to_dtype(p.dtype())?.contiguous()?;
    m.inplace_op2(
        &g,
        &Moment {
            beta: beta1,
            square: false,
        },
    )?;
    v.inplace_op2(
        &g,
        &Moment {
            beta: beta2,
            square: true,
        },
    )?;
    p.inplace_op3(
        m,
        v,
        &Update {
            lr,
            decay,
            bc1,
            bc2,
            eps,
        },
    )?;
    Ok(())
}

// ---------------------------------------------------------------- small-batch matmul

/// `x [m, k]` times a weight matrix, for the few rows of token-by-token decoding, where
/// a general GEMM cannot reach the memory bandwidth that streaming the weights needs.
/// `w` is `[n, k]` (PyTorch `nn.Linear`, `transposed`: y = x wᵀ) or `[k, n]` (GPT-2
/// `Conv1D`: y = x w). Each weight is read once per call; both cores take half of the
/// outputs.
struct SmallMatmul {
    transposed: bool,
}

/// Largest number of rows sent to the small-batch kernel.
pub const SMALL_M: usize = 4;

mod simd {
    /// Σ a[i]·b[i].
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::cpu::isa() >= crate::kernels::cpu::Isa::Avx2 {
            // SAFETY: the CPU has AVX2 and FMA (isa() checked them).
            return unsafe { dot_avx2(a, b) };
        }
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// y[i] += s·x[i].
    pub fn axpy(s: f32, x: &[f32], y: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::cpu::isa() >= crate::kernels::cpu::Isa::Avx2 {
            // SAFETY: the CPU has AVX2 and FMA (isa() checked them).
            return unsafe { axpy_avx2(s, x, y) };
        }
        for (o, v) in y.iter_mut().zip(x) {
            *o += s * v;
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA (detected at run time by the caller). The slices may
    /// differ in length (the shorter one bounds the sum).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (u, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * u;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), s);
        let mut total: f32 = lanes.iter().sum();
        while i < n {
            total += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        total
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA (detected at run time by the caller). The slices may
    /// differ in length (the shorter one bounds the update).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy_avx2(s: f32, x: &[f32], y: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let sv = _mm256_set1_ps(s);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(sv, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), v);
            i += 8;
        }
        while i < n {
            *py.add(i) += s * *px.add(i);
            i += 1;
        }
    }
}

impl CustomOp2 for SmallMatmul {
    fn name(&self) -> &'static str {
        "attn-small-matmul"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?);
        let (m, k) = l1.shape().dims2()?;
        let (r, c) = l2.shape().dims2()?;
        let n = if self.transposed { r } else { c };
        if (if self.transposed { c } else { r }) != k {
            bail!("small matmul: {:?} times {:?}", l1.shape(), l2.shape());
        }
        let mut y = vec![0f32; m * n];
        let threads = rayon::current_num_threads().clamp(1, 8);
        // Output columns per task, a multiple of 16.
        let per = (n.div_ceil(threads) + 15) / 16 * 16;
        // Each task fills columns [c0, c1) of every row, into its own buffer.
        let task = |c0: usize| -> Vec<f32> {
            let c1 = (c0 + per).min(n);
            let mut out = vec![0f32; m * (c1 - c0)];
            let width = c1 - c0;
            if self.transposed {
                for j in c0..c1 {
                    let wr = &w[j * k..(j + 1) * k];
                    for i in 0..m {
                        out[i * width + j - c0] = simd::dot(&x[i * k..(i + 1) * k], wr);
                    }
                }
            } else {
                for kk in 0..k {
                    let wr = &w[kk * n + c0..kk * n + c1];
                    for i in 0..m {
                        simd::axpy(x[i * k + kk], wr, &mut out[i * width..(i + 1) * width]);
                    }
                }
            }
            out
        };
        let starts: Vec<usize> = (0..n).step_by(per.max(1)).collect();
        let parts: Vec<Vec<f32>> = if starts.len() == 1 || m * n * k < 1 << 16 {
            starts.iter().map(|&c0| task(c0)).collect()
        } else {
            starts.par_iter().map(|&c0| task(c0)).collect()
        };
        for (&c0, part) in starts.iter().zip(parts) {
            let width = (c0 + per).min(n) - c0;
            for i in 0..m {
                y[i * n + c0..i * n + c0 + width]
                    .copy_from_slice(&part[i * width..(i + 1) * width]);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let w = w.detach();
        Ok(if self.transposed {
            (Some(g.matmul(&w)?), Some(g.t()?.matmul(x)?))
        } else {
            (Some(g.matmul(&w.t()?)?), Some(x.t()?.matmul(g)?))
        })
    }
}

/// Whether `x @ w` with `rows` rows should use the small-batch kernel.
pub fn small_matmul_fits(x: &Tensor, w: &Tensor, rows: usize) -> bool {
    rows <= SMALL_M
        && enabled()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && w.rank() == 2
        && w.is_contiguous()
}

/// `x [m, k] @ wᵀ` for `w [n, k]` (transposed) or `x @ w` for `w [k, n]`, m small.
pub fn small_matmul(x: &Tensor, w: &Tensor, transposed: bool) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(w, SmallMatmul { transposed })?)
}

// ---------------------------------------------------------------- panel matmul

/// `a [m, k] @ b'` where `b'` is `b [k, n]`, or `bᵀ` for `b [n, k]` (`transposed`), by
/// the inference engine's panel kernel (see [`crate::kernels::cpu::panel`]): `b'` is packed into
/// 32-column panels once per call (cost k·n, against m·k·n for the product), then
/// streamed against blocks of rows of `a`. The backward pass is two more such products.
struct PanelMatmul {
    transposed: bool,
}

impl candle_core::CustomOp2 for PanelMatmul {
    fn name(&self) -> &'static str {
        "attn-panel-matmul"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use crate::kernels::cpu::panel::{matmul, pack_panel, Panels, NR};
        let (a, b) = (slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?);
        let (m, k) = l1.shape().dims2()?;
        let (r, c) = l2.shape().dims2()?;
        let (kb, n) = if self.transposed { (c, r) } else { (r, c) };
        if kb != k {
            bail!("panel matmul: {:?} times {:?}", l1.shape(), l2.shape());
        }
        let transposed = self.transposed;
        let fill = |p: usize, panel: &mut [f32]| {
            if transposed {
                // b is [n, k]: its rows are the panel's rows.
                pack_panel(b, n, k, p, panel);
            } else {
                let c0 = p * NR;
                let width = NR.min(n - c0);
                if width < NR {
                    panel.iter_mut().for_each(|v| *v = 0.0);
                }
                for kk in 0..k {
                    panel[kk * NR..kk * NR + width]
                        .copy_from_slice(&b[kk * n + c0..kk * n + c0 + width]);
                }
            }
        };
        let mut y = vec![0f32; m * n];
        matmul(a, m, n, k, Panels::Fill(&fill), &mut y);
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let op = |x: &Tensor, y: &Tensor, t: bool| {
            x.contiguous()?
                .apply_op2(&y.contiguous()?, PanelMatmul { transposed: t })
        };
        let (a, b) = (a.detach(), b.detach());
        // y = a·b' ⇒ da = g·b'ᵀ; db' = aᵀ·g, so db = aᵀ·g, or gᵀ·a when b' = bᵀ.
        let da = op(g, &b, !self.transposed)?;
        let db = if self.transposed {
            op(&g.t()?, &a, false)?
        } else {
            op(&a.t()?, g, false)?
        };
        Ok((Some(da), Some(db)))
    }
}

/// Rows from which f32 products on the CPU go through the panel kernel.
pub const PANEL_MIN_M: usize = 8;

/// Whether `x @ w` (or `x @ wᵀ`) with `rows` rows should use the panel kernel.
pub fn panel_matmul_fits(x: &Tensor, w: &Tensor, rows: usize) -> bool {
    rows >= PANEL_MIN_M
        && enabled()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && w.rank() == 2
}

/// `x [m, k] @ w` for `w [k, n]`, or `x @ wᵀ` for `w [n, k]` (`transposed`), through the
/// panel kernel, with its backward pass.
pub fn panel_matmul(x: &Tensor, w: &Tensor, transposed: bool) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op2(&w.contiguous()?, PanelMatmul { transposed })?)
}

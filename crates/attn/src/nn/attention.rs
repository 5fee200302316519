//! Scaled dot-product attention with a causal mask, and the key/value cache used when
//! generating one token at a time.

use candle_core::{Tensor, D};

use super::{dropout, softmax_last, Mode};
use crate::Result;

/// Keys and values of the positions seen so far, one entry per layer, each `[B, H, T, D]`.
///
/// Each layer's keys and values live in a buffer with room for more positions
/// (`[B, H, capacity, D]`); a step writes its new positions in place and attention reads
/// a view of the filled part, so decoding neither copies the cache nor allocates per
/// token (the capacity doubles when it runs out).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    k: Tensor,
    v: Tensor,
    len: usize,
}

/// Positions a fresh cache buffer holds before it first grows.
const INITIAL_CAPACITY: usize = 128;

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        KvCache {
            layers: vec![None; n_layer],
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some(e)) => e.len,
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    /// Keep the rows (batch entries) `idx` of every cached tensor, in that order: how
    /// beam search follows the beams it keeps.
    pub fn select(&mut self, idx: &Tensor) -> Result<()> {
        for e in self.layers.iter_mut().flatten() {
            e.k = e.k.index_select(idx, 0)?;
            e.v = e.v.index_select(idx, 0)?;
        }
        Ok(())
    }

    /// Append this step's keys and values for `layer`; returns all keys and values.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let slot = &mut self.layers[layer];
        let len = slot.as_ref().map_or(0, |e| e.len);
        let cap = slot.as_ref().map_or(0, |e| e.k.dim(2).unwrap_or(0));
        let fits = slot
            .as_ref()
            .is_some_and(|e| e.k.dims()[..2] == [b, h] && e.k.dim(3).ok() == Some(d));
        if !fits && len > 0 {
            return Err(crate::Error::Model(format!(
                "the cache of layer {layer} holds another batch shape than [{b}, {h}, _, {d}]"
            )));
        }
        if !fits || len + t > cap {
            // A new buffer, holding what was cached so far.
            let new_cap = (len + t).max(2 * cap).max(INITIAL_CAPACITY);
            let nk = Tensor::zeros((b, h, new_cap, d), k.dtype(), k.device())?;
            let nv = Tensor::zeros((b, h, new_cap, d), v.dtype(), v.device())?;
            if let Some(e) = slot.as_ref().filter(|_| fits && len > 0) {
                nk.slice_set(&e.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                nv.slice_set(&e.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            let len = if fits { len } else { 0 };
            *slot = Some(Entry { k: nk, v: nv, len });
        }
        let e = slot.as_mut().unwrap();
        e.k.slice_set(&k, 2, e.len)?;
        e.v.slice_set(&v, 2, e.len)?;
        e.len += t;
        Ok((e.k.narrow(2, 0, e.len)?, e.v.narrow(2, 0, e.len)?))
    }
}

/// The additive causal mask for `tq` queries starting at absolute position `offset`
/// against `offset + tq` keys: 0 where key j ≤ query i, −∞ elsewhere.
fn causal_mask(tq: usize, offset: usize, device: &candle_core::Device) -> Result<Tensor> {
    let tk = offset + tq;
    let mask: Vec<f32> = (0..tq)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j <= offset + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (tq, tk), device)?)
}

/// softmax(q kᵀ / √d + causal mask) v, with dropout on the attention weights in training.
/// `q` is `[B, H, Tq, D]`, `k` and `v` are `[B, H, Tk, D]` with `Tk = offset + Tq`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attn_pdrop: f32,
    mode: &mut Mode,
) -> Result<Tensor> {
    let (_, _, tq, hd) = q.dims4()?;
    let tk = k.dim(2)?;
    let offset = tk - tq;
    let scale = 1.0 / (hd as f64).sqrt();
    if super::fused::usable(q) {
        let scores = q.matmul(&k.transpose(D::Minus2, D::Minus1)?)?;
        let w = super::fused::causal_softmax(&scores, scale)?;
        let w = dropout(&w, attn_pdrop, mode)?;
        return Ok(w.matmul(v)?);
    }
    let scores = (q.matmul(&k.transpose(D::Minus2, D::Minus1)?)? * scale)?;
    let scores = if tq > 1 {
        scores.broadcast_add(&causal_mask(tq, offset, q.device())?.to_dtype(q.dtype())?)?
    } else {
        scores
    };
    let w = softmax_last(&scores, mode)?;
    let w = dropout(&w, attn_pdrop, mode)?;
    Ok(w.matmul(v)?)
}

/// The additive padding mask `[B, 1, 1, Tk]` for `mask` `[B, Tk]` (1 = token, 0 =
/// padding): 0 for tokens, the dtype's lowest value for padding, as transformers does.
pub fn padding_mask(mask: &Tensor, dtype: candle_core::DType) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let m = mask.to_dtype(dtype)?;
    let min = match dtype {
        candle_core::DType::F64 => f64::MIN,
        candle_core::DType::F32 => f32::MIN as f64,
        _ => -65504.0,
    };
    Ok(((m.ones_like()? - &m)? * min)?.reshape((b, 1, 1, t))?)
}

/// softmax(q kᵀ / √d + mask) v without causality (encoders, cross-attention); `mask`
/// is additive and broadcast to the scores `[B, H, Tq, Tk]`.
pub fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    pdrop: f32,
    mode: &mut Mode,
) -> Result<Tensor> {
    let hd = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.transpose(D::Minus2, D::Minus1)?)? * (1.0 / (hd as f64).sqrt()))?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let w = dropout(&softmax_last(&scores, mode)?, pdrop, mode)?;
    Ok(w.matmul(v)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn rand(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The in-place cache equals concatenating every step, across growth past its first
    /// capacity, with prefill chunks and single tokens, and after a beam reordering.
    #[test]
    fn cache_equals_concatenation_across_growth_and_select() {
        let mut cache = KvCache::new(2);
        let (mut all_k, mut all_v): (Vec<Tensor>, Vec<Tensor>) = (vec![], vec![]);
        let mut seed = 0;
        for step in 0..300 {
            let t = if step == 0 { 37 } else { 1 };
            seed += 2;
            let (k, v) = (rand((3, 2, t, 4), seed), rand((3, 2, t, 4), seed + 1));
            for layer in 0..2 {
                let (ck, cv) = cache.append(layer, &k, &v).unwrap();
                if layer == 1 {
                    all_k.push(k.clone());
                    all_v.push(v.clone());
                    let (wk, wv) = (
                        Tensor::cat(&all_k, 2).unwrap(),
                        Tensor::cat(&all_v, 2).unwrap(),
                    );
                    let d = (ck - wk).unwrap().abs().unwrap().sum_all().unwrap();
                    let e = (cv - wv).unwrap().abs().unwrap().sum_all().unwrap();
                    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "keys at step {step}");
                    assert_eq!(e.to_scalar::<f32>().unwrap(), 0.0, "values at step {step}");
                }
            }
            if step == 150 {
                let idx = Tensor::new(&[2u32, 2, 0], &Device::Cpu).unwrap();
                cache.select(&idx).unwrap();
                all_k = vec![Tensor::cat(&all_k, 2)
                    .unwrap()
                    .index_select(&idx, 0)
                    .unwrap()];
                all_v = vec![Tensor::cat(&all_v, 2)
                    .unwrap()
                    .index_select(&idx, 0)
                    .unwrap()];
            }
        }
        assert_eq!(cache.len(), 37 + 299);
        // Another batch shape on a filled cache is an error, not silent loss.
        let k = Tensor::zeros((1, 2, 1, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(cache.append(0, &k, &k).is_err());
    }
}

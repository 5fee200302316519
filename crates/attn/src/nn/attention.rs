//! Scaled dot-product attention with a causal mask, and the key/value cache used when
//! generating one token at a time.

use candle_core::{Tensor, D};

use super::{dropout, softmax_last, Mode};
use crate::Result;

/// Keys and values of the positions seen so far, one entry per layer, each `[B, H, T, D]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        KvCache {
            layers: vec![None; n_layer],
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dim(2).unwrap_or(0),
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
        for l in self.layers.iter_mut().flatten() {
            *l = (l.0.index_select(idx, 0)?, l.1.index_select(idx, 0)?);
        }
        Ok(())
    }

    /// Append this step's keys and values for `layer`; returns all keys and values.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let kv = match &self.layers[layer] {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
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

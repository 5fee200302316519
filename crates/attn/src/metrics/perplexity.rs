//! Perplexity of a causal language model on a token stream, with the sliding-window
//! recipe of the transformers perplexity guide: windows of at most `max_length` tokens
//! advanced by `stride`; each token is scored once, by the window that first reaches it,
//! with as much left context as that window gives. `stride == max_length` gives disjoint
//! windows; a smaller stride gives every scored token more context.

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::models::CausalLm;
use crate::nn::Mode;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Perplexity {
    /// Mean negative log-likelihood per scored token, in nats.
    pub nll: f64,
    pub perplexity: f64,
    /// Number of tokens scored (all but the first).
    pub tokens: usize,
}

/// Sum of −log p(target) over the positions `from..` of each row.
fn window_nll(model: &dyn CausalLm, windows: &[&[u32]], from: &[usize]) -> Result<f64> {
    let t = windows[0].len();
    let flat: Vec<u32> = windows.iter().flat_map(|w| w.iter().copied()).collect();
    let x = Tensor::from_vec(flat, (windows.len(), t), &Device::Cpu)?;
    let logits = model.forward(&x, None, &mut Mode::Eval)?;
    let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
    let logp = logp.to_dtype(candle_core::DType::F32)?.to_vec3::<f32>()?;
    let mut sum = 0f64;
    for (r, w) in windows.iter().enumerate() {
        // Position p predicts token p+1.
        for p in from[r]..t - 1 {
            sum -= logp[r][p][w[p + 1] as usize] as f64;
        }
    }
    Ok(sum)
}

pub fn perplexity(
    model: &dyn CausalLm,
    ids: &[u32],
    max_length: usize,
    stride: usize,
    batch: usize,
) -> Result<Perplexity> {
    let ctx = model.context();
    if max_length == 0 || max_length > ctx {
        return Err(Error::invalid(
            "max-length",
            format!("{max_length} must be between 1 and the model's context ({ctx})"),
        ));
    }
    if stride == 0 || stride > max_length {
        return Err(Error::invalid(
            "stride",
            format!("{stride} must be between 1 and max-length ({max_length})"),
        ));
    }
    if ids.len() < 2 {
        return Err(Error::invalid(
            "data",
            "fewer than 2 tokens: nothing to score",
        ));
    }
    // (window start, window end, first target index scored)
    let mut jobs: Vec<(usize, usize, usize)> = vec![];
    let mut prev_end = 0;
    let mut begin = 0;
    while prev_end < ids.len() {
        let end = (begin + max_length).min(ids.len());
        let first_target = prev_end.max(begin + 1);
        if end - begin >= 2 && first_target < end {
            jobs.push((begin, end, first_target));
        }
        prev_end = end;
        begin += stride;
    }
    let mut total = 0f64;
    let mut count = 0usize;
    // Batch windows of equal length together.
    let mut i = 0;
    while i < jobs.len() {
        let len = jobs[i].1 - jobs[i].0;
        let mut j = i;
        while j < jobs.len() && j - i < batch.max(1) && jobs[j].1 - jobs[j].0 == len {
            j += 1;
        }
        let windows: Vec<&[u32]> = jobs[i..j].iter().map(|&(b, e, _)| &ids[b..e]).collect();
        // Target index k is predicted at window position k - begin - 1.
        let from: Vec<usize> = jobs[i..j].iter().map(|&(b, _, f)| f - b - 1).collect();
        total += window_nll(model, &windows, &from)?;
        count += jobs[i..j].iter().map(|&(_, e, f)| e - f).sum::<usize>();
        i = j;
    }
    let nll = total / count as f64;
    Ok(Perplexity {
        nll,
        perplexity: nll.exp(),
        tokens: count,
    })
}

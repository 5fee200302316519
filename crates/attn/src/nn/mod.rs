//! Building blocks shared by every model family: parameters, linear layers, layer norm,
//! attention, dropout.

mod attention;
pub mod fused;
mod params;

pub use attention::{causal_attention, masked_attention, padding_mask, KvCache};
pub use params::{Init, ParamBuilder, Params};

use candle_core::{DType, Device, Tensor, D};

use crate::rng::Rng;
use crate::Result;

/// Whether a forward pass is for training (differentiable paths, dropout drawn from the
/// given generator) or for inference (fused kernels, no dropout).
pub enum Mode<'a> {
    Train(&'a mut Rng),
    Eval,
}

impl Mode<'_> {
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }
}

/// `x @ w + b` with `w` stored `[in, out]` (GPT-2's Conv1D layout). `x` is `[..., in]`.
pub fn conv1d(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = *dims.last().unwrap();
    let rows = x.elem_count() / in_dim;
    let x2 = x.reshape((rows, in_dim))?;
    let y = if fused::small_matmul_fits(&x2, w, rows) {
        fused::small_matmul(&x2, w, false)?
    } else if fused::panel_matmul_fits(&x2, w, rows) {
        fused::panel_matmul(&x2, w, false)?
    } else {
        x2.matmul(w)?
    };
    let y = match b {
        Some(b) if b.rank() == 1 && fused::usable(&y) => fused::add_bias(&y, b)?,
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims;
    *out_dims.last_mut().unwrap() = w.dim(1)?;
    Ok(y.reshape(out_dims)?)
}

/// `x @ wᵀ + b` with `w` stored `[out, in]` (PyTorch `nn.Linear`). `x` is `[..., in]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = *dims.last().unwrap();
    let rows = x.elem_count() / in_dim;
    let x2 = x.reshape((rows, in_dim))?;
    let y = if fused::small_matmul_fits(&x2, w, rows) {
        fused::small_matmul(&x2, w, true)?
    } else if fused::panel_matmul_fits(&x2, w, rows) {
        fused::panel_matmul(&x2, w, true)?
    } else {
        x2.matmul(&w.t()?)?
    };
    let y = match b {
        Some(b) if b.rank() == 1 && fused::usable(&y) => fused::add_bias(&y, b)?,
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims;
    *out_dims.last_mut().unwrap() = w.dim(0)?;
    Ok(y.reshape(out_dims)?)
}

/// Layer normalisation over the last dimension. In training this is written with
/// differentiable primitives: candle's fused `layer_norm` kernel has no backward pass and
/// would silently stop the gradients (see DESIGN.md).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, mode: &Mode) -> Result<Tensor> {
    if fused::usable(x) {
        return fused::layer_norm(x, w, b, eps);
    }
    if !mode.is_train() && x.is_contiguous() && x.dtype() != DType::F64 {
        return Ok(candle_nn::ops::layer_norm(x, w, b, eps as f32)?);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xn.broadcast_mul(w)?.broadcast_add(b)?)
}

/// Softmax over the last dimension; differentiable in training, fused otherwise.
pub fn softmax_last(x: &Tensor, mode: &Mode) -> Result<Tensor> {
    if fused::usable(x) {
        return fused::softmax(x, 1.0);
    }
    if mode.is_train() || x.dtype() == DType::F64 {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}

/// GELU with the tanh approximation (GPT-2's `gelu_new`), fused where possible.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fused::usable(x) {
        return fused::gelu_tanh(x);
    }
    Ok(x.gelu()?)
}

/// Inverted dropout: in training, zero each element with probability `p` and scale the
/// rest by `1/(1-p)`; the mask comes from `rng` so runs are reproducible.
pub fn dropout(x: &Tensor, p: f32, mode: &mut Mode) -> Result<Tensor> {
    match mode {
        Mode::Train(rng) if p > 0.0 => {
            let scale = 1.0 / (1.0 - p);
            let mask: Vec<f32> = (0..x.elem_count())
                .map(|_| if rng.next_f32() < p { 0.0 } else { scale })
                .collect();
            let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
            Ok((x * mask)?)
        }
        _ => Ok(x.clone()),
    }
}

/// Mean cross-entropy of `logits` `[n, vocab]` against `targets` `[n]` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = match logits.dtype() {
        DType::F16 | DType::BF16 => logits.to_dtype(DType::F32)?,
        _ => logits.clone(),
    };
    if fused::usable(&logits) {
        let n = targets.elem_count();
        let w =
            Tensor::full(1.0 / n.max(1) as f64, n, logits.device())?.to_dtype(logits.dtype())?;
        return fused::cross_entropy(&logits, targets, &w, 0.0);
    }
    Ok(candle_nn::loss::cross_entropy(&logits, targets)?)
}

/// Error unless `needed` positions fit a model made for `limit`.
pub fn check_positions(needed: usize, limit: usize) -> Result<()> {
    if needed > limit {
        return Err(crate::Error::invalid(
            "sequence length",
            format!("{needed} positions exceed the model's context of {limit}"),
        ));
    }
    Ok(())
}

/// The device attn computes on: CPU unless built with CUDA and one is present.
pub fn default_device() -> Device {
    Device::Cpu
}

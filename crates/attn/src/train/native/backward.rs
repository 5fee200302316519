//! The decoder's backward pass, written once over [`Ops`]: the operations a backend
//! provides (the CPU's slice kernels with their fused epilogues, in [`super::Cpu`]; the
//! CUDA backend's device buffers and launches, in `gpu.rs`). The pass is the same
//! sequence of operations on either, over the same flat parameter layout, so the
//! parity tests of the CPU pass (transformers' gradients, finite differences) check
//! the composition the GPU runs too.

use super::{Drops, Layout};
use crate::engine::Mlp;
use crate::kernels::cpu::Dropout;

/// A matrix in the flat parameters, at `at`, multiplying from the right: `Nn` stored
/// `[k, n]` (used as it is), `Nt` stored `[n, k]` (used transposed).
#[derive(Clone, Copy)]
pub(super) enum Weight {
    Nn(usize),
    Nt(usize),
}

/// The operations of the backward pass. `B` is an activation buffer (a slice on the
/// CPU, a device buffer on a GPU), at least as long as each operation's sizes ask;
/// every operation reads the parameters and adds to the gradients of the pass the
/// implementation was made for, with that pass's batch `[b, t]`.
pub(super) trait Ops {
    type B: ?Sized;
    /// The CPU's operations cannot fail (`Infallible`); a GPU's report device errors.
    type Err;
    /// `out [m, n] = a [m, k] · w` for `mkn = (m, k, n)`.
    fn matmul(
        &mut self,
        a: &Self::B,
        mkn: (usize, usize, usize),
        w: Weight,
        out: &mut Self::B,
    ) -> Result<(), Self::Err>;
    /// `out [m, n] = (a [m, k] · w) ⊙ by` (the tanh GELU's backward, whose forward left
    /// its derivative in `by`).
    fn matmul_times(
        &mut self,
        a: &Self::B,
        mkn: (usize, usize, usize),
        w: Weight,
        by: &Self::B,
        out: &mut Self::B,
    ) -> Result<(), Self::Err>;
    /// For `sizes = (m, rows, cols)` and `at = (w, bias)`: a weight's gradient `[rows,
    /// cols]` at `w` `+= xᵀ·dy` over `m` rows, and its bias's at `bias` (which directly
    /// follows the matrix) `+= Σ dy`.
    fn weight_grad(
        &mut self,
        x: &Self::B,
        dy: &Self::B,
        sizes: (usize, usize, usize),
        at: (usize, Option<usize>),
    ) -> Result<(), Self::Err>;
    /// SwiGLU's backward, `mf = (m, f)`: `dgu [m, 2f]` from the gradient `d [m, f]` of its output and
    /// the gate and up pre-activations `gu`.
    fn swiglu_backward(
        &mut self,
        d: &Self::B,
        gu: &Self::B,
        mf: (usize, usize),
        dgu: &mut Self::B,
    ) -> Result<(), Self::Err>;
    /// The backward of the norm at `at` (weight, and a LayerNorm's bias after it) of
    /// `x` with row statistics `stats`: `dx += ` the gradient through it of `dy`, and its
    /// weights' gradients.
    fn norm_backward(
        &mut self,
        dy: &Self::B,
        x: &Self::B,
        stats: &Self::B,
        at: usize,
        dx: &mut Self::B,
    ) -> Result<(), Self::Err>;
    /// The attention's backward (queries, keys, values `qkv`, weights `probs`, the
    /// layer's window and dropout): `dqkv` from the heads' output gradient `dy`.
    fn attention_backward(
        &mut self,
        dy: &Self::B,
        qkv: &Self::B,
        probs: &Self::B,
        window: Option<usize>,
        dropout: Option<Dropout>,
        dqkv: &mut Self::B,
    ) -> Result<(), Self::Err>;
    /// The rotary positions' backward on `dqkv` (nothing without them).
    fn rope_backward(&mut self, dqkv: &mut Self::B) -> Result<(), Self::Err>;
    /// `out = dropout(x)` over `n` elements.
    fn dropout_into(
        &mut self,
        x: &Self::B,
        d: Dropout,
        n: usize,
        out: &mut Self::B,
    ) -> Result<(), Self::Err>;
    /// `x = dropout(x)` over `n` elements.
    fn dropout_in_place(&mut self, x: &mut Self::B, d: Dropout, n: usize) -> Result<(), Self::Err>;
    /// Zeroes the first `n` elements.
    fn clear(&mut self, x: &mut Self::B, n: usize) -> Result<(), Self::Err>;
    /// The embeddings' gradients (tokens, and learned positions) from the gradient
    /// `d [b·t, c]` entering the first block.
    fn embed_backward(&mut self, d: &Self::B) -> Result<(), Self::Err>;
}

/// What the forward pass kept: per layer (`L`, indexed by layer; `res` has one more,
/// the stream after the last block), and after the last block. `logits` holds the
/// loss's gradient.
pub(super) struct Kept<'a, L: ?Sized, B: ?Sized> {
    pub res: &'a L,
    pub ln1: &'a L,
    pub ln1_stats: &'a L,
    pub qkv: &'a L,
    pub probs: &'a L,
    pub atty: &'a L,
    pub mid: &'a L,
    pub ln2: &'a L,
    pub ln2_stats: &'a L,
    /// The MLP's first product: the tanh GELU's derivative, or SwiGLU's gate and up.
    pub pre: &'a L,
    pub act: &'a L,
    pub lnf: &'a B,
    pub lnf_stats: &'a B,
    pub logits: &'a B,
}

/// The backward pass's scratch: the residual stream's gradient `dres [m, c]`, the
/// gradient through a branch's dropout `dtmp [m, c]`, `dln [m, max(c, q_width)]`, the
/// MLP's first product's `dbig [m, up]`, SwiGLU's output's `dact [m, f]`, `dqkv [m,
/// width]`.
pub(super) struct Scratch<'a, B: ?Sized> {
    pub dres: &'a mut B,
    pub dtmp: &'a mut B,
    pub dln: &'a mut B,
    pub dbig: &'a mut B,
    pub dact: &'a mut B,
    pub dqkv: &'a mut B,
}

/// The backward pass of the forward pass that filled `s` over a batch of `m` rows:
/// adds every parameter's gradient (through `ops`).
pub(super) fn backward<O, L>(
    ops: &mut O,
    lay: &Layout,
    s: &Kept<'_, L, O::B>,
    d: Scratch<'_, O::B>,
    m: usize,
    drops: Drops,
) -> Result<(), O::Err>
where
    O: Ops,
    L: std::ops::Index<usize, Output = O::B> + ?Sized,
{
    let (c, f, v) = (lay.c, lay.f, lay.vocab);
    let (heads, up) = (lay.heads, lay.up);
    let (qw, width) = (heads.q_width(), heads.width());
    let head = lay.head_at();
    // Output head: dhead += dlogitsᵀ·lnf, dlnf = dlogits·head.
    ops.weight_grad(s.logits, s.lnf, (m, v, c), (head, None))?;
    ops.matmul(s.logits, (m, v, c), Weight::Nn(head), d.dln)?;
    ops.clear(d.dres, m * c)?;
    let nl = lay.blocks.len();
    ops.norm_backward(d.dln, &s.res[nl], s.lnf_stats, lay.lnf, d.dres)?;
    for (l, at) in lay.blocks.iter().enumerate().rev() {
        // MLP: res[l+1] = mid + dropout(act(ln2·Wfc + bfc)·Wfcp + bfcp).
        let dy: &O::B = match drops.resid_mlp(l) {
            Some(dr) => {
                ops.dropout_into(d.dres, dr, m * c, d.dtmp)?;
                d.dtmp
            }
            None => d.dres,
        };
        match lay.mlp {
            Mlp::SwiGlu => {
                ops.matmul(dy, (m, c, f), Weight::Nt(at.fcp_w), d.dact)?;
                ops.swiglu_backward(d.dact, &s.pre[l], (m, f), d.dbig)?;
            }
            _ => ops.matmul_times(dy, (m, c, f), Weight::Nt(at.fcp_w), &s.pre[l], d.dbig)?,
        }
        ops.weight_grad(&s.act[l], dy, (m, f, c), (at.fcp_w, at.fcp_b))?;
        ops.matmul(d.dbig, (m, up, c), Weight::Nt(at.fc_w), d.dln)?;
        ops.weight_grad(&s.ln2[l], d.dbig, (m, c, up), (at.fc_w, at.fc_b))?;
        ops.norm_backward(d.dln, &s.mid[l], &s.ln2_stats[l], at.ln2, d.dres)?;
        // Attention: mid = res[l] + dropout(attn(ln1)·Wproj + bproj).
        let dy: &O::B = match drops.resid_attn(l) {
            Some(dr) => {
                ops.dropout_into(d.dres, dr, m * c, d.dtmp)?;
                d.dtmp
            }
            None => d.dres,
        };
        ops.matmul(dy, (m, c, qw), Weight::Nt(at.proj_w), d.dln)?;
        ops.weight_grad(&s.atty[l], dy, (m, qw, c), (at.proj_w, at.proj_b))?;
        let (window, dropout) = (lay.windows[l], drops.attn(l));
        ops.attention_backward(d.dln, &s.qkv[l], &s.probs[l], window, dropout, d.dqkv)?;
        ops.rope_backward(d.dqkv)?;
        ops.matmul(d.dqkv, (m, width, c), Weight::Nt(at.qkv_w), d.dln)?;
        ops.weight_grad(&s.ln1[l], d.dqkv, (m, c, width), (at.qkv_w, at.qkv_b))?;
        ops.norm_backward(d.dln, &s.res[l], &s.ln1_stats[l], at.ln1, d.dres)?;
    }
    // Embeddings (through their dropout).
    if let Some(dr) = drops.embd() {
        ops.dropout_in_place(d.dres, dr, m * c)?;
    }
    ops.embed_backward(d.dres)
}

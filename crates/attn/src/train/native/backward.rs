//! The decoder's backward pass, written once over [`Ops`]: the operations a backend
//! provides (the CPU's slice kernels with their fused epilogues, in [`super::Cpu`]; the
//! CUDA backend's device buffers and launches, in `gpu.rs`). The pass is the same
//! sequence of operations on either, over the same flat parameter layout, so the
//! parity tests of the CPU pass (transformers' gradients, finite differences) check
//! the composition the GPU runs too.

use std::borrow::BorrowMut;

use super::forward::{Acts, PerLayer};
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

/// The backward pass of the forward pass that filled `a` over a batch of `m` rows (its
/// logits now hold the loss's gradient): adds every parameter's gradient (through `ops`).
pub(super) fn backward<O, L, V>(
    ops: &mut O,
    lay: &Layout,
    a: &mut Acts<L, V>,
    m: usize,
    drops: Drops,
) -> Result<(), O::Err>
where
    O: Ops,
    L: PerLayer<O::B>,
    V: BorrowMut<O::B>,
{
    let (lnf, lnf_stats, logits): (&O::B, &O::B, &O::B) =
        (a.lnf.borrow(), a.lnf_stats.borrow(), a.logits.borrow());
    let (dres, dtmp, dln): (&mut O::B, &mut O::B, &mut O::B) =
        (a.dres.borrow_mut(), a.dtmp.borrow_mut(), a.dln.borrow_mut());
    let (dbig, dact, dqkv): (&mut O::B, &mut O::B, &mut O::B) = (
        a.dbig.borrow_mut(),
        a.dact.borrow_mut(),
        a.dqkv.borrow_mut(),
    );
    let (c, f, v) = (lay.c, lay.f, lay.vocab);
    let (heads, up) = (lay.heads, lay.up);
    let (qw, width) = (heads.q_width(), heads.width());
    let head = lay.head_at();
    // Output head: dhead += dlogitsᵀ·lnf, dlnf = dlogits·head.
    ops.weight_grad(logits, lnf, (m, v, c), (head, None))?;
    ops.matmul(logits, (m, v, c), Weight::Nn(head), dln)?;
    ops.clear(dres, m * c)?;
    let nl = lay.blocks.len();
    ops.norm_backward(dln, a.res.at(nl), lnf_stats, lay.lnf, dres)?;
    for (l, at) in lay.blocks.iter().enumerate().rev() {
        // MLP: res[l+1] = mid + dropout(act(ln2·Wfc + bfc)·Wfcp + bfcp).
        let dy: &O::B = match drops.resid_mlp(l) {
            Some(dr) => {
                ops.dropout_into(dres, dr, m * c, dtmp)?;
                &*dtmp
            }
            None => &*dres,
        };
        match lay.mlp {
            Mlp::SwiGlu => {
                ops.matmul(dy, (m, c, f), Weight::Nt(at.fcp_w), dact)?;
                ops.swiglu_backward(dact, a.pre.at(l), (m, f), dbig)?;
            }
            _ => ops.matmul_times(dy, (m, c, f), Weight::Nt(at.fcp_w), a.pre.at(l), dbig)?,
        }
        ops.weight_grad(a.act.at(l), dy, (m, f, c), (at.fcp_w, at.fcp_b))?;
        ops.matmul(dbig, (m, up, c), Weight::Nt(at.fc_w), dln)?;
        ops.weight_grad(a.ln2.at(l), dbig, (m, c, up), (at.fc_w, at.fc_b))?;
        ops.norm_backward(dln, a.mid.at(l), a.ln2_stats.at(l), at.ln2, dres)?;
        // Attention: mid = res[l] + dropout(attn(ln1)·Wproj + bproj).
        let dy: &O::B = match drops.resid_attn(l) {
            Some(dr) => {
                ops.dropout_into(dres, dr, m * c, dtmp)?;
                &*dtmp
            }
            None => &*dres,
        };
        ops.matmul(dy, (m, c, qw), Weight::Nt(at.proj_w), dln)?;
        ops.weight_grad(a.atty.at(l), dy, (m, qw, c), (at.proj_w, at.proj_b))?;
        let (window, dropout) = (lay.windows[l], drops.attn(l));
        ops.attention_backward(dln, a.qkv.at(l), a.probs.at(l), window, dropout, dqkv)?;
        ops.rope_backward(dqkv)?;
        ops.matmul(dqkv, (m, width, c), Weight::Nt(at.qkv_w), dln)?;
        ops.weight_grad(a.ln1.at(l), dqkv, (m, c, width), (at.qkv_w, at.qkv_b))?;
        ops.norm_backward(dln, a.res.at(l), a.ln1_stats.at(l), at.ln1, dres)?;
    }
    // Embeddings (through their dropout).
    if let Some(dr) = drops.embd() {
        ops.dropout_in_place(dres, dr, m * c)?;
    }
    ops.embed_backward(dres)
}

//! The decoder's training forward pass, written once over a backend: the embeddings,
//! the first norm, the engine's block ([`block::forward`], the same composition
//! inference runs) for every layer with every buffer kept for the backward pass, and
//! the output head. The CPU's operations are [`block::Cpu`] and [`super::CpuPass`]; the
//! CUDA backend's are in `gpu.rs`.

use std::borrow::BorrowMut;

use super::Layout;
use crate::engine::block::{self, Backend, Exec, NormW};
use crate::engine::Mlp;
use crate::kernels::cpu::Dropout;
use crate::train::profile::time;

/// An activation buffer per layer (`res` has one more, the stream after the last block).
pub(super) trait PerLayer<B: ?Sized> {
    fn at(&self, l: usize) -> &B;
    fn at_mut(&mut self, l: usize) -> &mut B;
    /// Layer `l`'s buffer, and layer `l + 1`'s to write.
    fn pair_mut(&mut self, l: usize) -> (&B, &mut B);
}

/// Buffer type of a backend.
type Buf<K> = <K as Backend>::B;

/// What a backend gives the forward pass besides the block's operations; the batch
/// `[b, t]`, the parameters and the positions are the implementation's.
pub(super) trait Pass {
    type K: Backend;
    type Err;
    /// The embeddings of the batch's tokens (and learned positions) into `x [b·t, c]`.
    fn embed(&self, x: &mut Buf<Self::K>) -> Result<(), Self::Err>;
    /// The norm whose weights are at `at` of the `b·t` rows of `x`.
    fn norm(
        &self,
        x: &Buf<Self::K>,
        at: usize,
        out: &mut Buf<Self::K>,
        stats: &mut Buf<Self::K>,
    ) -> Result<(), Self::Err>;
    /// Layer `l`'s positions (rotary, on the queries and keys of `qkv`) and attention
    /// (with `dropout` on its weights): the weights into `probs`, the heads' outputs into
    /// `atty`.
    fn attend(
        &self,
        l: usize,
        qkv: &mut Buf<Self::K>,
        probs: &mut Buf<Self::K>,
        atty: &mut Buf<Self::K>,
        dropout: Option<Dropout>,
    ) -> Result<(), Self::Err>;
    /// Block `l`'s weights.
    fn weights(&self, l: usize) -> block::Weights<'_, Self::K>;
    /// The norm whose weights are at `at`.
    fn norm_w(&self, at: usize) -> NormW<'_, Self::K>;
    /// The output head `[vocab, c]`, as a product's right-hand side (transposed).
    fn head(&self) -> <Self::K as Backend>::W<'_>;
}

/// The forward pass over `m` rows up to the logits, with the pass's dropout `drops`
/// (none in evaluation).
pub(super) fn forward<X, P, L, V>(
    ex: &mut X,
    pass: &P,
    lay: &Layout,
    f: &mut Acts<L, V>,
    m: usize,
    drops: super::Drops,
) -> Result<(), X::Err>
where
    X: Exec,
    P: Pass<K = X::K, Err = X::Err>,
    L: PerLayer<Buf<X::K>>,
    V: BorrowMut<Buf<X::K>>,
{
    let c = lay.c;
    pass.embed(f.res.at_mut(0))?;
    if let Some(d) = drops.embd() {
        ex.drop_in_place(f.res.at_mut(0), m * c, d)?;
    }
    let shape = lay.shape();
    let nl = lay.blocks.len();
    for (l, at) in lay.blocks.iter().enumerate() {
        if l == 0 {
            let (ln1, stats) = (f.ln1.at_mut(0), f.ln1_stats.at_mut(0));
            time("layer_norm", || pass.norm(f.res.at(0), at.ln1, ln1, stats))?;
        }
        // The block's output is normed by the next block's first norm, or the final one.
        let (ln1, next) = if l + 1 < nl {
            let nb = lay.blocks[l + 1].ln1;
            let (ln1, next) = f.ln1.pair_mut(l);
            let stats = f.ln1_stats.at_mut(l + 1);
            (ln1, pass.norm_w(nb).into(lay.eps, next, stats))
        } else {
            let ln1 = f.ln1.at(l);
            let (lnf, stats) = (f.lnf.borrow_mut(), f.lnf_stats.borrow_mut());
            (ln1, pass.norm_w(lay.lnf).into(lay.eps, lnf, stats))
        };
        let (res, out) = f.res.pair_mut(l);
        let io = block::Io {
            ln1,
            qkv: f.qkv.at_mut(l),
            atty: f.atty.at_mut(l),
            res,
            mid: f.mid.at_mut(l),
            ln2: f.ln2.at_mut(l),
            ln2_stats: f.ln2_stats.at_mut(l),
            pre: f.pre.at_mut(l),
            act: f.act.at_mut(l),
            train: true,
            out,
            next,
        };
        let (probs, dropout) = (f.probs.at_mut(l), drops.attn(l));
        let attend =
            |qkv: &mut Buf<X::K>, atty: &mut Buf<X::K>| pass.attend(l, qkv, probs, atty, dropout);
        let d = block::Drops {
            attn: drops.resid_attn(l),
            mlp: drops.resid_mlp(l),
        };
        block::forward(ex, &shape, &pass.weights(l), io, m, m, attend, d)?;
    }
    // The final norm was applied in the last block's residual epilogue.
    let (lnf, logits): (&Buf<X::K>, _) = (f.lnf.borrow(), f.logits.borrow_mut());
    time("gemm", || {
        ex.gemm_bias(lnf, (m, c, lay.vocab), pass.head(), None, logits)
    })
}

/// A training pass's buffers for one batch shape `[b, t]`, on either backend: what the
/// forward pass keeps for the backward pass, per layer (`L`, one buffer a layer; `res`
/// has one more, the stream after the last block) and after the last block (`V`), and
/// the backward pass's scratch (`V`).
#[derive(Default)]
pub(super) struct Acts<L, V> {
    pub b: usize,
    pub t: usize,
    pub res: L,
    pub ln1: L,
    pub ln1_stats: L,
    pub qkv: L,
    pub probs: L,
    pub atty: L,
    pub mid: L,
    pub ln2: L,
    pub ln2_stats: L,
    /// The MLP's first product: the tanh GELU's derivative, or SwiGLU's gate and up.
    pub pre: L,
    pub act: L,
    pub lnf: V,
    pub lnf_stats: V,
    /// The logits, then (after the loss) their gradient.
    pub logits: V,
    /// The residual stream's gradient `[m, c]`.
    pub dres: V,
    /// The gradient through a residual branch's dropout `[m, c]`.
    pub dtmp: V,
    /// `[m, max(c, q_width)]`.
    pub dln: V,
    /// The MLP's first product's gradient `[m, up]`.
    pub dbig: V,
    /// SwiGLU's output's gradient `[m, f]`.
    pub dact: V,
    pub dqkv: V,
}

impl<L, V> Acts<L, V> {
    /// The buffers of a pass over `[b, t]`: `per(n, count)` makes `count` buffers of `n`
    /// floats, `one(n)` one.
    pub fn new<E>(
        lay: &Layout,
        (b, t): (usize, usize),
        mut per: impl FnMut(usize, usize) -> Result<L, E>,
        mut one: impl FnMut(usize) -> Result<V, E>,
    ) -> Result<Self, E> {
        let (m, c, f, nl) = (b * t, lay.c, lay.f, lay.blocks.len());
        let (w, qw, up) = (lay.heads.width(), lay.heads.q_width(), lay.up);
        Ok(Acts {
            b,
            t,
            res: per(m * c, nl + 1)?,
            ln1: per(m * c, nl)?,
            ln1_stats: per(2 * m, nl)?,
            qkv: per(m * w, nl)?,
            probs: per(b * lay.heads.n * t * t, nl)?,
            atty: per(m * qw, nl)?,
            mid: per(m * c, nl)?,
            ln2: per(m * c, nl)?,
            ln2_stats: per(2 * m, nl)?,
            pre: per(m * up, nl)?,
            act: per(m * f, nl)?,
            lnf: one(m * c)?,
            lnf_stats: one(2 * m)?,
            logits: one(m * lay.vocab)?,
            dres: one(m * c)?,
            dtmp: one(m * c)?,
            dln: one(m * c.max(qw))?,
            dbig: one(m * up)?,
            dact: one(if lay.mlp == Mlp::SwiGlu { m * f } else { 1 })?,
            dqkv: one(m * w)?,
        })
    }
}

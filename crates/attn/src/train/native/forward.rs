//! The decoder's training forward pass, written once over a backend: the embeddings,
//! the first norm, the engine's block ([`block::forward`], the same composition
//! inference runs) for every layer with every buffer kept for the backward pass, and
//! the output head. The CPU's operations are [`block::Cpu`] and [`super::CpuPass`]; the
//! CUDA backend's are in `gpu.rs`.

use std::borrow::BorrowMut;

use super::backward::{Kept, Scratch};
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

/// The buffers the forward pass fills (see `Kept` in [`super::backward`]).
pub(super) struct Fill<'a, L: ?Sized, B: ?Sized> {
    pub res: &'a mut L,
    pub ln1: &'a mut L,
    pub ln1_stats: &'a mut L,
    pub qkv: &'a mut L,
    pub probs: &'a mut L,
    pub atty: &'a mut L,
    pub mid: &'a mut L,
    pub ln2: &'a mut L,
    pub ln2_stats: &'a mut L,
    pub pre: &'a mut L,
    pub act: &'a mut L,
    pub lnf: &'a mut B,
    pub lnf_stats: &'a mut B,
    pub logits: &'a mut B,
}

/// The forward pass over `m` rows up to the logits, with the pass's dropout `drops`
/// (none in evaluation).
pub(super) fn forward<X, P, L>(
    ex: &mut X,
    pass: &P,
    lay: &Layout,
    f: Fill<'_, L, Buf<X::K>>,
    m: usize,
    drops: super::Drops,
) -> Result<(), X::Err>
where
    X: Exec,
    P: Pass<K = X::K, Err = X::Err>,
    L: PerLayer<Buf<X::K>> + ?Sized,
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
            let (lnf, stats) = (&mut *f.lnf, &mut *f.lnf_stats);
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
    let (lnf, logits) = (&*f.lnf, &mut *f.logits);
    time("gemm", || {
        ex.gemm_bias(lnf, (m, c, lay.vocab), pass.head(), None, logits)
    })
}

/// A training pass's buffers for one batch shape `[b, t]`, on either backend: what the
/// forward pass keeps for the backward pass, per layer (`L`, one buffer a layer; `res`
/// has one more, the stream after the last block) and after the last block (`V`), and
/// the backward pass's scratch (`V`; see [`Kept`] and [`Scratch`]).
#[derive(Default)]
pub(super) struct Acts<L, V> {
    pub b: usize,
    pub t: usize,
    res: L,
    ln1: L,
    ln1_stats: L,
    qkv: L,
    probs: L,
    atty: L,
    mid: L,
    ln2: L,
    ln2_stats: L,
    pre: L,
    act: L,
    lnf: V,
    lnf_stats: V,
    pub logits: V,
    dres: V,
    dtmp: V,
    dln: V,
    dbig: V,
    dact: V,
    dqkv: V,
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
            // The tanh GELU's derivative, or SwiGLU's gate and up pre-activations.
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

    /// The buffers the forward pass fills.
    pub fn fill<B: ?Sized>(&mut self) -> Fill<'_, L, B>
    where
        V: BorrowMut<B>,
    {
        Fill {
            res: &mut self.res,
            ln1: &mut self.ln1,
            ln1_stats: &mut self.ln1_stats,
            qkv: &mut self.qkv,
            probs: &mut self.probs,
            atty: &mut self.atty,
            mid: &mut self.mid,
            ln2: &mut self.ln2,
            ln2_stats: &mut self.ln2_stats,
            pre: &mut self.pre,
            act: &mut self.act,
            lnf: self.lnf.borrow_mut(),
            lnf_stats: self.lnf_stats.borrow_mut(),
            logits: self.logits.borrow_mut(),
        }
    }

    /// What the backward pass reads, and its scratch.
    pub fn backward_io<B: ?Sized>(&mut self) -> (Kept<'_, L, B>, Scratch<'_, B>)
    where
        V: BorrowMut<B>,
    {
        let kept = Kept {
            res: &self.res,
            ln1: &self.ln1,
            ln1_stats: &self.ln1_stats,
            qkv: &self.qkv,
            probs: &self.probs,
            atty: &self.atty,
            mid: &self.mid,
            ln2: &self.ln2,
            ln2_stats: &self.ln2_stats,
            pre: &self.pre,
            act: &self.act,
            lnf: self.lnf.borrow(),
            lnf_stats: self.lnf_stats.borrow(),
            logits: self.logits.borrow(),
        };
        let scratch = Scratch {
            dres: self.dres.borrow_mut(),
            dtmp: self.dtmp.borrow_mut(),
            dln: self.dln.borrow_mut(),
            dbig: self.dbig.borrow_mut(),
            dact: self.dact.borrow_mut(),
            dqkv: self.dqkv.borrow_mut(),
        };
        (kept, scratch)
    }
}

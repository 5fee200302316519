//! The pre-norm block, written once for training and inference, of every pre-norm family
//! (GPT-2, Llama, Qwen2, Mistral, T5): the attention sublayer — the fused
//! query/key/value product, the attention its caller runs (a whole batch of equal
//! sequences when training; ragged sequences against their key/value caches when
//! decoding; T5's with its position bias), the output projection with the residual sum
//! and the next norm — and the MLP sublayer (GELU, ReLU, SiLU, SwiGLU and other gated
//! MLPs) with its residual sum and the next norm: the next sublayer's, or the final one.
//! A cross-attention is the attention sublayer with a queries-only first product.
//!
//! The block is written over a backend's operations ([`Exec`]): the CPU's ([`Cpu`]),
//! whose products take the trainer's flat `[in, out]` matrices or inference's (f32
//! panels, f16, 8- or 4-bit blocks) as [`Rhs`] and add the biases, residuals, dropout
//! and norms in their epilogues while each block of rows is in cache; or a GPU's (the
//! decoder trainer's, `train::native::gpu`), where the same steps are separate launches.
//! The trainer keeps every buffer written here for its backward pass
//! (`train::native::backward`); the engine reuses them from layer to layer.

use std::convert::Infallible;

use super::Mlp;
use crate::kernels::cpu::{self as k, Dropout, Heads, Rhs};
use crate::train::profile::time;

/// What a backend's buffers and weights are: an activation buffer `B`, a vector of
/// weights (a bias, a norm's weight) `Vector`, and a matrix `W`, the right-hand side of
/// a product.
pub(crate) trait Backend {
    type B: ?Sized;
    type Vector: ?Sized;
    type W<'a>: Copy;
}

/// The CPU's memory: slices, and the products' right-hand sides.
#[derive(Clone, Copy)]
pub(crate) struct Host;

impl Backend for Host {
    type B = [f32];
    type Vector = [f32];
    type W<'a> = Rhs<'a>;
}

/// A backend's operations on a block, for `m` rows (`mkn`: an `[m, k]` input, `n`
/// outputs). The CPU's cannot fail (`Err = Infallible`); a GPU's report device errors.
pub(crate) trait Exec {
    type K: Backend;
    type Err;
    /// `out [m, n] = x [m, k] · w (+ b)`.
    fn gemm_bias(
        &mut self,
        x: &<Self::K as Backend>::B,
        mkn: (usize, usize, usize),
        w: <Self::K as Backend>::W<'_>,
        b: Option<&<Self::K as Backend>::Vector>,
        out: &mut <Self::K as Backend>::B,
    ) -> Result<(), Self::Err>;
    /// `out = res + drop(x · w (+ b))`, and `next` the norm of `out`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_bias_residual(
        &mut self,
        x: &<Self::K as Backend>::B,
        mkn: (usize, usize, usize),
        w: <Self::K as Backend>::W<'_>,
        b: Option<&<Self::K as Backend>::Vector>,
        res: &<Self::K as Backend>::B,
        out: &mut <Self::K as Backend>::B,
        drop: Option<Dropout>,
        next: NormOut<'_, Self::K>,
    ) -> Result<(), Self::Err>;
    /// The tanh GELU of `x · w + b` into `act`, and its derivative there into `pre`.
    fn gemm_bias_gelu(
        &mut self,
        x: &<Self::K as Backend>::B,
        mkn: (usize, usize, usize),
        w: <Self::K as Backend>::W<'_>,
        b: &<Self::K as Backend>::Vector,
        pre: &mut <Self::K as Backend>::B,
        act: &mut <Self::K as Backend>::B,
    ) -> Result<(), Self::Err>;
    /// A gated MLP's activation `act [m, inner]` of its gate and up products `gu [m,
    /// 2·inner]`.
    fn gate(
        &mut self,
        mlp: Mlp,
        mi: (usize, usize),
        gu: &mut <Self::K as Backend>::B,
        act: &mut <Self::K as Backend>::B,
    ) -> Result<(), Self::Err>;
    /// An ungated MLP's activation, in place on `x [m, inner]`.
    fn activate(
        &mut self,
        mlp: Mlp,
        mi: (usize, usize),
        x: &mut <Self::K as Backend>::B,
    ) -> Result<(), Self::Err>;
    /// `out[..n] = x[..n]`.
    fn copy(
        &mut self,
        x: &<Self::K as Backend>::B,
        n: usize,
        out: &mut <Self::K as Backend>::B,
    ) -> Result<(), Self::Err>;
    /// `x[..n] = d(x[..n])`.
    fn drop_in_place(
        &mut self,
        x: &mut <Self::K as Backend>::B,
        n: usize,
        d: Dropout,
    ) -> Result<(), Self::Err>;
}

/// The CPU's operations: the kernels of [`crate::kernels::cpu`], with their scratch for
/// packed right-hand sides.
pub(crate) struct Cpu<'p>(pub &'p mut Vec<f32>);

impl Exec for Cpu<'_> {
    type K = Host;
    type Err = Infallible;

    fn gemm_bias(
        &mut self,
        x: &[f32],
        (m, k, n): (usize, usize, usize),
        w: Rhs<'_>,
        b: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<(), Infallible> {
        k::gemm_bias(x, m, k, n, w, b, out, self.0);
        Ok(())
    }

    fn gemm_bias_residual(
        &mut self,
        x: &[f32],
        (m, k, n): (usize, usize, usize),
        w: Rhs<'_>,
        b: Option<&[f32]>,
        res: &[f32],
        out: &mut [f32],
        drop: Option<Dropout>,
        next: NormOut<'_>,
    ) -> Result<(), Infallible> {
        let next = k::NormOut {
            w: next.w,
            b: next.b,
            eps: next.eps,
            out: next.out,
            stats: next.stats,
        };
        k::gemm_bias_residual(x, m, k, n, w, b, res, out, self.0, drop, Some(next));
        Ok(())
    }

    fn gemm_bias_gelu(
        &mut self,
        x: &[f32],
        (m, k, n): (usize, usize, usize),
        w: Rhs<'_>,
        b: &[f32],
        pre: &mut [f32],
        act: &mut [f32],
    ) -> Result<(), Infallible> {
        k::gemm_bias_gelu(x, m, k, n, w, b, pre, act, self.0);
        Ok(())
    }

    fn gate(
        &mut self,
        mlp: Mlp,
        (m, inner): (usize, usize),
        gu: &mut [f32],
        act: &mut [f32],
    ) -> Result<(), Infallible> {
        match mlp {
            Mlp::SwiGlu => k::swiglu(gu, m, inner, act),
            _ => {
                let (gu, act) = (&mut gu[..m * 2 * inner], &mut act[..m * inner]);
                super::decoder::activate(mlp, inner, gu, act);
            }
        }
        Ok(())
    }

    fn activate(
        &mut self,
        mlp: Mlp,
        (m, inner): (usize, usize),
        x: &mut [f32],
    ) -> Result<(), Infallible> {
        super::decoder::activate(mlp, inner, &mut x[..m * inner], &mut []);
        Ok(())
    }

    fn copy(&mut self, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), Infallible> {
        out[..n].copy_from_slice(&x[..n]);
        Ok(())
    }

    fn drop_in_place(&mut self, x: &mut [f32], n: usize, d: Dropout) -> Result<(), Infallible> {
        super::sublayers::drop_in_place(&mut x[..n], Some(d));
        Ok(())
    }
}

/// A norm's weight and, for a LayerNorm, its bias (RMSNorm has none).
pub(crate) struct NormW<'a, K: Backend + ?Sized = Host> {
    pub w: &'a K::Vector,
    pub b: Option<&'a K::Vector>,
}

impl<K: Backend + ?Sized> Clone for NormW<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: Backend + ?Sized> Copy for NormW<'_, K> {}

impl<'a, K: Backend + ?Sized> NormW<'a, K> {
    /// The norm, written to `out` (and each row's statistics to `stats`) by the
    /// product that computes its input.
    pub fn into<'o>(self, eps: f32, out: &'o mut K::B, stats: &'o mut K::B) -> NormOut<'o, K>
    where
        'a: 'o,
    {
        NormOut {
            w: self.w,
            b: self.b,
            eps,
            out,
            stats,
        }
    }
}

/// A norm to apply to a product's output rows: its weights, and where the normed rows
/// and each row's statistics (mean, 0 for RMSNorm, and 1/√(var + eps)) go.
pub(crate) struct NormOut<'o, K: Backend + ?Sized = Host> {
    pub w: &'o K::Vector,
    pub b: Option<&'o K::Vector>,
    pub eps: f32,
    pub out: &'o mut K::B,
    pub stats: &'o mut K::B,
}

/// The sizes of a block.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub c: usize,
    pub heads: Heads,
    /// The MLP's hidden width, and the columns of its first product (`2·inner` for the
    /// gated MLPs: gate, then up).
    pub inner: usize,
    pub up: usize,
    pub mlp: Mlp,
    pub eps: f32,
}

/// One block's weights (its first norm is applied by whatever computes its input).
pub(crate) struct Weights<'a, K: Backend + ?Sized = Host> {
    pub qkv: K::W<'a>,
    pub qkv_b: Option<&'a K::Vector>,
    pub proj: K::W<'a>,
    pub proj_b: Option<&'a K::Vector>,
    pub norm2: NormW<'a, K>,
    pub mlp: MlpWeights<'a, K>,
}

/// The buffers of one block: its input and output, and everything in between (which
/// the trainer keeps for the backward pass). `m` rows enter; `kept` rows leave (fewer
/// when decoding wants only each sequence's last position after the last block).
pub(crate) struct Io<'a, K: Backend + ?Sized = Host> {
    /// The residual stream entering the block, normed: `[m, c]`.
    pub ln1: &'a K::B,
    /// `[m, heads.width()]`: queries, keys, values.
    pub qkv: &'a mut K::B,
    /// The heads' outputs side by side, `[kept, heads.q_width()]`.
    pub atty: &'a mut K::B,
    /// The residual stream entering the block, the rows kept: `[kept, c]`.
    pub res: &'a K::B,
    /// The residual stream after attention, `[kept, c]`.
    pub mid: &'a mut K::B,
    /// `mid` normed, `[kept, c]`, and its statistics `[kept, 2]`.
    pub ln2: &'a mut K::B,
    pub ln2_stats: &'a mut K::B,
    /// The MLP's first product `[kept, up]`: a gated MLP's gate and up pre-activations;
    /// when training, an ungated MLP's pre-activations (the tanh GELU with a bias: its
    /// derivative); otherwise the activations themselves.
    pub pre: &'a mut K::B,
    /// The activations `[kept, inner]` (gated MLPs, and every MLP when training).
    pub act: &'a mut K::B,
    /// Whether a backward pass follows (see `pre`).
    pub train: bool,
    /// The residual stream leaving the block, `[kept, c]`.
    pub out: &'a mut K::B,
    /// Where the norm of `out` goes: the next block's first norm or the final one.
    pub next: NormOut<'a, K>,
}

/// Dropout on the two residual branches (none in evaluation and inference).
#[derive(Clone, Copy, Default)]
pub(crate) struct Drops {
    pub attn: Option<Dropout>,
    pub mlp: Option<Dropout>,
}

/// Run one block over `m` rows, `kept` of which leave it, on `ex`'s operations.
/// `attend(qkv, atty)` applies the positions and the attention: it reads the `m` rows
/// of `qkv` and writes the `kept` rows of `atty`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<X: Exec>(
    ex: &mut X,
    s: &Shape,
    w: &Weights<'_, X::K>,
    io: Io<'_, X::K>,
    m: usize,
    kept: usize,
    attend: impl FnOnce(&mut <X::K as Backend>::B, &mut <X::K as Backend>::B) -> Result<(), X::Err>,
    drops: Drops,
) -> Result<(), X::Err> {
    let Io {
        ln1,
        qkv,
        atty,
        res,
        mid,
        ln2,
        ln2_stats,
        pre,
        act,
        train,
        out,
        next,
    } = io;
    let first = First {
        w: w.qkv,
        b: w.qkv_b,
        width: s.heads.width(),
    };
    let ln2_out = w.norm2.into(s.eps, &mut *ln2, &mut *ln2_stats);
    let rows = (m, kept);
    let proj = (w.proj, w.proj_b);
    let sub = Sublayer {
        res,
        out: mid,
        next: ln2_out,
        drop: drops.attn,
    };
    attention(ex, s, first, proj, ln1, (qkv, atty), rows, attend, sub)?;
    let sub = Sublayer {
        res: mid,
        out,
        next,
        drop: drops.mlp,
    };
    mlp(ex, s, &w.mlp, ln2, (pre, act), train, kept, None, sub)
}

/// An attention sublayer's first product: `[width, in]` (queries, keys and values side
/// by side; the queries alone for a cross-attention, whose keys and values come from
/// elsewhere) and its bias.
pub(crate) struct First<'a, K: Backend + ?Sized = Host> {
    pub w: K::W<'a>,
    pub b: Option<&'a K::Vector>,
    pub width: usize,
}

/// An MLP's products and biases.
pub(crate) struct MlpWeights<'a, K: Backend + ?Sized = Host> {
    pub up: K::W<'a>,
    pub up_b: Option<&'a K::Vector>,
    pub down: K::W<'a>,
    pub down_b: Option<&'a K::Vector>,
}

/// A pre-norm sublayer's end: `out = res + drop(branch)`, and `next` the norm of `out`.
pub(crate) struct Sublayer<'a, K: Backend + ?Sized = Host> {
    pub res: &'a K::B,
    pub out: &'a mut K::B,
    pub next: NormOut<'a, K>,
    pub drop: Option<Dropout>,
}

/// The attention sublayer over `m` rows of the normed stream `ln`, `kept` of which
/// leave it: the first product into `bufs.0`, then `attend(bufs.0, bufs.1)`, then the
/// output projection `proj` with the residual sum and the next norm (`sub`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<X: Exec>(
    ex: &mut X,
    s: &Shape,
    first: First<'_, X::K>,
    proj: (<X::K as Backend>::W<'_>, Option<&<X::K as Backend>::Vector>),
    ln: &<X::K as Backend>::B,
    (qkv, atty): (&mut <X::K as Backend>::B, &mut <X::K as Backend>::B),
    (m, kept): (usize, usize),
    attend: impl FnOnce(&mut <X::K as Backend>::B, &mut <X::K as Backend>::B) -> Result<(), X::Err>,
    sub: Sublayer<'_, X::K>,
) -> Result<(), X::Err> {
    let (c, qw) = (s.c, s.heads.q_width());
    time("gemm qkv", || {
        ex.gemm_bias(ln, (m, c, first.width), first.w, first.b, qkv)
    })?;
    time("attention", || attend(qkv, atty))?;
    time("gemm proj", || {
        ex.gemm_bias_residual(
            atty,
            (kept, qw, c),
            proj.0,
            proj.1,
            sub.res,
            sub.out,
            sub.drop,
            sub.next,
        )
    })
}

/// The MLP sublayer over `kept` rows of the normed stream `ln`: the first product into
/// `bufs.0`, its activation (into `bufs.1` when gated or when training, which keeps the
/// pre-activations in `bufs.0`, or the tanh GELU's derivative there when it has a bias,
/// the decoder trainer's), the activation's dropout `drop_act`, the second product with
/// the residual sum and the next norm (`sub`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlp<X: Exec>(
    ex: &mut X,
    s: &Shape,
    w: &MlpWeights<'_, X::K>,
    ln: &<X::K as Backend>::B,
    (pre, act): (&mut <X::K as Backend>::B, &mut <X::K as Backend>::B),
    train: bool,
    kept: usize,
    drop_act: Option<Dropout>,
    sub: Sublayer<'_, X::K>,
) -> Result<(), X::Err> {
    let (c, inner, up) = (s.c, s.inner, s.up);
    let hidden: &mut <X::K as Backend>::B = match (s.mlp, w.up_b) {
        (Mlp::SwiGlu | Mlp::Gated(_), b) => {
            time("gemm gate+up, gate", || {
                ex.gemm_bias(ln, (kept, c, up), w.up, b, pre)?;
                ex.gate(s.mlp, (kept, inner), pre, act)
            })?;
            act
        }
        (Mlp::GeluTanh, Some(b)) if train => {
            time("gemm fc+gelu", || {
                ex.gemm_bias_gelu(ln, (kept, c, inner), w.up, b, pre, act)
            })?;
            act
        }
        (mlp, b) if train => {
            // The backward pass reads the pre-activations: the activations go to `act`.
            time("gemm fc, activation", || {
                ex.gemm_bias(ln, (kept, c, inner), w.up, b, pre)?;
                ex.copy(pre, kept * inner, act)?;
                ex.activate(mlp, (kept, inner), act)
            })?;
            act
        }
        (mlp, b) => {
            time("gemm fc, activation", || {
                ex.gemm_bias(ln, (kept, c, inner), w.up, b, pre)?;
                ex.activate(mlp, (kept, inner), pre)
            })?;
            pre
        }
    };
    if let Some(d) = drop_act {
        ex.drop_in_place(hidden, kept * inner, d)?;
    }
    let hidden: &<X::K as Backend>::B = hidden;
    time("gemm fcproj", || {
        ex.gemm_bias_residual(
            hidden,
            (kept, inner, c),
            w.down,
            w.down_b,
            sub.res,
            sub.out,
            sub.drop,
            sub.next,
        )
    })
}

/// The buffers an inference pass reuses from block to block: the residual stream and
/// its norm in pairs (each block reads one and writes the other), and the blocks'
/// intermediates, for `n` rows.
pub(crate) struct Buffers {
    pub x_out: Vec<f32>,
    pub mid: Vec<f32>,
    pub h: Vec<f32>,
    pub h_next: Vec<f32>,
    pub st: Vec<f32>,
    pub st_next: Vec<f32>,
    pub qkv: Vec<f32>,
    pub atty: Vec<f32>,
    pub ln2: Vec<f32>,
    pub ln2_stats: Vec<f32>,
    pub pre: Vec<f32>,
    pub act: Vec<f32>,
    pub panels: Vec<f32>,
}

impl Buffers {
    pub fn new(s: &Shape, n: usize) -> Self {
        let c = s.c;
        let gated = matches!(s.mlp, Mlp::SwiGlu | Mlp::Gated(_));
        Buffers {
            x_out: vec![0f32; n * c],
            mid: vec![0f32; n * c],
            h: vec![0f32; n * c],
            h_next: vec![0f32; n * c],
            st: vec![0f32; 2 * n],
            st_next: vec![0f32; 2 * n],
            qkv: vec![0f32; n * s.heads.width()],
            atty: vec![0f32; n * s.heads.q_width()],
            ln2: vec![0f32; n * c],
            ln2_stats: vec![0f32; 2 * n],
            pre: vec![0f32; n * s.up],
            act: vec![0f32; if gated { n * s.inner } else { 0 }],
            panels: Vec::new(),
        }
    }

    /// `h` = the first block's norm of the `n` rows of `x`.
    pub fn first_norm(&mut self, x: &[f32], norm: NormW<'_>, eps: f32, n: usize) {
        k::layer_norm(x, norm.w, norm.b, eps, n, &mut self.h, &mut self.st);
    }

    /// One block over `m` rows of `x` (its norm in `h`), `kept` of which leave it
    /// (`res`: those rows of `x`, when fewer); `x` and `h` then hold the block's output
    /// and its `next` norm.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        s: &Shape,
        w: &Weights<'_>,
        x: &mut Vec<f32>,
        res: Option<&[f32]>,
        next: NormW<'_>,
        (m, kept): (usize, usize),
        attend: impl FnOnce(&mut [f32], &mut [f32]),
    ) {
        let io = Io {
            ln1: &self.h[..],
            qkv: &mut self.qkv[..],
            atty: &mut self.atty[..],
            res: res.unwrap_or(&x[..]),
            mid: &mut self.mid[..],
            ln2: &mut self.ln2[..],
            ln2_stats: &mut self.ln2_stats[..],
            pre: &mut self.pre[..],
            act: &mut self.act[..],
            train: false,
            out: &mut self.x_out[..],
            next: next.into(s.eps, &mut self.h_next[..], &mut self.st_next[..]),
        };
        let attend = |q: &mut [f32], y: &mut [f32]| {
            attend(q, y);
            Ok(())
        };
        let Ok(()) = forward(
            &mut Cpu(&mut self.panels),
            s,
            w,
            io,
            m,
            kept,
            attend,
            Drops::default(),
        );
        std::mem::swap(x, &mut self.x_out);
        std::mem::swap(&mut self.h, &mut self.h_next);
        std::mem::swap(&mut self.st, &mut self.st_next);
    }
}

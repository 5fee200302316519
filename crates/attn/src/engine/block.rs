//! The pre-norm block, written once for training and inference, of every pre-norm family
//! (GPT-2, Llama, Qwen2, Mistral, T5): the attention sublayer — the fused
//! query/key/value product, the attention its caller runs (a whole batch of equal
//! sequences when training; ragged sequences against their key/value caches when
//! decoding; T5's with its position bias), the output projection with the residual sum
//! and the next norm — and the MLP sublayer (GELU, ReLU, SiLU, SwiGLU and other gated
//! MLPs) with its residual sum and the next norm: the next sublayer's, or the final one.
//! A cross-attention is the attention sublayer with a queries-only first product.
//!
//! The weights may be the trainer's flat `[in, out]` matrices or inference's (f32
//! panels, f16, 8- or 4-bit blocks): [`Rhs`] carries either to the same products, whose
//! epilogues add the biases, residuals, dropout and norms while each block of rows is in
//! cache. The trainer keeps every buffer written here for its backward pass
//! (`train::native`, where the block's backward is written, beside the stack's); the
//! engine reuses them from layer to layer.

use super::Mlp;
use crate::kernels::cpu::{self as k, Dropout, Heads, NormOut, Rhs};
use crate::train::profile::time;

/// A norm's weight and, for a LayerNorm, its bias (RMSNorm has none).
#[derive(Clone, Copy)]
pub(crate) struct NormW<'a> {
    pub w: &'a [f32],
    pub b: Option<&'a [f32]>,
}

impl<'a> NormW<'a> {
    /// The norm, written to `out` (and each row's statistics to `stats`) by the
    /// product that computes its input.
    pub fn into<'o>(self, eps: f32, out: &'o mut [f32], stats: &'o mut [f32]) -> NormOut<'o>
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
pub(crate) struct Weights<'a> {
    pub qkv: Rhs<'a>,
    pub qkv_b: Option<&'a [f32]>,
    pub proj: Rhs<'a>,
    pub proj_b: Option<&'a [f32]>,
    pub norm2: NormW<'a>,
    pub mlp: MlpWeights<'a>,
}

/// The buffers of one block: its input and output, and everything in between (which
/// the trainer keeps for the backward pass). `m` rows enter; `kept` rows leave (fewer
/// when decoding wants only each sequence's last position after the last block).
pub(crate) struct Io<'a> {
    /// The residual stream entering the block, normed: `[m, c]`.
    pub ln1: &'a [f32],
    /// `[m, heads.width()]`: queries, keys, values.
    pub qkv: &'a mut [f32],
    /// The heads' outputs side by side, `[kept, heads.q_width()]`.
    pub atty: &'a mut [f32],
    /// The residual stream entering the block, the rows kept: `[kept, c]`.
    pub res: &'a [f32],
    /// The residual stream after attention, `[kept, c]`.
    pub mid: &'a mut [f32],
    /// `mid` normed, `[kept, c]`, and its statistics `[kept, 2]`.
    pub ln2: &'a mut [f32],
    pub ln2_stats: &'a mut [f32],
    /// The MLP's first product `[kept, up]`: a gated MLP's gate and up pre-activations;
    /// when training, an ungated MLP's pre-activations (the tanh GELU with a bias: its
    /// derivative); otherwise the activations themselves.
    pub pre: &'a mut [f32],
    /// The activations `[kept, inner]` (gated MLPs, and every MLP when training).
    pub act: &'a mut [f32],
    /// Whether a backward pass follows (see `pre`).
    pub train: bool,
    /// The residual stream leaving the block, `[kept, c]`.
    pub out: &'a mut [f32],
    /// Where the norm of `out` goes: the next block's first norm or the final one.
    pub next: NormOut<'a>,
}

/// Dropout on the two residual branches (none in evaluation and inference).
#[derive(Clone, Copy, Default)]
pub(crate) struct Drops {
    pub attn: Option<Dropout>,
    pub mlp: Option<Dropout>,
}

/// Run one block over `m` rows, `kept` of which leave it. `attend(qkv, atty)` applies
/// the positions and the attention: it reads the `m` rows of `qkv` and writes the `kept`
/// rows of `atty`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    s: &Shape,
    w: &Weights<'_>,
    io: Io<'_>,
    m: usize,
    kept: usize,
    attend: impl FnOnce(&mut [f32], &mut [f32]),
    drops: Drops,
    panels: &mut Vec<f32>,
) {
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
    attention(s, first, proj, ln1, (qkv, atty), rows, attend, sub, panels);
    let sub = Sublayer {
        res: mid,
        out,
        next,
        drop: drops.mlp,
    };
    mlp(s, &w.mlp, ln2, (pre, act), train, kept, None, sub, panels);
}

/// An attention sublayer's first product: `[width, in]` (queries, keys and values side
/// by side; the queries alone for a cross-attention, whose keys and values come from
/// elsewhere) and its bias.
#[derive(Clone, Copy)]
pub(crate) struct First<'a> {
    pub w: Rhs<'a>,
    pub b: Option<&'a [f32]>,
    pub width: usize,
}

/// An MLP's products and biases.
#[derive(Clone, Copy)]
pub(crate) struct MlpWeights<'a> {
    pub up: Rhs<'a>,
    pub up_b: Option<&'a [f32]>,
    pub down: Rhs<'a>,
    pub down_b: Option<&'a [f32]>,
}

/// A pre-norm sublayer's end: `out = res + drop(branch)`, and `next` the norm of `out`.
pub(crate) struct Sublayer<'a> {
    pub res: &'a [f32],
    pub out: &'a mut [f32],
    pub next: NormOut<'a>,
    pub drop: Option<Dropout>,
}

/// The attention sublayer over `m` rows of the normed stream `ln`, `kept` of which
/// leave it: the first product into `bufs.0`, then `attend(bufs.0, bufs.1)`, then the
/// output projection `proj` with the residual sum and the next norm (`sub`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    s: &Shape,
    first: First<'_>,
    proj: (Rhs<'_>, Option<&[f32]>),
    ln: &[f32],
    (qkv, atty): (&mut [f32], &mut [f32]),
    (m, kept): (usize, usize),
    attend: impl FnOnce(&mut [f32], &mut [f32]),
    sub: Sublayer<'_>,
    panels: &mut Vec<f32>,
) {
    let (c, qw) = (s.c, s.heads.q_width());
    time("gemm qkv", || {
        k::gemm_bias(ln, m, c, first.width, first.w, first.b, qkv, panels)
    });
    time("attention", || attend(qkv, atty));
    time("gemm proj", || {
        k::gemm_bias_residual(
            atty,
            kept,
            qw,
            c,
            proj.0,
            proj.1,
            sub.res,
            sub.out,
            panels,
            sub.drop,
            Some(sub.next),
        )
    });
}

/// The MLP sublayer over `kept` rows of the normed stream `ln`: the first product into
/// `bufs.0`, its activation (into `bufs.1` when gated or when training, which keeps the
/// pre-activations in `bufs.0`, or the tanh GELU's derivative there when it has a bias,
/// the decoder trainer's), the activation's dropout `drop_act`, the second product with
/// the residual sum and the next norm (`sub`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlp(
    s: &Shape,
    w: &MlpWeights<'_>,
    ln: &[f32],
    (pre, act): (&mut [f32], &mut [f32]),
    train: bool,
    kept: usize,
    drop_act: Option<Dropout>,
    sub: Sublayer<'_>,
    panels: &mut Vec<f32>,
) {
    let (c, inner, up) = (s.c, s.inner, s.up);
    let hidden: &mut [f32] = match (s.mlp, w.up_b) {
        (Mlp::SwiGlu, b) => {
            time("gemm gate+up, swiglu", || {
                k::gemm_bias(ln, kept, c, up, w.up, b, pre, panels);
                k::swiglu(pre, kept, inner, act);
            });
            act
        }
        (Mlp::Gated(_), b) => {
            time("gemm gate+up, gate", || {
                k::gemm_bias(ln, kept, c, up, w.up, b, pre, panels);
                let (pre, act) = (&mut pre[..kept * up], &mut act[..kept * inner]);
                super::decoder::activate(s.mlp, inner, pre, act);
            });
            act
        }
        (Mlp::GeluTanh, Some(b)) if train => {
            time("gemm fc+gelu", || {
                k::gemm_bias_gelu(ln, kept, c, inner, w.up, b, pre, act, panels)
            });
            act
        }
        (mlp, b) if train => {
            // The backward pass reads the pre-activations: the activations go to `act`.
            time("gemm fc, activation", || {
                k::gemm_bias(ln, kept, c, inner, w.up, b, pre, panels);
                act[..kept * inner].copy_from_slice(&pre[..kept * inner]);
                super::decoder::activate(mlp, inner, &mut act[..kept * inner], &mut []);
            });
            act
        }
        (mlp, b) => {
            time("gemm fc, activation", || {
                k::gemm_bias(ln, kept, c, inner, w.up, b, pre, panels);
                super::decoder::activate(mlp, inner, &mut pre[..kept * inner], &mut []);
            });
            pre
        }
    };
    super::sublayers::drop_in_place(&mut hidden[..kept * inner], drop_act);
    let hidden: &[f32] = hidden;
    time("gemm fcproj", || {
        k::gemm_bias_residual(
            hidden,
            kept,
            inner,
            c,
            w.down,
            w.down_b,
            sub.res,
            sub.out,
            panels,
            sub.drop,
            Some(sub.next),
        )
    });
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
            ln1: &self.h,
            qkv: &mut self.qkv,
            atty: &mut self.atty,
            res: res.unwrap_or(x),
            mid: &mut self.mid,
            ln2: &mut self.ln2,
            ln2_stats: &mut self.ln2_stats,
            pre: &mut self.pre,
            act: &mut self.act,
            train: false,
            out: &mut self.x_out,
            next: next.into(s.eps, &mut self.h_next, &mut self.st_next),
        };
        forward(
            s,
            w,
            io,
            m,
            kept,
            attend,
            Drops::default(),
            &mut self.panels,
        );
        std::mem::swap(x, &mut self.x_out);
        std::mem::swap(&mut self.h, &mut self.h_next);
        std::mem::swap(&mut self.st, &mut self.st_next);
    }
}

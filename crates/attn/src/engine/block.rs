//! The decoder's pre-norm block, written once for training and inference: the fused
//! query/key/value product, the attention its caller runs (a whole batch of equal
//! sequences when training; ragged sequences against their key/value caches when
//! decoding), the output projection with the residual sum and the second norm, the MLP
//! (GELU, SwiGLU, ReLU, SiLU) and its residual sum with the next norm — the next
//! block's first, or the final one.
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
    /// The MLP's hidden width, and the columns of its first product (`2·inner` for
    /// SwiGLU: gate, then up).
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
    pub up: Rhs<'a>,
    pub up_b: Option<&'a [f32]>,
    pub down: Rhs<'a>,
    pub down_b: Option<&'a [f32]>,
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
    /// The MLP's first product `[kept, up]`: SwiGLU's gate and up pre-activations, the
    /// GELU's derivative (when training), or the activations themselves (otherwise).
    pub pre: &'a mut [f32],
    /// The activations `[kept, inner]` (SwiGLU; the GELU when training).
    pub act: &'a mut [f32],
    /// Whether a backward pass follows: the tanh GELU then also keeps its derivative
    /// (computed with the activation, from the same tanh).
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
    let (c, inner, up, eps) = (s.c, s.inner, s.up, s.eps);
    let (qw, width) = (s.heads.q_width(), s.heads.width());
    time("gemm qkv", || {
        k::gemm_bias(io.ln1, m, c, width, w.qkv, w.qkv_b, io.qkv, panels)
    });
    time("attention", || attend(io.qkv, io.atty));
    time("gemm proj", || {
        k::gemm_bias_residual(
            io.atty,
            kept,
            qw,
            c,
            w.proj,
            w.proj_b,
            io.res,
            io.mid,
            panels,
            drops.attn,
            Some(w.norm2.into(eps, io.ln2, io.ln2_stats)),
        )
    });
    let hidden: &[f32] = match (s.mlp, w.up_b) {
        (Mlp::SwiGlu, b) => {
            time("gemm gate+up, swiglu", || {
                k::gemm_bias(io.ln2, kept, c, up, w.up, b, io.pre, panels);
                k::swiglu(io.pre, kept, inner, io.act);
            });
            io.act
        }
        (Mlp::GeluTanh, Some(b)) if io.train => {
            time("gemm fc+gelu", || {
                k::gemm_bias_gelu(io.ln2, kept, c, inner, w.up, b, io.pre, io.act, panels)
            });
            io.act
        }
        (mlp, b) => {
            time("gemm fc, activation", || {
                k::gemm_bias(io.ln2, kept, c, inner, w.up, b, io.pre, panels);
                super::decoder::activate(mlp, inner, &mut io.pre[..kept * inner], &mut []);
            });
            io.pre
        }
    };
    time("gemm fcproj", || {
        k::gemm_bias_residual(
            hidden,
            kept,
            inner,
            c,
            w.down,
            w.down_b,
            io.mid,
            io.out,
            panels,
            drops.mlp,
            Some(io.next),
        )
    });
}

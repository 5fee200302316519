//! The pieces the encoder and encoder-decoder layers are built from, for training and
//! inference alike: linear layers and their backward, post-norm sublayers (attention
//! with its output projection, residual sum and norm; the MLP likewise) forward and
//! backward, the attention heads of a pass over any query and key rows (self-attention,
//! causal or not, and cross-attention) on `kernels::cpu::attend`'s head, dropout sites,
//! and the buffer pool that keeps activations between steps. BERT's encoder (the
//! trainer `train::encoder` and the engine's `engine::encoder`), Marian's
//! encoder-decoder (`train::seq2seq`, `engine::seq2seq`) and T5's trainer (`train::t5`)
//! are written with them. The sublayers take their weights as the products read them
//! (`Rhs`: the trainers' flat matrices or the engine's `QMatrix`), and keep what a
//! backward pass reads only when asked.
//!
//! Why one file of this length: each piece's forward and backward are written next to
//! each other, and the three trainers share them.

use rayon::prelude::*;

use crate::train::profile::time;

use crate::kernels::cpu as k;
use crate::kernels::cpu::attend::{attend_head_backward, attend_head_to, disjoint, HeadOut, Span};
use crate::kernels::cpu::panel::SyncPtr;
use crate::kernels::cpu::{vmath, Dropout, Rhs};
use crate::{Error, Result};

/// The MLP's activation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Act {
    GeluErf,
    GeluTanh,
    Relu,
    /// SiLU (swish), Marian's default.
    Silu,
}

impl Act {
    /// BERT's `hidden_act`.
    pub(crate) fn of(hidden_act: &str) -> Result<Self> {
        match hidden_act {
            "gelu" => Ok(Act::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Act::GeluTanh),
            "relu" => Ok(Act::Relu),
            other => Err(Error::invalid(
                "hidden_act",
                format!("{other:?} is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"),
            )),
        }
    }

    /// Marian's `activation_function`.
    pub(crate) fn of_marian(name: &str) -> Result<Self> {
        match name {
            "swish" | "silu" => Ok(Act::Silu),
            "gelu" => Ok(Act::GeluErf),
            "gelu_new" => Ok(Act::GeluTanh),
            "relu" => Ok(Act::Relu),
            other => Err(Error::invalid(
                "activation_function",
                format!("{other:?} is not supported (swish, silu, gelu, gelu_new, relu)"),
            )),
        }
    }

    /// The activation of an engine MLP (not SwiGLU, which no post-norm family has).
    pub(crate) fn of_mlp(mlp: super::Mlp) -> Self {
        match mlp {
            super::Mlp::GeluErf => Act::GeluErf,
            super::Mlp::GeluTanh => Act::GeluTanh,
            super::Mlp::Relu => Act::Relu,
            super::Mlp::Silu => Act::Silu,
            super::Mlp::SwiGlu | super::Mlp::Gated(_) => {
                unreachable!("post-norm blocks have no gated MLP")
            }
        }
    }

    pub(crate) fn apply(self, xs: &mut [f32]) {
        match self {
            Act::GeluErf => vmath::gelu_erf(xs),
            Act::GeluTanh => vmath::gelu_tanh(xs),
            Act::Relu => xs.iter_mut().for_each(|x| *x = x.max(0.0)),
            Act::Silu => vmath::silu(xs),
        }
    }

    /// `d ← d · act'(u)`, on both cores.
    pub(crate) fn grad_mul(self, d: &mut [f32], u: &[f32]) {
        d.par_chunks_mut(4096)
            .zip(u.par_chunks(4096))
            .for_each(|(d, u)| act_grad_mul(d, u, self as u8));
    }
}

/// `x ← x ⊙ mask` (element `i` of `x` is mask element `i`), on both cores.
pub(crate) fn drop_in_place(x: &mut [f32], d: Option<Dropout>) {
    const CH: usize = 1 << 14;
    if let Some(d) = d {
        x.par_chunks_mut(CH)
            .enumerate()
            .for_each(|(c, part)| k::dropout::drop_row(part, d, (c * CH) as u64));
    }
}

/// `src ⊙ mask` in a pooled buffer, or `None` without dropout (then `src` itself is the
/// gradient to use: no copy).
pub(crate) fn masked_copy(pool: &mut Pool, src: &[f32], d: Option<Dropout>) -> Option<Vec<f32>> {
    let d = d?;
    let mut v = pool.take_written(src.len());
    v.copy_from_slice(src);
    drop_in_place(&mut v, Some(d));
    Some(v)
}

/// `out [m, out] = x [m, in] · wᵀ + b` for `w [out, in]`.
pub(crate) fn linear(
    x: &[f32],
    m: usize,
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
    panels: &mut Vec<f32>,
) {
    let (o, i) = (b.len(), w.len() / b.len());
    time("linear", || {
        k::gemm_bias(x, m, i, o, Rhs::Nt(w), Some(b), out, panels)
    });
}

/// Backward of [`linear`] for `w [o, i]`: `dw += dyᵀ·x`, `db += Σ dy` unless the
/// weights are frozen (`grads` is `None`), and `dx = dy · w` (written, not added) when
/// asked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_backward(
    dy: &[f32],
    x: &[f32],
    m: usize,
    w: &[f32],
    o: usize,
    grads: Option<[&mut [f32]; 2]>,
    dx: Option<&mut [f32]>,
    scratch: &mut Scratch,
) {
    let dw = grads.map(|[dw, db]| {
        time("linear db", || {
            for row in dy[..m * o].chunks(o) {
                db.iter_mut().zip(row).for_each(|(d, g)| *d += g);
            }
        });
        dw
    });
    weight_backward(dy, x, m, w, o, dw, dx, scratch);
}

/// Backward of `y [m, o] = x [m, i] · wᵀ` for `w [o, i]` without a bias: `dw += dyᵀ·x`
/// when given, `dx = dy · w` (written, not added) when asked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_backward(
    dy: &[f32],
    x: &[f32],
    m: usize,
    w: &[f32],
    o: usize,
    dw: Option<&mut [f32]>,
    dx: Option<&mut [f32]>,
    scratch: &mut Scratch,
) {
    let i = w.len() / o;
    if let Some(dw) = dw {
        time("linear dW", || {
            k::gemm_tn_acc(
                dy,
                m,
                o,
                x,
                i,
                dw,
                (&mut scratch.panels, &mut scratch.xpack),
                false,
            )
        });
    }
    if let Some(dx) = dx {
        time("linear dx", || {
            k::gemm(dy, m, o, i, Rhs::Nn(w), dx, &mut scratch.panels)
        });
    }
}

#[derive(Default)]
pub(crate) struct Scratch {
    pub panels: Vec<f32>,
    pub xpack: Vec<f32>,
    pub pool: Pool,
}

/// Activation buffers kept between steps: freeing and allocating megabytes at every
/// step costs page faults and TLB shootdowns (a quarter of a MiniLM step).
#[derive(Default)]
pub(crate) struct Pool(Vec<Vec<f32>>);

impl Pool {
    /// The smallest kept buffer of capacity `n` or more, or a new one.
    fn fit(&mut self, n: usize) -> Vec<f32> {
        let best = (0..self.0.len())
            .filter(|&i| self.0[i].capacity() >= n)
            .min_by_key(|&i| self.0[i].capacity());
        match best {
            Some(i) => self.0.swap_remove(i),
            None => Vec::with_capacity(n),
        }
    }

    /// A zeroed buffer of `n` values (zeroed on both cores: a step zeroes hundreds of
    /// megabytes).
    pub(crate) fn take(&mut self, n: usize) -> Vec<f32> {
        let mut v = self.fit(n);
        time("pool zero", || {
            let keep = v.len().min(n);
            v.truncate(keep);
            v.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
            v.resize(n, 0.0);
        });
        v
    }

    /// A buffer of `n` values for an output the caller overwrites whole (a product's,
    /// a norm's, a copy's): its old values are left in place. Debug builds fill it with
    /// NaN, so that a caller that leaves any value unwritten fails the tests.
    pub(crate) fn take_written(&mut self, n: usize) -> Vec<f32> {
        let mut v = self.fit(n);
        if cfg!(debug_assertions) {
            v.clear();
            v.resize(n, f32::NAN);
        } else if v.len() >= n {
            v.truncate(n);
        } else {
            v.resize(n, 0.0);
        }
        v
    }

    pub(crate) fn give(&mut self, v: Vec<f32>) {
        self.0.push(v);
    }
}

/// A linear layer's weight and bias gradients, or `None` when the layer is frozen.
pub(crate) fn wgrads(
    g: &mut [f32],
    frozen: bool,
    w: (usize, usize),
    b: (usize, usize),
) -> Option<[&mut [f32]; 2]> {
    (!frozen).then(|| views(g, [w, b]))
}

/// A norm's weight and bias gradients, or (frozen) two throwaway rows of `junk`.
pub(crate) fn norm_grads<'a>(
    g: &'a mut [f32],
    junk: &'a mut [f32],
    frozen: bool,
    w: usize,
    b: usize,
    c: usize,
) -> [&'a mut [f32]; 2] {
    if frozen {
        let (x, y) = junk[..2 * c].split_at_mut(c);
        [x, y]
    } else {
        views(g, [(w, c), (b, c)])
    }
}

/// Disjoint mutable views of the gradient buffer, by offset and length.
pub(crate) fn views<const N: usize>(
    buf: &mut [f32],
    parts: [(usize, usize); N],
) -> [&mut [f32]; N] {
    let mut order: Vec<usize> = (0..N).collect();
    order.sort_by_key(|&i| parts[i].0);
    let mut out: [Option<&mut [f32]>; N] = std::array::from_fn(|_| None);
    let mut rest = buf;
    let mut at = 0;
    for &i in &order {
        let (off, len) = parts[i];
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(off - at);
        let (mine, tail) = tail.split_at_mut(len);
        out[i] = Some(mine);
        rest = tail;
        at = off + len;
    }
    out.map(|o| o.unwrap())
}

/// The activation at `x` and its derivative: `kind` 0 is the erf GELU, 1 the tanh GELU,
/// 2 ReLU, 3 SiLU.
#[inline(always)]
fn act_and_grad_at(x: f32, kind: u8) -> (f32, f32) {
    const C: f32 = vmath::GELU_C;
    const A: f32 = vmath::GELU_A;
    match kind {
        0 => vmath::gelu_erf_and_grad(x),
        1 => {
            // x·s with s = 1/(1 + e^{−2u}), u = C(x + A·x³): s + x·s(1 − s)·du/dx·2.
            let x2 = x * x;
            let s = 1.0 / (1.0 + vmath::exp(x * x2.mul_add(-2.0 * C * A, -2.0 * C)));
            (
                x * s,
                (x * (s - s * s)).mul_add(x2.mul_add(6.0 * C * A, 2.0 * C), s),
            )
        }
        2 => {
            if x > 0.0 {
                (x, 1.0)
            } else {
                (0.0, 0.0)
            }
        }
        _ => {
            // x·s with s = 1/(1 + e^{−x}): s + x·s(1 − s).
            let s = 1.0 / (1.0 + vmath::exp(-x));
            (x * s, (x * (s - s * s)) + s)
        }
    }
}

/// One pre-activation row `u` (its bias `b` added here): `g = act(u + b)`, and `u`
/// replaced by `act'(u + b)`, all the backward needs (a multiplication instead of the
/// activation's derivative computed again).
#[inline(always)]
fn act_and_grad_body(u: &mut [f32], b: &[f32], g: &mut [f32], kind: u8) {
    for ((u, &b), g) in u.iter_mut().zip(b).zip(g.iter_mut()) {
        (*g, *u) = act_and_grad_at(*u + b, kind);
    }
}
vmath::dispatch!(
    /// See [`act_and_grad_body`].
    act_and_grad = act_and_grad_body, act_and_grad512, act_and_grad256,
    (u: &mut [f32], b: &[f32], g: &mut [f32], kind: u8) -> ()
);

/// `d ← d · act'(u)` ([`act_and_grad_at`]'s `kind`).
#[inline(always)]
fn act_grad_mul_body(d: &mut [f32], u: &[f32], kind: u8) {
    for (d, &x) in d.iter_mut().zip(u) {
        *d *= act_and_grad_at(x, kind).1;
    }
}
vmath::dispatch!(
    /// See [`act_grad_mul_body`].
    act_grad_mul = act_grad_mul_body, act_grad_mul512, act_grad_mul256,
    (d: &mut [f32], u: &[f32], kind: u8) -> ()
);

/// Where one attention head reads: query rows `q0..q0 + tq` of a query buffer (row
/// stride `qs`, this head's columns from `qo`), key and value rows `k0..k0 + tk` of a
/// key/value buffer (row stride `ks`, this head's keys from column `ko`, values from
/// `vo`). A causal head (self-attention of a decoder) has `tq == tk`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadAt {
    pub q0: usize,
    pub tq: usize,
    pub qs: usize,
    pub qo: usize,
    pub k0: usize,
    pub tk: usize,
    pub ks: usize,
    pub ko: usize,
    pub vo: usize,
    pub causal: bool,
}

impl HeadAt {
    /// The keys each query sees: those up to its own position (a decoder's
    /// self-attention, `tq` = `tk`), or all `tk`.
    fn span(&self) -> Span {
        if self.causal {
            Span::Causal { past: 0 }
        } else {
            Span::All { keys: self.tk }
        }
    }
}

/// One head's attention in a ragged batch: its queries (row stride `qs`), keys and
/// values (row stride `ks`), which keys it sees, its `t` queries, and where its output
/// goes (rows from `row0`, columns from `col0`).
pub(crate) struct HeadJob<'a> {
    pub q: &'a [f32],
    pub qs: usize,
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub ks: usize,
    pub span: Span,
    pub t: usize,
    pub row0: usize,
    pub col0: usize,
    /// Added to the scores (`[t, keys]`): T5's relative-position bias.
    pub bias: Option<&'a [f32]>,
    /// Dropout on the attention weights (the values are summed with the dropped ones).
    pub drop: Option<Dropout>,
}

/// Every job's attention, in parallel, each task writing its output rows into `y` (rows
/// `c` wide) while they are in its cache. With `keep`, returns each job's attention
/// weights `[t, keys]` (zero above the diagonal when causal; with dropout, the weights
/// after it follow), for a backward pass; else empty ones.
pub(crate) fn attend_into(
    jobs: &[HeadJob],
    hd: usize,
    scale: f32,
    c: usize,
    y: &mut [f32],
    keep: bool,
) -> Vec<Vec<f32>> {
    let cells = jobs
        .iter()
        .map(|j| (j.col0, j.row0, j.row0 + j.t))
        .collect();
    assert!(
        disjoint(cells, hd)
            && jobs
                .iter()
                .all(|j| j.col0 + hd <= c && (j.row0 + j.t) * c <= y.len()),
        "attention jobs overlap or overrun their output"
    );
    let yp = SyncPtr(y.as_mut_ptr());
    jobs.par_iter()
        .map(|j| {
            let kept = if keep { j.t * j.span.keys(j.t) } else { 0 };
            let mut weights = vec![0f32; kept * if j.drop.is_some() { 2 } else { 1 }];
            let w = keep.then_some(&mut weights[..]);
            let out = HeadOut::at(yp, j.row0 * c + j.col0, c, false);
            // SAFETY: the job's rows and columns are inside `y` and no cell is written
            // by two jobs (both asserted above).
            unsafe {
                attend_head_to(
                    j.q,
                    j.qs,
                    (j.k, j.v, j.ks),
                    j.span,
                    (j.t, hd, scale),
                    j.bias,
                    out,
                    w,
                    j.drop,
                )
            };
            weights
        })
        .collect()
}

/// Every job's head ([`attend_into`]): job `i`'s queries and keys as its [`HeadAt`] places
/// them in `q` and `kv`, its output at columns `h·hd..` of `y` (`[n, c]`), adding
/// `biases[i]` to its scores when given. Returns each job's attention weights (with
/// `keep`).
pub(crate) fn heads_forward(
    q: &[f32],
    kv: &[f32],
    jobs: &[Job],
    (hd, scale): (usize, f32),
    biases: Option<&[Vec<f32>]>,
    (c, y): (usize, &mut [f32]),
    keep: bool,
) -> Vec<Vec<f32>> {
    let heads: Vec<HeadJob> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let at = j.at;
            HeadJob {
                q: &q[at.q0 * at.qs + at.qo..],
                qs: at.qs,
                k: &kv[at.k0 * at.ks + at.ko..],
                v: &kv[at.k0 * at.ks + at.vo..],
                ks: at.ks,
                span: at.span(),
                t: at.tq,
                row0: j.y0,
                col0: j.h * hd,
                bias: biases.map(|b| b[i].as_slice()),
                drop: j.drop,
            }
        })
        .collect();
    attend_into(&heads, hd, scale, c, y, keep)
}

/// Every job's head backward ([`head_backward`]) from the output gradient `dy` (laid
/// out as [`heads_forward`]'s `y`, rows `c` wide), on the rayon pool, each task writing
/// its queries' gradients into `dq` (laid out as `q`) and its keys' and values' into
/// `dkv` (as `kv`; into `dq` when `None`: self-attention, one buffer). Returns each
/// job's score gradients with `score_grads` (empty otherwise).
#[allow(clippy::too_many_arguments)]
pub(crate) fn heads_backward(
    (dy, c): (&[f32], usize),
    q: &[f32],
    kv: &[f32],
    probs: &[Vec<f32>],
    jobs: &[Job],
    (hd, scale): (usize, f32),
    score_grads: bool,
    dq: &mut [f32],
    dkv: Option<&mut [f32]>,
) -> Vec<Vec<f32>> {
    let (dq_len, qp) = (dq.len(), SyncPtr(dq.as_mut_ptr()));
    let shared = dkv.is_none();
    let (kv_len, kvp) = match dkv {
        Some(b) => (b.len(), SyncPtr(b.as_mut_ptr())),
        None => (dq_len, qp),
    };
    let q_cells = jobs.iter().map(|j| (j.at.qo, j.at.q0, j.at.q0 + j.at.tq));
    let kv_cells = jobs.iter().flat_map(|j| {
        let r = (j.at.k0, j.at.k0 + j.at.tk);
        [(j.at.ko, r.0, r.1), (j.at.vo, r.0, r.1)]
    });
    let fits = jobs.iter().all(|j| {
        let a = j.at;
        (a.q0 + a.tq) * a.qs <= dq_len
            && a.qo + hd <= a.qs
            && (a.k0 + a.tk) * a.ks <= kv_len
            && a.ko.max(a.vo) + hd <= a.ks
            && (!shared || a.qs == a.ks)
    });
    let apart = if shared {
        disjoint(q_cells.chain(kv_cells).collect(), hd)
    } else {
        disjoint(q_cells.collect(), hd) && disjoint(kv_cells.collect(), hd)
    };
    assert!(
        fits && apart,
        "attention jobs overlap or overrun their gradients"
    );
    jobs.par_iter()
        .zip(probs)
        .map(|(j, p)| {
            let a = j.at;
            // The gradients of the head's queries `[tq, hd]`, keys and values `[tk, hd]`,
            // written where they are laid out; with `score_grads`, those of its scores
            // after scaling `[tq, tk]` (an additive bias's), returned.
            let mut gb = vec![0f32; if score_grads { a.tq * a.tk } else { 0 }];
            let outs = [
                HeadOut::at(qp, a.q0 * a.qs + a.qo, a.qs, false),
                HeadOut::at(kvp, a.k0 * a.ks + a.ko, a.ks, false),
                HeadOut::at(kvp, a.k0 * a.ks + a.vo, a.ks, false),
            ];
            // SAFETY: inside the buffers and no cell written by two jobs (both asserted
            // above).
            unsafe {
                attend_head_backward(
                    (&q[a.q0 * a.qs + a.qo..], a.qs),
                    (&kv[a.k0 * a.ks + a.ko..], &kv[a.k0 * a.ks + a.vo..], a.ks),
                    (&dy[j.y0 * c + j.h * hd..], c),
                    (a.tq, hd, scale),
                    a.span(),
                    p,
                    j.drop,
                    outs,
                    &mut gb,
                )
            };
            gb
        })
        .collect()
}

/// The sizes of a stack's sublayers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub c: usize,
    pub nh: usize,
    pub eps: f32,
}

impl Dims {
    pub fn hd(&self) -> usize {
        self.c / self.nh
    }
    pub fn scale(&self) -> f32 {
        1.0 / (self.hd() as f32).sqrt()
    }
}

/// A sublayer's last matrix (`[c, i]`, its bias) and the norm after the residual sum.
pub(crate) struct Tail {
    pub w: usize,
    pub b: usize,
    pub ln_w: usize,
    pub ln_b: usize,
}

impl Tail {
    /// The tensors at these offsets of `w`, the matrix `[c, i]`.
    fn weights<'a>(&self, w: &'a [f32], c: usize, i: usize) -> TailW<'a> {
        TailW {
            w: Rhs::Nt(&w[self.w..self.w + c * i]),
            b: &w[self.b..self.b + c],
            ln_w: &w[self.ln_w..self.ln_w + c],
            ln_b: &w[self.ln_b..self.ln_b + c],
        }
    }
}

/// A sublayer's last product (`[c, i]` as the product reads it: a trainer's flat
/// matrix or the engine's), its bias, and the norm after the residual sum.
#[derive(Clone, Copy)]
pub(crate) struct TailW<'a> {
    pub w: Rhs<'a>,
    pub b: &'a [f32],
    pub ln_w: &'a [f32],
    pub ln_b: &'a [f32],
}

/// An MLP sublayer's weights: the first product (`[inner, c]`) and its bias, then the
/// tail.
#[derive(Clone, Copy)]
pub(crate) struct MlpW<'a> {
    pub up: Rhs<'a>,
    pub up_b: &'a [f32],
    pub tail: TailW<'a>,
}

/// A sublayer's end: `s = x + drop(h·Wᵀ + b)`, `out = LN(s)`, in one pass over the
/// product's rows. Returns `s`, the norm's statistics and `out`.
fn tail_forward(
    d: Dims,
    t: TailW<'_>,
    h: &[f32],
    x: &[f32],
    drop: Option<Dropout>,
    scratch: &mut Scratch,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = d.c;
    let n = x.len() / c;
    let i = h.len() / n;
    let mut s = scratch.pool.take_written(n * c);
    let (mut out, mut st) = (
        scratch.pool.take_written(n * c),
        scratch.pool.take_written(2 * n),
    );
    // One pass: the product, its bias and dropout, the residual sum and the norm of
    // each block of rows while it is in cache.
    time("linear", || {
        k::gemm_bias_residual(
            h,
            n,
            i,
            c,
            t.w,
            Some(t.b),
            x,
            &mut s,
            &mut scratch.panels,
            drop,
            Some(k::NormOut {
                w: t.ln_w,
                b: Some(t.ln_b),
                eps: d.eps,
                out: &mut out,
                stats: &mut st,
            }),
        )
    });
    (s, st, out)
}

/// A post-norm residual step with no backward pass to follow: `x ← LN(x + h·Wᵀ + b)`.
pub(crate) fn post_norm_step(
    d: Dims,
    t: TailW<'_>,
    h: &[f32],
    x: &mut Vec<f32>,
    scratch: &mut Scratch,
) {
    let (s, st, out) = tail_forward(d, t, h, x, None, scratch);
    scratch.pool.give(s);
    scratch.pool.give(st);
    scratch.pool.give(std::mem::replace(x, out));
}

/// Backward of [`tail_forward`] from `dout`: the norm's and the matrix's gradients
/// (unless `frozen`). Returns the gradient of `s` (also `x`'s through the residual)
/// and of `h`.
#[allow(clippy::too_many_arguments)]
fn tail_backward(
    w: &[f32],
    g: &mut [f32],
    junk: &mut [f32],
    frozen: bool,
    d: Dims,
    t: &Tail,
    dout: &[f32],
    h: &[f32],
    s: &[f32],
    st: &[f32],
    drop: Option<Dropout>,
    scratch: &mut Scratch,
) -> (Vec<f32>, Vec<f32>) {
    let c = d.c;
    let n = dout.len() / c;
    let i = h.len() / n;
    let mut ds = scratch.pool.take(n * c);
    {
        let [dw, db] = norm_grads(g, junk, frozen, t.ln_w, t.ln_b, c);
        time("layer norm backward", || {
            k::layer_norm_backward(
                dout,
                s,
                st,
                &w[t.ln_w..t.ln_w + c],
                n,
                &mut ds,
                dw,
                Some(db),
            )
        });
    }
    let mut dh = scratch.pool.take_written(n * i);
    let gr = wgrads(g, frozen, (t.w, c * i), (t.b, c));
    let dsd = masked_copy(&mut scratch.pool, &ds, drop);
    linear_backward(
        dsd.as_deref().unwrap_or(&ds),
        h,
        n,
        &w[t.w..t.w + c * i],
        c,
        gr,
        Some(&mut dh),
        scratch,
    );
    if let Some(v) = dsd {
        scratch.pool.give(v);
    }
    (ds, dh)
}

/// Where an attention sublayer's output projection and its norm (after the residual
/// sum) start in the flat buffers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PostAt {
    pub proj_w: usize,
    pub proj_b: usize,
    pub ln_w: usize,
    pub ln_b: usize,
}

/// One head's job in a sublayer: where it reads, its head index, its weights' dropout,
/// and the row of its first query in the sublayer's output (its query row, unless the
/// sublayer computes only some rows: [`first_queries_only`]).
#[derive(Clone, Copy)]
pub(crate) struct Job {
    pub at: HeadAt,
    pub h: usize,
    pub drop: Option<Dropout>,
    pub y0: usize,
}

/// Self-attention jobs (of [`head_jobs`], `nh` heads per sequence) narrowed to each
/// sequence's first query, every key still attended, the output row of sequence `s`
/// being row `s`: the last layer of a classifier, whose loss reads the first token's
/// state alone, computes that row only.
pub(crate) fn first_queries_only(jobs: &mut [Job], nh: usize) {
    for (i, j) in jobs.iter_mut().enumerate() {
        j.at.tq = 1;
        j.y0 = i / nh;
    }
}

/// What an attention sublayer's backward pass reads.
pub(crate) struct AttnActs {
    /// Attention weights per job.
    pub probs: Vec<Vec<f32>>,
    /// Heads' outputs side by side `[n, c]`.
    pub y: Vec<f32>,
    /// The residual sum before the norm, and the norm's statistics.
    pub s: Vec<f32>,
    pub st: Vec<f32>,
}

impl AttnActs {
    pub fn give(self, pool: &mut Pool) {
        for v in [self.y, self.s, self.st] {
            pool.give(v);
        }
    }
}

/// Heads, output projection, dropout, residual sum and norm:
/// `out = LN(x + drop(concat(heads)·Wpᵀ + b))`, with the queries in `q` and the keys
/// and values in `kv` as the jobs say. Returns the activations (the attention weights
/// only with `keep`, for a backward pass) and `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attn_forward(
    d: Dims,
    tail: TailW<'_>,
    x: &[f32],
    q: &[f32],
    kv: &[f32],
    jobs: &[Job],
    drop_out: Option<Dropout>,
    scratch: &mut Scratch,
    keep: bool,
) -> (AttnActs, Vec<f32>) {
    let (c, hd) = (d.c, d.hd());
    let n = x.len() / c;
    let mut y = scratch.pool.take_written(n * c);
    let probs = time("heads", || {
        heads_forward(q, kv, jobs, (hd, d.scale()), None, (c, &mut y), keep)
    });
    let (s, st, out) = tail_forward(d, tail, &y, x, drop_out, scratch);
    (AttnActs { probs, y, s, st }, out)
}

/// Backward of [`attn_forward`] from `dout`: the norm's and the projection's gradients
/// (unless `frozen`), the queries' gradients into `dq` (same layout as `q`) and the
/// keys' and values' into `dkv` (same layout as `kv`; `None` when they share `q`'s
/// buffer, as in self-attention). Returns the gradient of the residual sum, which is
/// also the gradient reaching `x` through the residual.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attn_backward(
    w: &[f32],
    g: &mut [f32],
    junk: &mut [f32],
    frozen: bool,
    d: Dims,
    at: &PostAt,
    dout: &[f32],
    a: &AttnActs,
    q: &[f32],
    kv: &[f32],
    jobs: &[Job],
    drop_out: Option<Dropout>,
    scratch: &mut Scratch,
    dq: &mut [f32],
    dkv: Option<&mut [f32]>,
) -> Vec<f32> {
    let (c, hd) = (d.c, d.hd());
    let (ds, dy) = tail_backward(
        w,
        g,
        junk,
        frozen,
        d,
        &at.tail(),
        dout,
        &a.y,
        &a.s,
        &a.st,
        drop_out,
        scratch,
    );
    time("heads backward", || {
        heads_backward(
            (&dy, c),
            q,
            kv,
            &a.probs,
            jobs,
            (hd, d.scale()),
            false,
            dq,
            dkv,
        )
    });
    scratch.pool.give(dy);
    ds
}

/// Where an MLP sublayer's matrices and norm start, and its width.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MlpAt {
    pub up_w: usize,
    pub up_b: usize,
    pub down_w: usize,
    pub down_b: usize,
    pub ln_w: usize,
    pub ln_b: usize,
    pub inner: usize,
}

impl PostAt {
    /// The projection (`[c, c]`) and norm in `w`.
    pub(crate) fn weights<'a>(&self, w: &'a [f32], c: usize) -> TailW<'a> {
        self.tail().weights(w, c, c)
    }
    fn tail(&self) -> Tail {
        Tail {
            w: self.proj_w,
            b: self.proj_b,
            ln_w: self.ln_w,
            ln_b: self.ln_b,
        }
    }
}

impl MlpAt {
    /// The MLP's tensors in `w`.
    pub(crate) fn weights<'a>(&self, w: &'a [f32], c: usize) -> MlpW<'a> {
        MlpW {
            up: Rhs::Nt(&w[self.up_w..self.up_w + self.inner * c]),
            up_b: &w[self.up_b..self.up_b + self.inner],
            tail: self.tail().weights(w, c, self.inner),
        }
    }
    fn tail(&self) -> Tail {
        Tail {
            w: self.down_w,
            b: self.down_b,
            ln_w: self.ln_w,
            ln_b: self.ln_b,
        }
    }
}

/// What an MLP sublayer's backward pass reads.
pub(crate) struct MlpActs {
    /// The activation's derivative at the pre-activation, and the activation (after
    /// its dropout).
    pub u: Vec<f32>,
    pub g: Vec<f32>,
    pub s: Vec<f32>,
    pub st: Vec<f32>,
}

impl MlpActs {
    pub fn give(self, pool: &mut Pool) {
        for v in [self.u, self.g, self.s, self.st] {
            pool.give(v);
        }
    }
}

/// `out = LN(x + drop(drop_act(act(x·Wupᵀ + b))·Wdownᵀ + b))`. With `keep` (a backward
/// pass follows) the activations keep the activation's derivative beside it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlp_forward(
    d: Dims,
    m: MlpW<'_>,
    act: Act,
    x: &[f32],
    drop_act: Option<Dropout>,
    drop_out: Option<Dropout>,
    scratch: &mut Scratch,
    keep: bool,
) -> (MlpActs, Vec<f32>) {
    let (c, inner) = (d.c, m.up_b.len());
    let n = x.len() / c;
    // The product's epilogue adds the bias and writes the activation into `g` and its
    // derivative over `u` (without `keep`, the activation over `u`), each block of rows
    // while it is in cache.
    let mut u = scratch.pool.take_written(n * inner);
    let mut g = if keep {
        scratch.pool.take_written(n * inner)
    } else {
        Vec::new()
    };
    let gp = SyncPtr(g.as_mut_ptr());
    let bias = m.up_b;
    let epilogue = |r0: usize, rows: &mut [f32]| {
        if !keep {
            for ur in rows.chunks_mut(inner) {
                ur.iter_mut().zip(bias).for_each(|(u, b)| *u += b);
                act.apply(ur);
            }
            return;
        }
        assert!((r0 * inner + rows.len()) <= n * inner);
        // SAFETY: rows r0.. of `g` (inside it, asserted), the rows of `u` this task
        // computed, which no other task touches.
        let gr = unsafe { std::slice::from_raw_parts_mut(gp.get().add(r0 * inner), rows.len()) };
        for (ur, gr) in rows.chunks_mut(inner).zip(gr.chunks_mut(inner)) {
            act_and_grad(ur, bias, gr, act as u8);
        }
    };
    time("linear", || {
        k::gemm::gemm_then(
            x,
            n,
            c,
            inner,
            m.up,
            &mut u,
            &mut scratch.panels,
            Some(&epilogue),
        )
    });
    if !keep {
        std::mem::swap(&mut u, &mut g);
    }
    drop_in_place(&mut g, drop_act);
    let (s, st, out) = tail_forward(d, m.tail, &g, x, drop_out, scratch);
    (MlpActs { u, g, s, st }, out)
}

/// Backward of [`mlp_forward`] from `dout`: the gradients of its tensors (unless
/// `frozen`); returns the gradient of its input `x` (residual included).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlp_backward(
    w: &[f32],
    g: &mut [f32],
    junk: &mut [f32],
    frozen: bool,
    d: Dims,
    at: &MlpAt,
    dout: &[f32],
    x: &[f32],
    a: &MlpActs,
    drop_act: Option<Dropout>,
    drop_out: Option<Dropout>,
    scratch: &mut Scratch,
) -> Vec<f32> {
    let (c, inner) = (d.c, at.inner);
    let n = dout.len() / c;
    let (ds, mut dgel) = tail_backward(
        w,
        g,
        junk,
        frozen,
        d,
        &at.tail(),
        dout,
        &a.g,
        &a.s,
        &a.st,
        drop_out,
        scratch,
    );
    drop_in_place(&mut dgel, drop_act);
    time("act backward", || {
        dgel.par_chunks_mut(4096)
            .zip(a.u.par_chunks(4096))
            .for_each(|(d, u)| k::gemm::mul_row(d, u))
    });
    let mut dx = scratch.pool.take(n * c);
    {
        let gr = wgrads(g, frozen, (at.up_w, inner * c), (at.up_b, inner));
        linear_backward(
            &dgel,
            x,
            n,
            &w[at.up_w..at.up_w + inner * c],
            inner,
            gr,
            Some(&mut dx),
            scratch,
        );
    }
    time("residual", || {
        dx.iter_mut().zip(&ds).for_each(|(d, s)| *d += s)
    });
    scratch.pool.give(ds);
    scratch.pool.give(dgel);
    dx
}

/// Query and key rows of every head of every sequence: self-attention over the rows of
/// a `[n, 3c]` buffer (`spans` for both sides), or cross-attention from a `[n, c]`
/// query buffer (`spans`) to a `[m, 2c]` key/value buffer (`kv_spans`).
pub(crate) fn head_jobs(
    d: Dims,
    spans: &[(usize, usize)],
    kv_spans: Option<&[(usize, usize)]>,
    causal: bool,
    drop: impl Fn(usize, usize) -> Option<Dropout>,
) -> Vec<Job> {
    let (c, hd) = (d.c, d.hd());
    let mut out = Vec::with_capacity(spans.len() * d.nh);
    for (s, &(q0, tq)) in spans.iter().enumerate() {
        for h in 0..d.nh {
            let at = match kv_spans {
                None => HeadAt {
                    q0,
                    tq,
                    qs: 3 * c,
                    qo: h * hd,
                    k0: q0,
                    tk: tq,
                    ks: 3 * c,
                    ko: c + h * hd,
                    vo: 2 * c + h * hd,
                    causal,
                },
                Some(kv) => HeadAt {
                    q0,
                    tq,
                    qs: c,
                    qo: h * hd,
                    k0: kv[s].0,
                    tk: kv[s].1,
                    ks: 2 * c,
                    ko: h * hd,
                    vo: c + h * hd,
                    causal: false,
                },
            };
            out.push(Job {
                at,
                h,
                drop: drop(s, h),
                y0: q0,
            });
        }
    }
    out
}

/// First row and length of each sequence.
pub(crate) fn spans_of(seqs: &[&[u32]]) -> (Vec<(usize, usize)>, usize) {
    let mut spans = Vec::with_capacity(seqs.len());
    let mut n = 0;
    for s in seqs {
        spans.push((n, s.len()));
        n += s.len();
    }
    (spans, n)
}

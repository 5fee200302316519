//! The decoder's training passes on a CUDA GPU, with the parameters, gradients, AdamW
//! moments and activations resident on the device, in the CPU's flat parameter layout.
//! The backward pass is the CPU's ([`super::backward`]) over this backend's operations
//! ([`Dev`]: the CPU's fused products are separate launches here, the GPU's memory
//! bandwidth making that cheap). The forward pass below is the same steps as the CPU's
//! (the engine's block, `engine::block`) in the same order, composed here from separate
//! launches: putting the engine's block over the same kind of operations is the next
//! step. Tests compare the loss and every gradient with the CPU passes
//! (`tests/cuda_train.rs`).

use super::backward::{self, Weight};
use super::{Drops, Layout};
use crate::engine::Mlp;
use crate::kernels::cpu::{AdamWStep, Dropout, RopeTable};
use crate::kernels::cuda::{Buf, Gpu, GpuRope, View};
use crate::Result;

/// A decoder's training state on a GPU.
pub(super) struct OnGpu {
    pub gpu: Gpu,
    pub params: Buf<f32>,
    pub grads: Buf<f32>,
    pub m: Buf<f32>,
    pub v: Buf<f32>,
    /// The model's rotary table.
    rope: Option<GpuRope>,
    acts: Option<Acts>,
    /// The first error of an operation that cannot return one (zeroing the gradients,
    /// their norm, the update: the trainer's interface for them is infallible), returned
    /// by the next pass.
    failure: std::cell::RefCell<Option<crate::Error>>,
}

/// Activations kept for the backward pass, and its scratch, for one batch shape.
struct Acts {
    b: usize,
    t: usize,
    ids: Buf<u32>,
    targets: Buf<u32>,
    res: Vec<Buf<f32>>,
    ln1: Vec<Buf<f32>>,
    ln1_stats: Vec<Buf<f32>>,
    qkv: Vec<Buf<f32>>,
    probs: Vec<Buf<f32>>,
    atty: Vec<Buf<f32>>,
    mid: Vec<Buf<f32>>,
    ln2: Vec<Buf<f32>>,
    ln2_stats: Vec<Buf<f32>>,
    pre: Vec<Buf<f32>>,
    act: Vec<Buf<f32>>,
    lnf: Buf<f32>,
    lnf_stats: Buf<f32>,
    logits: Buf<f32>,
    /// A branch's output before it joins the residual stream; in the backward pass,
    /// the gradient through a residual branch's dropout.
    tmp: Buf<f32>,
    dres: Buf<f32>,
    dln: Buf<f32>,
    dbig: Buf<f32>,
    dact: Buf<f32>,
    dqkv: Buf<f32>,
}

impl Acts {
    fn new(gpu: &Gpu, lay: &Layout, b: usize, t: usize) -> Result<Self> {
        let (m, c, f, nl) = (b * t, lay.c, lay.f, lay.blocks.len());
        let (w, qw, up) = (lay.heads.width(), lay.heads.q_width(), lay.up);
        let per = |n: usize, count: usize| {
            (0..count)
                .map(|_| gpu.alloc::<f32>(n))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Acts {
            b,
            t,
            ids: gpu.alloc(m)?,
            targets: gpu.alloc(m)?,
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
            lnf: gpu.alloc(m * c)?,
            lnf_stats: gpu.alloc(2 * m)?,
            logits: gpu.alloc(m * lay.vocab)?,
            tmp: gpu.alloc(m * c)?,
            dres: gpu.alloc(m * c)?,
            dln: gpu.alloc(m * c.max(qw))?,
            dbig: gpu.alloc(m * up)?,
            dact: gpu.alloc(if lay.mlp == Mlp::SwiGlu { m * f } else { 1 })?,
            dqkv: gpu.alloc(m * w)?,
        })
    }
}

impl OnGpu {
    /// Uploads the parameters, gradients and moments (the host's current values).
    pub fn new(gpu: Gpu, lay: &Layout, bufs: [&[f32]; 4]) -> Result<Self> {
        let [p, g, m, v] = bufs;
        Ok(OnGpu {
            params: gpu.upload(p)?,
            grads: gpu.upload(g)?,
            m: gpu.upload(m)?,
            v: gpu.upload(v)?,
            rope: lay.rope.as_ref().map(|r| gpu.upload_rope(r)).transpose()?,
            acts: None,
            failure: Default::default(),
            gpu,
        })
    }

    /// Keeps the first error of `r` for the next pass.
    fn note<T>(&self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.failure.borrow_mut().get_or_insert(e);
                None
            }
        }
    }

    pub fn zero_grads(&self) {
        self.note(self.gpu.clear(&self.grads, self.grads.len()));
    }

    /// The gradients' L2 norm (NaN after a device error, which the next pass returns).
    pub fn grad_norm(&self) -> f64 {
        self.note(self.gpu.sum_squares(&self.grads))
            .map_or(f64::NAN, f64::sqrt)
    }

    pub fn adamw(&self, lay: &Layout, step: AdamWStep) {
        self.note(self.gpu.adamw(
            &self.params,
            &self.grads,
            &self.m,
            &self.v,
            &lay.regions,
            step,
        ));
    }

    /// The mean loss of `ids` against `targets` (checked by the caller); with `scale`,
    /// the backward pass too, adding `scale ·` the mean loss's gradient to the gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn pass(
        &mut self,
        lay: &Layout,
        ids: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        drops: Drops,
        scale: Option<f32>,
    ) -> Result<f64> {
        if let Some(e) = self.failure.borrow_mut().take() {
            return Err(e);
        }
        if self.acts.as_ref().is_none_or(|a| a.b != b || a.t != t) {
            self.acts = None; // free the old shape's buffers first
            self.acts = Some(Acts::new(&self.gpu, lay, b, t)?);
        }
        // Dynamic rotary scaling past the original context: tables of this length.
        let stretched = lay
            .stretched_rope(t)
            .map(|r: RopeTable| self.gpu.upload_rope(&r))
            .transpose()?;
        let rope = stretched.as_ref().or(self.rope.as_ref());
        let a = self.acts.as_ref().unwrap();
        let gpu = &self.gpu;
        gpu.write(&a.ids, ids)?;
        gpu.write(&a.targets, targets)?;
        let m = b * t;
        forward(gpu, lay, &self.params, a, b, t, drops, rope)?;
        let sum = gpu.cross_entropy(
            &a.logits,
            lay.vocab,
            &a.targets,
            0.0,
            scale.map(|s| s / m as f32),
        )?;
        if scale.is_some() {
            let a = self.acts.as_mut().unwrap();
            let kept = backward::Kept {
                res: &a.res,
                ln1: &a.ln1,
                ln1_stats: &a.ln1_stats,
                qkv: &a.qkv,
                probs: &a.probs,
                atty: &a.atty,
                mid: &a.mid,
                ln2: &a.ln2,
                ln2_stats: &a.ln2_stats,
                pre: &a.pre,
                act: &a.act,
                lnf: &a.lnf,
                lnf_stats: &a.lnf_stats,
                logits: &a.logits,
            };
            let scratch = backward::Scratch {
                dres: &mut a.dres,
                dtmp: &mut a.tmp,
                dln: &mut a.dln,
                dbig: &mut a.dbig,
                dact: &mut a.dact,
                dqkv: &mut a.dqkv,
            };
            let mut ops = Dev {
                gpu,
                lay,
                w: &self.params,
                g: &self.grads,
                ids: &a.ids,
                b,
                t,
                rope,
            };
            backward::backward(&mut ops, lay, &kept, scratch, m, drops)?;
        }
        Ok(sum / m as f64)
    }
}

/// `out = x·W (+ bias)` for `x [m, k]`, `W [k, n]` at `w` in the parameters.
#[allow(clippy::too_many_arguments)]
fn linear(
    gpu: &Gpu,
    x: &Buf<f32>,
    params: &Buf<f32>,
    (w, bias): (usize, Option<usize>),
    m: usize,
    k: usize,
    n: usize,
    out: &Buf<f32>,
) -> Result<()> {
    gpu.gemm(false, false, m, n, k, x, &params.view(w, k * n), out, false)?;
    match bias {
        Some(o) => gpu.add_bias(out, &params.view(o, n), m, n),
        None => Ok(()),
    }
}

/// A norm's weight and (LayerNorm) bias at `at`.
fn norm_of<'a>(
    lay: &Layout,
    buf: &'a Buf<f32>,
    at: usize,
) -> (View<'a, f32>, Option<View<'a, f32>>) {
    let c = lay.c;
    (buf.view(at, c), lay.norm_bias.then(|| buf.view(at + c, c)))
}

/// `out = res + dropout(y)` over `[m, c]` (`y` is changed by the dropout).
fn residual(
    gpu: &Gpu,
    res: &Buf<f32>,
    y: &Buf<f32>,
    d: Option<Dropout>,
    n: usize,
    out: &Buf<f32>,
) -> Result<()> {
    if let Some(d) = d {
        gpu.dropout(y, d, y, n)?;
    }
    gpu.add(out, res, y, n)
}

#[allow(clippy::too_many_arguments)]
fn forward(
    gpu: &Gpu,
    lay: &Layout,
    w: &Buf<f32>,
    a: &Acts,
    b: usize,
    t: usize,
    drops: Drops,
    rope: Option<&GpuRope>,
) -> Result<()> {
    let (m, c, f, eps) = (b * t, lay.c, lay.f, lay.eps);
    let (heads, up) = (lay.heads, lay.up);
    let (qw, width) = (heads.q_width(), heads.width());
    let wpe = lay.wpe.map(|o| w.view(o, lay.n_pos * c));
    gpu.embed(
        &a.ids,
        &w.view(lay.wte, lay.vocab * c),
        wpe.as_deref(),
        t,
        c,
        &a.res[0],
    )?;
    if let Some(d) = drops.embd() {
        gpu.dropout(&a.res[0], d, &a.res[0], m * c)?;
    }
    let norm = |x: &Buf<f32>, at: usize, out: &Buf<f32>, stats: &Buf<f32>| {
        let (nw, nb) = norm_of(lay, w, at);
        gpu.layer_norm(x, &nw, nb.as_deref(), eps, m, out, stats)
    };
    for (l, at) in lay.blocks.iter().enumerate() {
        if l == 0 {
            norm(&a.res[0], at.ln1, &a.ln1[0], &a.ln1_stats[0])?;
        }
        linear(
            gpu,
            &a.ln1[l],
            w,
            (at.qkv_w, at.qkv_b),
            m,
            c,
            width,
            &a.qkv[l],
        )?;
        if let Some(table) = rope {
            gpu.rope(&a.qkv[l], m, t, heads, table, false)?;
        }
        gpu.attention(
            &a.qkv[l],
            b,
            t,
            heads,
            lay.windows[l],
            &a.probs[l],
            &a.atty[l],
            drops.attn(l),
        )?;
        linear(gpu, &a.atty[l], w, (at.proj_w, at.proj_b), m, qw, c, &a.tmp)?;
        residual(
            gpu,
            &a.res[l],
            &a.tmp,
            drops.resid_attn(l),
            m * c,
            &a.mid[l],
        )?;
        norm(&a.mid[l], at.ln2, &a.ln2[l], &a.ln2_stats[l])?;
        match lay.mlp {
            Mlp::SwiGlu => {
                linear(gpu, &a.ln2[l], w, (at.fc_w, at.fc_b), m, c, up, &a.pre[l])?;
                gpu.swiglu(&a.pre[l], m, f, &a.act[l])?;
            }
            _ => {
                // The product without its bias: bias_gelu adds it, and leaves the
                // GELU's derivative in `pre` for the backward pass.
                linear(gpu, &a.ln2[l], w, (at.fc_w, None), m, c, f, &a.pre[l])?;
                let bias = at.fc_b.map(|o| w.view(o, f));
                gpu.bias_gelu(&a.pre[l], bias.as_deref(), &a.act[l], m, f)?;
            }
        }
        linear(gpu, &a.act[l], w, (at.fcp_w, at.fcp_b), m, f, c, &a.tmp)?;
        residual(
            gpu,
            &a.mid[l],
            &a.tmp,
            drops.resid_mlp(l),
            m * c,
            &a.res[l + 1],
        )?;
        match lay.blocks.get(l + 1) {
            Some(nb) => norm(&a.res[l + 1], nb.ln1, &a.ln1[l + 1], &a.ln1_stats[l + 1])?,
            None => norm(&a.res[l + 1], lay.lnf, &a.lnf, &a.lnf_stats)?,
        }
    }
    let head = w.view(lay.head_at(), lay.vocab * c);
    gpu.gemm(
        false, true, m, lay.vocab, c, &a.lnf, &head, &a.logits, false,
    )
}

/// The CUDA backend's operations of the backward pass, for the batch `ids [b, t]` on the
/// device, over the parameters `w`, adding to the gradients `g`: the CPU's fused
/// products are separate launches here.
struct Dev<'a> {
    gpu: &'a Gpu,
    lay: &'a Layout,
    w: &'a Buf<f32>,
    g: &'a Buf<f32>,
    ids: &'a Buf<u32>,
    b: usize,
    t: usize,
    rope: Option<&'a GpuRope>,
}

impl backward::Ops for Dev<'_> {
    type B = Buf<f32>;
    type Err = crate::Error;

    fn matmul(
        &mut self,
        a: &Buf<f32>,
        (m, k, n): (usize, usize, usize),
        w: Weight,
        out: &mut Buf<f32>,
    ) -> Result<()> {
        let (tb, at) = match w {
            Weight::Nn(at) => (false, at),
            Weight::Nt(at) => (true, at),
        };
        let w = self.w.view(at, k * n);
        self.gpu.gemm(false, tb, m, n, k, a, &w, out, false)
    }

    fn matmul_times(
        &mut self,
        a: &Buf<f32>,
        (m, k, n): (usize, usize, usize),
        w: Weight,
        by: &Buf<f32>,
        out: &mut Buf<f32>,
    ) -> Result<()> {
        self.matmul(a, (m, k, n), w, out)?;
        self.gpu.mul_into(out, by, m * n)
    }

    fn weight_grad(
        &mut self,
        x: &Buf<f32>,
        dy: &Buf<f32>,
        (m, rows, cols): (usize, usize, usize),
        (w, bias): (usize, Option<usize>),
    ) -> Result<()> {
        let gw = self.g.view(w, rows * cols);
        self.gpu
            .gemm(true, false, rows, cols, m, x, dy, &gw, true)?;
        match bias {
            Some(o) => self.gpu.col_sums_acc(dy, m, cols, &self.g.view(o, cols)),
            None => Ok(()),
        }
    }

    fn swiglu_backward(
        &mut self,
        d: &Buf<f32>,
        gu: &Buf<f32>,
        (m, f): (usize, usize),
        dgu: &mut Buf<f32>,
    ) -> Result<()> {
        self.gpu.swiglu_backward(d, gu, m, f, dgu)
    }

    fn norm_backward(
        &mut self,
        dy: &Buf<f32>,
        x: &Buf<f32>,
        stats: &Buf<f32>,
        at: usize,
        dx: &mut Buf<f32>,
    ) -> Result<()> {
        let (nw, _) = norm_of(self.lay, self.w, at);
        let (gw, gb) = norm_of(self.lay, self.g, at);
        let m = self.b * self.t;
        self.gpu
            .layer_norm_backward(dy, x, stats, &nw, m, dx, &gw, gb.as_deref())
    }

    fn attention_backward(
        &mut self,
        dy: &Buf<f32>,
        qkv: &Buf<f32>,
        probs: &Buf<f32>,
        _window: Option<usize>,
        dropout: Option<Dropout>,
        dqkv: &mut Buf<f32>,
    ) -> Result<()> {
        // The weights outside a window are zero in `probs`: the backward needs no window.
        let (b, t, heads) = (self.b, self.t, self.lay.heads);
        self.gpu
            .attention_backward(dy, qkv, probs, b, t, heads, dqkv, dropout)
    }

    fn rope_backward(&mut self, dqkv: &mut Buf<f32>) -> Result<()> {
        match self.rope {
            Some(table) => {
                let (m, t, heads) = (self.b * self.t, self.t, self.lay.heads);
                self.gpu.rope(dqkv, m, t, heads, table, true)
            }
            None => Ok(()),
        }
    }

    fn dropout_into(
        &mut self,
        x: &Buf<f32>,
        d: Dropout,
        n: usize,
        out: &mut Buf<f32>,
    ) -> Result<()> {
        self.gpu.dropout(x, d, out, n)
    }

    fn dropout_in_place(&mut self, x: &mut Buf<f32>, d: Dropout, n: usize) -> Result<()> {
        let x: &Buf<f32> = x;
        self.gpu.dropout(x, d, x, n)
    }

    fn clear(&mut self, x: &mut Buf<f32>, n: usize) -> Result<()> {
        self.gpu.clear(x, n)
    }

    fn embed_backward(&mut self, d: &Buf<f32>) -> Result<()> {
        let (lay, c) = (self.lay, self.lay.c);
        let dwpe = lay.wpe.map(|o| self.g.view(o, lay.n_pos * c));
        let dwte = self.g.view(lay.wte, lay.vocab * c);
        self.gpu
            .embed_backward(self.ids, d, self.t, c, &dwte, dwpe.as_deref())
    }
}

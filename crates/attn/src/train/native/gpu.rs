//! The decoder's training passes on a CUDA GPU, with the parameters, gradients, AdamW
//! moments and activations resident on the device, in the CPU's flat parameter layout.
//! Both passes are the CPU's, written once: the forward ([`super::forward`], whose
//! blocks are the engine's `engine::block`) over [`GpuBlock`] and [`GpuPass`], the
//! backward ([`super::backward`]) over [`Dev`]. The CPU fuses biases, residual sums,
//! dropout, norms and the GELU into its products' epilogues; here they are separate
//! launches (the GPU's memory bandwidth makes that cheap). Tests compare the loss and
//! every gradient with the CPU passes (`tests/cuda_train.rs`).

use super::backward::{self, Weight};
use super::forward;
use super::{Drops, Layout};
use crate::engine::block::{self, Backend, Exec, NormOut, NormW};
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

/// A pass's buffers for one batch shape: the tokens and targets, the activations kept
/// for the backward pass and its scratch.
struct Acts {
    ids: Buf<u32>,
    targets: Buf<u32>,
    keep: forward::Acts<Vec<Buf<f32>>, Buf<f32>>,
}

impl Acts {
    fn new(gpu: &Gpu, lay: &Layout, b: usize, t: usize) -> Result<Self> {
        let per = |n: usize, count: usize| (0..count).map(|_| gpu.alloc::<f32>(n)).collect();
        Ok(Acts {
            ids: gpu.alloc(b * t)?,
            targets: gpu.alloc(b * t)?,
            keep: forward::Acts::new(lay, (b, t), per, |n| gpu.alloc(n))?,
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
        if self
            .acts
            .as_ref()
            .is_none_or(|a| a.keep.b != b || a.keep.t != t)
        {
            self.acts = None; // free the old shape's buffers first
            self.acts = Some(Acts::new(&self.gpu, lay, b, t)?);
        }
        // Dynamic rotary scaling past the original context: tables of this length.
        let stretched = lay
            .stretched_rope(t)
            .map(|r: RopeTable| self.gpu.upload_rope(&r))
            .transpose()?;
        let rope = stretched.as_ref().or(self.rope.as_ref());
        let a = self.acts.as_mut().unwrap();
        let gpu = &self.gpu;
        gpu.write(&a.ids, ids)?;
        gpu.write(&a.targets, targets)?;
        let m = b * t;
        let pass = GpuPass::new(gpu, lay, &self.params, &a.ids, b, t, rope);
        forward::forward(&mut GpuBlock(gpu), &pass, lay, &mut a.keep, m, drops)?;
        let sum = gpu.cross_entropy(
            &a.keep.logits,
            lay.vocab,
            &a.targets,
            0.0,
            scale.map(|s| s / m as f32),
        )?;
        if scale.is_some() {
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
            backward::backward(&mut ops, lay, &mut a.keep, m, drops)?;
        }
        Ok(sum / m as f64)
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

/// A GPU's memory, for the engine's block: device buffers, and matrices in them
/// (`[k, n]`, or `[n, k]` used transposed).
pub(super) struct Device;

impl Backend for Device {
    type B = Buf<f32>;
    type Vector = Buf<f32>;
    type W<'a> = Mat<'a>;
}

/// A matrix on the device, the right-hand side of a product.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    buf: &'a Buf<f32>,
    /// Stored `[n, k]`, used transposed.
    t: bool,
}

impl<'a> Mat<'a> {
    /// A `[k, n]` matrix.
    fn used_as_is(buf: &'a Buf<f32>) -> Self {
        Mat { buf, t: false }
    }
}

/// The CUDA backend's operations on the engine's block: the CPU's fused epilogues are
/// separate launches.
struct GpuBlock<'a>(&'a Gpu);

/// Not on the GPU: the trainer takes the GPU only for the tanh GELU and SwiGLU.
fn unsupported(what: &str) -> crate::Error {
    crate::Error::Device(format!("{what} is not implemented on the GPU"))
}

impl Exec for GpuBlock<'_> {
    type K = Device;
    type Err = crate::Error;

    fn gemm_bias(
        &mut self,
        x: &Buf<f32>,
        (m, k, n): (usize, usize, usize),
        w: Mat<'_>,
        b: Option<&Buf<f32>>,
        out: &mut Buf<f32>,
    ) -> Result<()> {
        self.0.gemm(false, w.t, m, n, k, x, w.buf, out, false)?;
        match b {
            Some(b) => self.0.add_bias(out, b, m, n),
            None => Ok(()),
        }
    }

    fn gemm_bias_residual(
        &mut self,
        x: &Buf<f32>,
        (m, k, n): (usize, usize, usize),
        w: Mat<'_>,
        b: Option<&Buf<f32>>,
        res: &Buf<f32>,
        out: &mut Buf<f32>,
        drop: Option<Dropout>,
        next: NormOut<'_, Device>,
    ) -> Result<()> {
        self.gemm_bias(x, (m, k, n), w, b, out)?;
        let out: &Buf<f32> = out;
        if let Some(d) = drop {
            self.0.dropout(out, d, out, m * n)?;
        }
        self.0.add(out, res, out, m * n)?;
        let NormOut {
            w,
            b,
            eps,
            out: normed,
            stats,
        } = next;
        self.0.layer_norm(out, w, b, eps, m, normed, stats)
    }

    fn gemm_bias_gelu(
        &mut self,
        x: &Buf<f32>,
        (m, k, n): (usize, usize, usize),
        w: Mat<'_>,
        b: &Buf<f32>,
        pre: &mut Buf<f32>,
        act: &mut Buf<f32>,
    ) -> Result<()> {
        // The product without its bias: bias_gelu adds it, and leaves the GELU's
        // derivative in `pre` for the backward pass.
        self.gemm_bias(x, (m, k, n), w, None, pre)?;
        self.0.bias_gelu(pre, Some(b), act, m, n)
    }

    fn gate(
        &mut self,
        mlp: Mlp,
        (m, inner): (usize, usize),
        gu: &mut Buf<f32>,
        act: &mut Buf<f32>,
    ) -> Result<()> {
        match mlp {
            Mlp::SwiGlu => self.0.swiglu(gu, m, inner, act),
            _ => Err(unsupported("this gated MLP")),
        }
    }

    fn activate(&mut self, _: Mlp, _: (usize, usize), _: &mut Buf<f32>) -> Result<()> {
        Err(unsupported("this activation"))
    }

    fn copy(&mut self, x: &Buf<f32>, n: usize, out: &mut Buf<f32>) -> Result<()> {
        self.0.copy(&x.view(0, n), out)
    }

    fn drop_in_place(&mut self, x: &mut Buf<f32>, n: usize, d: Dropout) -> Result<()> {
        let x: &Buf<f32> = x;
        self.0.dropout(x, d, x, n)
    }
}

impl forward::PerLayer<Buf<f32>> for Vec<Buf<f32>> {
    fn at(&self, l: usize) -> &Buf<f32> {
        &self[l]
    }
    fn at_mut(&mut self, l: usize) -> &mut Buf<f32> {
        &mut self[l]
    }
    fn pair_mut(&mut self, l: usize) -> (&Buf<f32>, &mut Buf<f32>) {
        let (lo, hi) = self.split_at_mut(l + 1);
        (&lo[l], &mut hi[0])
    }
}

/// One block's matrices and biases: views of the parameters.
struct BlockViews<'a> {
    qkv: View<'a, f32>,
    qkv_b: Option<View<'a, f32>>,
    proj: View<'a, f32>,
    proj_b: Option<View<'a, f32>>,
    fc: View<'a, f32>,
    fc_b: Option<View<'a, f32>>,
    fcp: View<'a, f32>,
    fcp_b: Option<View<'a, f32>>,
}

/// What the GPU's forward pass reads besides the block's operations: the batch `ids
/// [b, t]` on the device, views of the parameters, the rotary table.
struct GpuPass<'a> {
    gpu: &'a Gpu,
    lay: &'a Layout,
    w: &'a Buf<f32>,
    ids: &'a Buf<u32>,
    b: usize,
    t: usize,
    rope: Option<&'a GpuRope>,
    blocks: Vec<BlockViews<'a>>,
    /// Each norm's weights (and LayerNorm's bias), by where they are.
    norms: Vec<(usize, View<'a, f32>, Option<View<'a, f32>>)>,
    head: View<'a, f32>,
}

impl<'a> GpuPass<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        gpu: &'a Gpu,
        lay: &'a Layout,
        w: &'a Buf<f32>,
        ids: &'a Buf<u32>,
        b: usize,
        t: usize,
        rope: Option<&'a GpuRope>,
    ) -> Self {
        let (c, f, up) = (lay.c, lay.f, lay.up);
        let (qw, width) = (lay.heads.q_width(), lay.heads.width());
        let blocks = lay
            .blocks
            .iter()
            .map(|at| BlockViews {
                qkv: w.view(at.qkv_w, c * width),
                qkv_b: at.qkv_b.map(|o| w.view(o, width)),
                proj: w.view(at.proj_w, qw * c),
                proj_b: at.proj_b.map(|o| w.view(o, c)),
                fc: w.view(at.fc_w, c * up),
                fc_b: at.fc_b.map(|o| w.view(o, up)),
                fcp: w.view(at.fcp_w, f * c),
                fcp_b: at.fcp_b.map(|o| w.view(o, c)),
            })
            .collect();
        let ats = lay.blocks.iter().flat_map(|at| [at.ln1, at.ln2]);
        let norms = ats
            .chain([lay.lnf])
            .map(|at| {
                let (nw, nb) = norm_of(lay, w, at);
                (at, nw, nb)
            })
            .collect();
        GpuPass {
            gpu,
            lay,
            w,
            ids,
            b,
            t,
            rope,
            blocks,
            norms,
            head: w.view(lay.head_at(), lay.vocab * c),
        }
    }
}

impl forward::Pass for GpuPass<'_> {
    type K = Device;
    type Err = crate::Error;

    fn embed(&self, x: &mut Buf<f32>) -> Result<()> {
        let (lay, c) = (self.lay, self.lay.c);
        let wpe = lay.wpe.map(|o| self.w.view(o, lay.n_pos * c));
        let wte = self.w.view(lay.wte, lay.vocab * c);
        self.gpu.embed(self.ids, &wte, wpe.as_deref(), self.t, c, x)
    }

    fn norm(
        &self,
        x: &Buf<f32>,
        at: usize,
        out: &mut Buf<f32>,
        stats: &mut Buf<f32>,
    ) -> Result<()> {
        let nw = self.norm_w(at);
        let m = self.b * self.t;
        self.gpu
            .layer_norm(x, nw.w, nw.b, self.lay.eps, m, out, stats)
    }

    fn attend(
        &self,
        l: usize,
        qkv: &mut Buf<f32>,
        probs: &mut Buf<f32>,
        atty: &mut Buf<f32>,
        dropout: Option<Dropout>,
    ) -> Result<()> {
        let (b, t, heads) = (self.b, self.t, self.lay.heads);
        if let Some(table) = self.rope {
            self.gpu.rope(qkv, b * t, t, heads, table, false)?;
        }
        let window = self.lay.windows[l];
        self.gpu
            .attention(qkv, b, t, heads, window, probs, atty, dropout)
    }

    fn weights(&self, l: usize) -> block::Weights<'_, Device> {
        let (v, at) = (&self.blocks[l], &self.lay.blocks[l]);
        let mat = Mat::used_as_is;
        block::Weights {
            qkv: mat(&v.qkv),
            qkv_b: v.qkv_b.as_deref(),
            proj: mat(&v.proj),
            proj_b: v.proj_b.as_deref(),
            norm2: self.norm_w(at.ln2),
            mlp: block::MlpWeights {
                up: mat(&v.fc),
                up_b: v.fc_b.as_deref(),
                down: mat(&v.fcp),
                down_b: v.fcp_b.as_deref(),
            },
        }
    }

    fn norm_w(&self, at: usize) -> NormW<'_, Device> {
        let (_, w, b) = self
            .norms
            .iter()
            .find(|n| n.0 == at)
            .expect("every norm has its views");
        NormW { w, b: b.as_deref() }
    }

    fn head(&self) -> Mat<'_> {
        Mat {
            buf: &self.head,
            t: true,
        }
    }
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

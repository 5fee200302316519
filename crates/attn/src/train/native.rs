//! Decoder training: GPT-2 and Llama (any [`DecoderSpec`] with a tanh-GELU or SwiGLU
//! MLP), on the CPU or (`gpu.rs`) a CUDA GPU.
//!
//! There is no autograd graph: recording every operation of the forward pass and
//! allocating a gradient for each costs more than the arithmetic at the sizes trained
//! on a laptop. Here the parameters, their gradients and the AdamW moments are three
//! flat `f32` buffers, every activation the backward pass needs has a buffer allocated
//! once for the batch shape ([`forward::Acts`]), and the two passes are written once
//! each, over a backend's operations: the forward ([`forward`]: embeddings, the engine's
//! block `engine::block` for every layer with its buffers kept, head) and the backward,
//! written out by hand as llm.c does ([`backward`]). This file holds the CPU's
//! operations for both ([`CpuPass`] and [`block::Cpu`]; [`Cpu`]: the slice kernels of
//! [`crate::kernels::cpu`]) and `gpu.rs` the CUDA backend's. LayerNorm or RMSNorm,
//! learned or rotary positions, multi-head or grouped-query attention, GELU or SwiGLU,
//! biases or none, tied or untied head. Tests compare the loss and every gradient with
//! transformers' (fixtures) and with finite differences.
//!
//! Every matrix is kept `[in, out]` (GPT-2's `Conv1D` layout): a Llama's `nn.Linear`
//! weights are transposed on the way in and out, and its query, key and value
//! projections (gate and up projections) are the column blocks of one fused matrix.
//!
//! Dropout (embeddings, attention weights, residual branches) uses masks from a hash of
//! a per-step seed, recomputed in the backward pass.
//!
//! Why one file of this length: the parameter layout (every checkpoint tensor's place in
//! the flat buffers, for loading, saving and the optimizer's regions), the decoder that
//! owns the buffers and cuts batches into shards, and the CPU's implementations of the
//! passes' operations over that layout are read together.

use super::optimizer::AdamWConfig;
use super::profile::time;
use crate::engine::block::{self, NormW};
use crate::engine::families::{bias_name, schema, NormNames, Parts};
use crate::engine::io::Plain;
use crate::engine::{DecoderSpec, Mlp, NormKind, Positions};
use crate::kernels::cpu::huge::HugeVec;
use crate::kernels::cpu::{self as k, Heads, Rhs, Rope, RopeTable};
use crate::{Error, Result};
use std::convert::Infallible;

mod backward;
mod forward;
mod gpu;

/// Where a checkpoint tensor's values sit in the flat buffers.
#[derive(Clone, Copy)]
enum Place {
    /// Contiguous, in the tensor's own order.
    Plain(usize),
    /// A `[rows, cols]` (`nn.Linear`, `[out, in]`) tensor stored transposed, as columns
    /// `col0..col0 + rows` of the `[cols, width]` matrix at `off`.
    Columns {
        off: usize,
        width: usize,
        col0: usize,
    },
}

/// One named parameter (a checkpoint tensor) inside the flat buffers.
struct Slot {
    name: String,
    /// The checkpoint's shape.
    shape: Vec<usize>,
    place: Place,
}

impl Slot {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// The flat index of the tensor's element `i` (row-major in its own shape).
    fn index(&self, i: usize) -> usize {
        match self.place {
            Place::Plain(off) => off + i,
            Place::Columns { off, width, col0 } => {
                let cols = self.shape[1];
                off + (i % cols) * width + col0 + i / cols
            }
        }
    }
    /// The tensor's values, from `buf`.
    fn read(&self, buf: &[f32]) -> Vec<f32> {
        match self.place {
            Place::Plain(off) => buf[off..off + self.len()].to_vec(),
            Place::Columns { .. } => (0..self.len()).map(|i| buf[self.index(i)]).collect(),
        }
    }
    /// Store the tensor's values into `buf`.
    fn write(&self, buf: &mut [f32], values: &[f32]) {
        match self.place {
            Place::Plain(off) => buf[off..off + self.len()].copy_from_slice(values),
            Place::Columns { .. } => {
                for (i, v) in values.iter().enumerate() {
                    buf[self.index(i)] = *v;
                }
            }
        }
    }
}

/// Offsets of one block's parameters. A norm's bias (LayerNorm) directly follows its
/// weight, a matrix's bias (where there is one) directly follows the matrix.
#[derive(Clone, Copy)]
struct BlockAt {
    ln1: usize,
    qkv_w: usize,
    qkv_b: Option<usize>,
    proj_w: usize,
    proj_b: Option<usize>,
    ln2: usize,
    fc_w: usize,
    fc_b: Option<usize>,
    fcp_w: usize,
    fcp_b: Option<usize>,
}

/// One buffer of `each` floats per layer, all in one [`HugeVec`] (huge pages: the
/// backward pass reads these with strides of kilobytes); `layers[l]` is layer
/// `l`'s.
#[derive(Default)]
struct Layers {
    buf: HugeVec<f32>,
    each: usize,
    count: usize,
}

impl Layers {
    fn new(each: usize, count: usize) -> Self {
        Layers {
            buf: HugeVec::zeroed_rounded(each * count),
            each,
            count,
        }
    }
}

impl Layers {
    /// Layer `l`'s buffer, and layer `l + 1`'s to write.
    fn pair_mut(&mut self, l: usize) -> (&[f32], &mut [f32]) {
        assert!(
            l + 1 < self.count,
            "layers {l} and {} of {}",
            l + 1,
            self.count
        );
        let each = self.each;
        let (lo, hi) = self.buf[..(l + 2) * each].split_at_mut((l + 1) * each);
        (&lo[l * each..], hi)
    }
}

impl std::ops::Index<usize> for Layers {
    type Output = [f32];
    fn index(&self, l: usize) -> &[f32] {
        assert!(l < self.count, "layer {l} of {}", self.count);
        &self.buf[l * self.each..][..self.each]
    }
}

impl std::ops::IndexMut<usize> for Layers {
    fn index_mut(&mut self, l: usize) -> &mut [f32] {
        assert!(l < self.count, "layer {l} of {}", self.count);
        let each = self.each;
        &mut self.buf[l * each..][..each]
    }
}

/// One shard's buffers for one batch shape: the pass's activations and scratch, the
/// dropout of its last forward pass, and the products' packing scratch.
#[derive(Default)]
struct Acts {
    keep: forward::Acts<Layers, Vec<f32>>,
    /// The dropout of the last forward pass.
    drops: Drops,
    /// Packed right-hand sides of the products.
    panels: Vec<f32>,
    /// Packed left-hand sides of the weight-gradient products.
    xpack: Vec<f32>,
}

impl Acts {
    fn ensure(&mut self, lay: &Layout, b: usize, t: usize) {
        if self.keep.b == b && self.keep.t == t {
            return;
        }
        let per = |n, count| Ok::<_, Infallible>(Layers::new(n, count));
        let Ok(keep) = forward::Acts::new(lay, (b, t), per, |n| Ok(vec![0f32; n]));
        self.keep = keep;
    }
}

/// The dropout of one training forward pass (none in evaluation): each layer and place
/// has its own masks, drawn from the pass's seed (see [`k::Dropout`]). A shard's masks
/// are the whole batch's from its first element on.
#[derive(Clone, Copy, Default)]
struct Drops {
    embd: Option<k::Dropout>,
    attn: Option<k::Dropout>,
    resid: Option<k::Dropout>,
    /// Elements before the shard in the `[rows, n_embd]` tensors.
    row_off: u64,
    /// Elements before the shard in the attention weights `[b, heads, t, t]`.
    att_off: u64,
}

impl Drops {
    fn new((pe, pa, pr): (f32, f32, f32), seed: Option<u64>) -> Self {
        let Some(seed) = seed else {
            return Drops::default();
        };
        Drops {
            embd: k::Dropout::new(pe, seed),
            attn: k::Dropout::new(pa, seed),
            resid: k::Dropout::new(pr, seed),
            row_off: 0,
            att_off: 0,
        }
    }
    /// The masks of a shard that starts at sequence `b0` (of `t` positions).
    fn at_sequence(self, b0: usize, t: usize, c: usize, nh: usize) -> Self {
        Drops {
            row_off: (b0 * t * c) as u64,
            att_off: (b0 * nh * t * t) as u64,
            ..self
        }
    }
    fn embd(&self) -> Option<k::Dropout> {
        self.embd.map(|d| d.site(0).shifted(self.row_off))
    }
    fn attn(&self, l: usize) -> Option<k::Dropout> {
        self.attn
            .map(|d| d.site(3 * l as u64 + 1).shifted(self.att_off))
    }
    fn resid_attn(&self, l: usize) -> Option<k::Dropout> {
        self.resid
            .map(|d| d.site(3 * l as u64 + 2).shifted(self.row_off))
    }
    fn resid_mlp(&self, l: usize) -> Option<k::Dropout> {
        self.resid
            .map(|d| d.site(3 * l as u64 + 3).shifted(self.row_off))
    }
}

/// The model's sizes and where each parameter sits in the flat buffers.
struct Layout {
    vocab: usize,
    n_pos: usize,
    c: usize,
    heads: Heads,
    /// The MLP's hidden width, and the columns of its first matrix (`2f` for SwiGLU).
    f: usize,
    up: usize,
    mlp: Mlp,
    /// LayerNorm (with biases) rather than RMSNorm.
    norm_bias: bool,
    eps: f32,
    /// Dropout probabilities: embeddings, attention weights, residual branches.
    pdrop: (f32, f32, f32),
    wte: usize,
    /// Learned positions.
    wpe: Option<usize>,
    rope: Option<RopeTable>,
    /// The rotary positions' base and scaling (dynamic scaling needs tables of its own
    /// for windows past the original context).
    rope_spec: Option<Rope>,
    /// Each layer's sliding attention window.
    windows: Vec<Option<usize>>,
    blocks: Vec<BlockAt>,
    lnf: usize,
    /// An untied output head `[vocab, c]`.
    head: Option<usize>,
    /// Contiguous runs of the flat buffers: `(start, end, decays)` (weight decay on
    /// matrices only, as GPT-2 and nanoGPT train).
    regions: Vec<(usize, usize, bool)>,
}

impl Layout {
    /// The rotary tables of windows `t` long when dynamic scaling gives them frequencies
    /// of their own (past the original context); `None` means the model's tables.
    fn stretched_rope(&self, t: usize) -> Option<RopeTable> {
        let rope = self.rope_spec.filter(|r| r.stretches(t))?;
        Some(RopeTable::for_len(self.heads.dim, 0..t, t, &rope))
    }

    fn norm_b<'a>(&self, w: &'a [f32], at: usize) -> Option<&'a [f32]> {
        self.norm_bias.then(|| &w[at + self.c..at + 2 * self.c])
    }
    /// The norm whose weight is at `at`.
    fn norm_at<'a>(&self, w: &'a [f32], at: usize) -> NormW<'a> {
        NormW {
            w: &w[at..at + self.c],
            b: self.norm_b(w, at),
        }
    }
    fn shape(&self) -> block::Shape {
        block::Shape {
            c: self.c,
            heads: self.heads,
            inner: self.f,
            up: self.up,
            mlp: self.mlp,
            eps: self.eps,
        }
    }
    /// Block `at`'s weights in the flat buffer `w`.
    fn block_weights<'a>(&self, w: &'a [f32], at: &BlockAt) -> block::Weights<'a> {
        let (c, f, up) = (self.c, self.f, self.up);
        let (qw, width) = (self.heads.q_width(), self.heads.width());
        let p = |off: usize, len: usize| &w[off..off + len];
        block::Weights {
            qkv: Rhs::Nn(p(at.qkv_w, c * width)),
            qkv_b: at.qkv_b.map(|o| p(o, width)),
            proj: Rhs::Nn(p(at.proj_w, qw * c)),
            proj_b: at.proj_b.map(|o| p(o, c)),
            norm2: self.norm_at(w, at.ln2),
            mlp: block::MlpWeights {
                up: Rhs::Nn(p(at.fc_w, c * up)),
                up_b: at.fc_b.map(|o| p(o, up)),
                down: Rhs::Nn(p(at.fcp_w, f * c)),
                down_b: at.fcp_b.map(|o| p(o, c)),
            },
        }
    }
    /// The output head's weights `[vocab, c]`.
    fn head_at(&self) -> usize {
        self.head.unwrap_or(self.wte)
    }
}

/// Assigns the flat buffers' offsets, region by region, naming what is in them.
struct Alloc {
    off: usize,
    slots: Vec<Slot>,
    regions: Vec<(usize, usize, bool)>,
}

impl Alloc {
    /// A region holding one checkpoint tensor as it is.
    fn plain(&mut self, name: &str, shape: Vec<usize>) -> usize {
        let at = self.off;
        let len: usize = shape.iter().product();
        self.off += len;
        self.regions.push((at, self.off, shape.len() >= 2));
        self.slots.push(Slot {
            name: name.to_string(),
            shape,
            place: Place::Plain(at),
        });
        at
    }
    /// Vectors stored one after the other (the parts' biases of a fused matrix).
    fn vectors(&mut self, names: &[(String, usize)]) -> usize {
        let at = self.off;
        for (name, len) in names {
            self.slots.push(Slot {
                name: name.clone(),
                shape: vec![*len],
                place: Place::Plain(self.off),
            });
            self.off += len;
        }
        self.regions.push((at, self.off, false));
        at
    }
    /// An `[cols, width]` matrix (`cols` inputs) made of `parts`: in `[in, out]`
    /// checkpoints (`in_out`) there is one part, stored as it is; otherwise each part is
    /// an `[out, in]` tensor stored transposed as a block of columns.
    fn matrix(&mut self, parts: &Parts, cols: usize, in_out: bool) -> usize {
        let at = self.off;
        let width: usize = parts.iter().map(|p| p.1).sum();
        if in_out {
            assert_eq!(parts.len(), 1, "an [in, out] matrix has one part");
            return self.plain(&parts[0].0, vec![cols, width]);
        }
        let mut col0 = 0;
        for (name, rows) in parts {
            self.slots.push(Slot {
                name: name.clone(),
                shape: vec![*rows, cols],
                place: Place::Columns {
                    off: at,
                    width,
                    col0,
                },
            });
            col0 += rows;
        }
        self.off += cols * width;
        self.regions.push((at, self.off, true));
        at
    }
    fn bias(&mut self, parts: &Parts, has: bool) -> Option<usize> {
        has.then(|| {
            let names: Vec<(String, usize)> =
                parts.iter().map(|(n, r)| (bias_name(n), *r)).collect();
            self.vectors(&names)
        })
    }
    fn norm(&mut self, n: &NormNames, c: usize) -> usize {
        let mut names = vec![(n.w.clone(), c)];
        names.extend(n.b.iter().map(|b| (b.clone(), c)));
        self.vectors(&names)
    }
}

/// A decoder with its parameters, gradients and AdamW moments in flat buffers.
///
/// A batch of several sequences is cut into shards of whole sequences, one per thread:
/// each shard runs its forward and backward pass on its own activations and gradient
/// buffer, the rayon pool's work stealing moving pieces of the slower shard's products
/// to the thread that finished first, and the shards' gradients are summed before the
/// update. On two cores this beats splitting every operation of one pass between the
/// threads: each thread keeps its own rows in its own cache and the threads meet once
/// per pass instead of at some hundred joins, each of which can find the other asleep.
pub struct NativeDecoder {
    lay: Layout,
    slots: Vec<Slot>,
    params: Vec<f32>,
    /// Gradients and moments in huge-page buffers (see `train::flat`).
    grads: HugeVec<f32>,
    m: HugeVec<f32>,
    v: HugeVec<f32>,
    /// AdamW updates applied so far (for the bias corrections).
    t: usize,
    /// Activations of each shard of the batch.
    acts: Vec<Acts>,
    /// Gradients of shards 1.. (shard 0 adds into `grads`); zero between passes.
    shard_grads: Vec<Vec<f32>>,
    /// Shards wanted ([`Self::set_shards`]); by default one per thread.
    shards: Option<usize>,
    /// Whether every gradient is zero (AdamW clears them as it reads them, so that
    /// [`Self::zero_grads`] has nothing left to do).
    grads_zero: bool,
    /// Σ g² of the gradients as they are, where the shards' sum computed it.
    norm_sq: Option<f64>,
    /// Training on a GPU ([`Self::to_gpu`]): the parameters, gradients and moments live
    /// there, and the host's copies are brought up to date by [`Self::sync_to_host`].
    gpu: Option<Box<gpu::OnGpu>>,
}

impl NativeDecoder {
    /// Whether this path computes the model `spec` describes: an MLP of the tanh GELU
    /// (with biases, as GPT-2's) or SwiGLU.
    pub fn supports(spec: &DecoderSpec) -> bool {
        match spec.mlp {
            Mlp::GeluTanh => spec.mlp_bias,
            Mlp::SwiGlu => true,
            Mlp::Relu | Mlp::GeluErf | Mlp::Silu | Mlp::Gated(_) => false,
        }
    }

    /// A decoder of `spec` from its checkpoint tensors (every one it needs; extra
    /// ones are refused).
    pub fn from_plain(spec: &DecoderSpec, pdrop: (f32, f32, f32), mut t: Plain) -> Result<Self> {
        let n = Self::from_source(spec, pdrop, |s| {
            let (v, shape) = t.remove(&s.name).ok_or_else(|| {
                Error::invalid("weights", format!("tensor {} is missing", s.name))
            })?;
            if shape != s.shape {
                return Err(Error::invalid(
                    "weights",
                    format!(
                        "tensor {} has shape {shape:?}, expected {:?}",
                        s.name, s.shape
                    ),
                ));
            }
            Ok(v)
        })?;
        crate::engine::io::unexpected(&t, std::path::Path::new("(weights)"))?;
        Ok(n)
    }

    /// A decoder of `spec` with fresh weights from `seed`: normal with std `std` for
    /// matrices and embeddings (GPT-2's residual projections, `c_proj`, scaled by
    /// 1/√(2·layers) as GPT-2 and nanoGPT do), zero biases, unit norms.
    pub fn init(spec: &DecoderSpec, pdrop: (f32, f32, f32), seed: u64, std: f64) -> Result<Self> {
        let mut rng = crate::rng::Rng::new(seed);
        let proj_std = std / (2.0 * spec.n_layer as f64).sqrt();
        Self::from_source(spec, pdrop, |s| {
            let mut v = crate::guard::try_filled(&s.name, s.len(), 0f32)?;
            if s.shape.len() >= 2 {
                let sd = if s.name.ends_with("c_proj.weight") {
                    proj_std
                } else {
                    std
                };
                v.iter_mut().for_each(|x| *x = (rng.normal() * sd) as f32);
            } else if !s.name.ends_with(".bias") {
                v.iter_mut().for_each(|x| *x = 1.0);
            }
            Ok(v)
        })
    }

    /// Lay out the buffers for `spec`, each tensor's values from `source`.
    fn from_source(
        spec: &DecoderSpec,
        pdrop: (f32, f32, f32),
        mut source: impl FnMut(&Slot) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        if !Self::supports(spec) {
            return Err(Error::Model(format!(
                "the native trainer covers decoders with a tanh-GELU MLP with biases or a SwiGLU MLP, not {:?}",
                spec.mlp
            )));
        }
        let names = schema(spec);
        let (c, f) = (spec.d_model, spec.inner);
        let heads = Heads {
            n: spec.n_head,
            kv: spec.n_kv_head,
            dim: spec.head_dim,
        };
        let mut al = Alloc {
            off: 0,
            slots: Vec::new(),
            regions: Vec::new(),
        };
        let wte = al.plain(&names.embed, vec![spec.vocab_size, c]);
        let wpe = names
            .positions
            .as_ref()
            .map(|p| al.plain(p, vec![spec.context, c]));
        let mut blocks = Vec::new();
        for ln in &names.layers {
            let ln1 = al.norm(&ln.norm1, c);
            let qkv_w = al.matrix(&ln.qkv, c, names.in_out);
            let qkv_b = al.bias(&ln.qkv, spec.qkv_bias);
            let proj_w = al.matrix(&ln.proj, heads.q_width(), names.in_out);
            let proj_b = al.bias(&ln.proj, spec.proj_bias);
            let ln2 = al.norm(&ln.norm2, c);
            let fc_w = al.matrix(&ln.up, c, names.in_out);
            let fc_b = al.bias(&ln.up, spec.mlp_bias);
            let fcp_w = al.matrix(&ln.down, f, names.in_out);
            let fcp_b = al.bias(&ln.down, spec.mlp_bias);
            blocks.push(BlockAt {
                ln1,
                qkv_w,
                qkv_b,
                proj_w,
                proj_b,
                ln2,
                fc_w,
                fc_b,
                fcp_w,
                fcp_b,
            });
        }
        let lnf = al.norm(&names.norm_f, c);
        let head = names
            .head
            .as_ref()
            .map(|h| al.plain(h, vec![spec.vocab_size, c]));
        let total = al.off;
        let mut flat = crate::guard::try_filled("the model's parameters", total, 0f32)?;
        for s in &al.slots {
            s.write(&mut flat, &source(s)?);
        }
        let rope = match spec.positions {
            Positions::Rope(rope) => Some(RopeTable::new(
                spec.head_dim,
                rope.table_rows(spec.context),
                &rope,
                "--block-size (the rotary tables)",
            )?),
            Positions::Learned => None,
        };
        Ok(NativeDecoder {
            lay: Layout {
                vocab: spec.vocab_size,
                n_pos: spec.context,
                c,
                heads,
                f,
                up: spec.up_rows(),
                mlp: spec.mlp,
                norm_bias: spec.norm == NormKind::Layer,
                eps: spec.eps,
                pdrop,
                wte,
                wpe,
                rope,
                rope_spec: match spec.positions {
                    Positions::Rope(r) => Some(r),
                    Positions::Learned => None,
                },
                windows: spec.windows.clone(),
                blocks,
                lnf,
                head,
                regions: al.regions,
            },
            slots: al.slots,
            params: flat,
            grads: HugeVec::zeroed_rounded(total),
            m: HugeVec::zeroed_rounded(total),
            v: HugeVec::zeroed_rounded(total),
            t: 0,
            acts: Vec::new(),
            shard_grads: Vec::new(),
            shards: None,
            grads_zero: true,
            norm_sq: None,
            gpu: None,
        })
    }

    /// Moves training to `gpu`: the parameters, gradients and moments are uploaded, and
    /// every pass, gradient norm and update from now on runs there.
    pub fn to_gpu(&mut self, gpu: crate::kernels::cuda::Gpu) -> Result<()> {
        if self.gpu.is_some() {
            return Err(Error::Device("the model is already on a GPU".into()));
        }
        let on = gpu::OnGpu::new(
            gpu,
            &self.lay,
            [&self.params, &self.grads, &self.m, &self.v],
        )?;
        self.gpu = Some(Box::new(on));
        Ok(())
    }

    /// The GPU training runs on, by name (`None` on the CPU).
    pub fn gpu_name(&self) -> Option<String> {
        self.gpu.as_ref().map(|g| g.gpu.info().name.clone())
    }

    /// Brings the host's parameters, gradients and moments up to date with the GPU's
    /// (nothing to do on the CPU): before [`Self::tensors`], [`Self::gradients`] or the
    /// moments are read.
    pub fn sync_to_host(&mut self) -> Result<()> {
        if let Some(g) = &self.gpu {
            self.params = g.gpu.download(&g.params)?;
            self.grads = g.gpu.download(&g.grads)?.into();
            (self.grads_zero, self.norm_sq) = (false, None);
            self.m = g.gpu.download(&g.m)?.into();
            self.v = g.gpu.download(&g.v)?.into();
        }
        Ok(())
    }

    /// The parameters under their checkpoint (HF) names, for saving (on a GPU, as of
    /// the last [`Self::sync_to_host`]).
    pub fn tensors(&self) -> Plain {
        self.read_all(&self.params)
    }

    /// The gradients of the last [`Self::forward_backward`] calls by parameter name.
    pub fn gradients(&self) -> Plain {
        self.read_all(&self.grads)
    }

    fn read_all(&self, buf: &[f32]) -> Plain {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), (s.read(buf), s.shape.clone())))
            .collect()
    }

    /// The number of trained values.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }

    /// Element `i` of parameter `name` (row-major in its checkpoint shape), for
    /// changing it in place.
    /// (`None` while training on a GPU: the host copy would be overwritten.)
    pub fn param_mut(&mut self, name: &str, i: usize) -> Option<&mut f32> {
        if self.gpu.is_some() {
            return None;
        }
        let s = self.slots.iter().find(|s| s.name == name)?;
        if i >= s.len() {
            return None;
        }
        let at = s.index(i);
        Some(&mut self.params[at])
    }

    /// Whether training draws dropout masks.
    pub fn has_dropout(&self) -> bool {
        let (a, b, c) = self.lay.pdrop;
        a > 0.0 || b > 0.0 || c > 0.0
    }

    fn check_ids(&self, ids: &[u32], what: &str, b: usize, t: usize) -> Result<()> {
        if ids.len() != b * t || b == 0 || t == 0 {
            return Err(Error::invalid(
                what,
                format!("{} ids for a batch of {b} × {t}", ids.len()),
            ));
        }
        if t > self.lay.n_pos {
            return Err(Error::invalid(
                what,
                format!("{t} positions, the model has {}", self.lay.n_pos),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.lay.vocab) {
            return Err(Error::invalid(
                what,
                format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.lay.vocab
                ),
            ));
        }
        Ok(())
    }

    /// Mean next-token loss of `ids [b, t]` against `targets [b, t]`.
    pub fn loss(&mut self, ids: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f64> {
        self.pass(ids, targets, b, t, None)
    }

    /// [`Self::loss`] in training mode: with the dropout that
    /// [`Self::forward_backward`] would draw from `seed`.
    pub fn loss_in_training(
        &mut self,
        ids: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        seed: u64,
    ) -> Result<f64> {
        self.pass(ids, targets, b, t, Some((seed, None)))
    }

    /// Set every gradient to zero (before the micro-batches of a step).
    pub fn zero_grads(&mut self) {
        use rayon::prelude::*;
        if let Some(gpu) = &self.gpu {
            return gpu.zero_grads();
        }
        self.norm_sq = None;
        if std::mem::replace(&mut self.grads_zero, true) {
            return;
        }
        let g = &mut self.grads;
        k::in_pool(|| {
            g.par_chunks_mut(1 << 16)
                .for_each(|c| c.iter_mut().for_each(|v| *v = 0.0))
        });
    }

    /// Cut batches into `n` shards (at most one per sequence); by default, one per
    /// thread of the rayon pool. Results depend on it only through the order of sums.
    pub fn set_shards(&mut self, n: usize) {
        self.shards = Some(n.max(1));
    }

    /// Shards for a batch of `b` sequences: as asked or one per thread, at most `b`, and
    /// no more than keep the extra gradient buffers under 1 GiB.
    fn shard_count(&self, b: usize) -> usize {
        let want = self.shards.unwrap_or_else(rayon::current_num_threads);
        let cap = 1 + (1usize << 30) / (4 * self.params.len()).max(1);
        want.min(b).min(cap).max(1)
    }

    /// Forward and backward pass for `ids [b, t]` against `targets`, in training mode
    /// (dropout masks drawn from `seed`): adds `scale ·` the gradient of the mean loss to
    /// the gradients; returns the mean loss.
    pub fn forward_backward(
        &mut self,
        ids: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        scale: f32,
        seed: u64,
    ) -> Result<f64> {
        self.pass(ids, targets, b, t, Some((seed, Some(scale))))
    }

    /// The mean loss of `ids` against `targets`, shard by shard. `train` is `None` in
    /// evaluation, else the dropout seed and, to run the backward pass too, the
    /// gradient's scale.
    fn pass(
        &mut self,
        ids: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        train: Option<(u64, Option<f32>)>,
    ) -> Result<f64> {
        use rayon::prelude::*;
        self.check_ids(ids, "input ids", b, t)?;
        self.check_ids(targets, "targets", b, t)?;
        if let Some(gpu) = &mut self.gpu {
            let drops = Drops::new(self.lay.pdrop, train.map(|(seed, _)| seed));
            return gpu.pass(
                &self.lay,
                ids,
                targets,
                b,
                t,
                drops,
                train.and_then(|(_, s)| s),
            );
        }
        let n = self.shard_count(b);
        self.acts.resize_with(n, Acts::default);
        let backward_too = matches!(train, Some((_, Some(_))));
        if backward_too {
            (self.grads_zero, self.norm_sq) = (false, None);
            let len = self.params.len();
            self.shard_grads.truncate(n - 1);
            while self.shard_grads.len() < n - 1 {
                self.shard_grads.push(vec![0f32; len]);
            }
        }
        let (lay, w, m) = (&self.lay, &self.params, b * t);
        let drops = Drops::new(lay.pdrop, train.map(|(seed, _)| seed));
        // The rotary table of windows t long: the model's, or one of their own.
        let stretched = lay.stretched_rope(t);
        let rope = stretched.as_ref().or(lay.rope.as_ref());
        let mut grads: Vec<&mut [f32]> = Vec::with_capacity(n);
        if backward_too {
            grads.push(&mut self.grads);
            grads.extend(self.shard_grads.iter_mut().map(|g| g.as_mut_slice()));
        }
        let acts = &mut self.acts;
        // One pool region for the shards and their sum: the pool's threads go on from
        // one to the other instead of sleeping and waking between them.
        let (sums, squares) = k::in_pool(|| {
            let run = |s: usize, a: &mut Acts, g: Option<&mut &mut [f32]>| {
                // Whole sequences b0..b1; the dropout masks are those of the same rows
                // in the whole batch.
                let (b0, b1) = (s * b / n, (s + 1) * b / n);
                let rows = b0 * t..b1 * t;
                let d = drops.at_sequence(b0, t, lay.c, lay.heads.n);
                forward(lay, w, a, &ids[rows.clone()], b1 - b0, t, d, rope);
                let scale = train.and_then(|(_, s)| s).map(|s| s / m as f32);
                let sum =
                    k::cross_entropy(&mut a.keep.logits, lay.vocab, &targets[rows.clone()], scale);
                if let Some(g) = g {
                    backward(lay, w, g, a, &ids[rows], b1 - b0, t, rope);
                }
                sum
            };
            if !backward_too {
                let sums: Vec<f64> = acts
                    .par_iter_mut()
                    .enumerate()
                    .map(|(s, a)| run(s, a, None))
                    .collect();
                return (sums, None);
            }
            let sums: Vec<f64> = acts
                .par_iter_mut()
                .zip(grads.par_iter_mut())
                .enumerate()
                .map(|(s, (a, g))| run(s, a, Some(g)))
                .collect();
            if n == 1 {
                return (sums, None);
            }
            // Sum the shards' gradients into shard 0's (the trainer's), leaving theirs
            // zero for the next pass, and Σ g² of the sums while they are in cache (for
            // the clipping's norm, which would otherwise read them all again).
            let (first, rest) = grads.split_first_mut().expect("one shard at least");
            const CH: usize = 1 << 14;
            let squares: Vec<f64> = time("shard sum", || {
                let mut rest: Vec<_> = rest.iter_mut().map(|g| g.chunks_mut(CH)).collect();
                let mut jobs: Vec<(&mut [f32], Vec<&mut [f32]>)> = Vec::new();
                for c in first.chunks_mut(CH) {
                    jobs.push((c, rest.iter_mut().map(|r| r.next().unwrap()).collect()));
                }
                jobs.into_par_iter()
                    .map(|(acc, parts)| {
                        for p in parts {
                            k::add_and_clear(acc, p);
                        }
                        k::chunk_squares(acc)
                    })
                    .collect()
            });
            (sums, Some(squares))
        });
        if let Some(squares) = squares {
            // In chunk order: the same total on every run.
            self.norm_sq = Some(squares.iter().sum());
        }
        Ok(sums.iter().sum::<f64>() / m as f64)
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f64 {
        if let Some(gpu) = &self.gpu {
            return gpu.grad_norm();
        }
        self.norm_sq
            .unwrap_or_else(|| k::sum_squares(&self.grads))
            .sqrt()
    }

    /// One AdamW update with learning rate `lr`, the gradients first multiplied by
    /// `grad_scale` (clipping).
    pub fn adamw_step(&mut self, config: &AdamWConfig, lr: f64, grad_scale: f64) {
        self.t += 1;
        let step = config.kernel_step(self.t, lr, grad_scale);
        if let Some(gpu) = &self.gpu {
            return gpu.adamw(&self.lay, step);
        }
        let segments = &self.lay.regions;
        let (params, grads, m, v) = (&mut self.params, &mut self.grads, &mut self.m, &mut self.v);
        k::in_pool(|| {
            time("adamw", || {
                k::adamw(params, grads, m, v, segments, step, true)
            })
        });
        // AdamW cleared what its (disjoint) regions cover: every gradient when they
        // cover every parameter, as the layout's do.
        let covered: usize = segments.iter().map(|&(a, b, _)| b - a).sum();
        (self.grads_zero, self.norm_sq) = (covered == self.grads.len(), None);
    }
}

/// The forward pass for `ids [b, t]` (checked), up to the logits, with the dropout
/// `drops` (none in evaluation), into `a`.
#[allow(clippy::too_many_arguments)]
fn forward(
    lay: &Layout,
    w: &[f32],
    a: &mut Acts,
    ids: &[u32],
    b: usize,
    t: usize,
    drops: Drops,
    rope: Option<&RopeTable>,
) {
    a.ensure(lay, b, t);
    a.drops = drops;
    let pass = CpuPass {
        lay,
        w,
        ids,
        b,
        t,
        rope,
    };
    let ex = &mut block::Cpu(&mut a.panels);
    let Ok(()) = forward::forward(ex, &pass, lay, &mut a.keep, b * t, drops);
}

impl forward::PerLayer<[f32]> for Layers {
    fn at(&self, l: usize) -> &[f32] {
        &self[l]
    }
    fn at_mut(&mut self, l: usize) -> &mut [f32] {
        &mut self[l]
    }
    fn pair_mut(&mut self, l: usize) -> (&[f32], &mut [f32]) {
        Layers::pair_mut(self, l)
    }
}

/// What the CPU's forward pass reads besides the block's operations: the batch `ids
/// [b, t]`, the parameters `w`, the rotary table.
struct CpuPass<'a> {
    lay: &'a Layout,
    w: &'a [f32],
    ids: &'a [u32],
    b: usize,
    t: usize,
    rope: Option<&'a RopeTable>,
}

impl forward::Pass for CpuPass<'_> {
    type K = block::Host;
    type Err = Infallible;

    fn embed(&self, x: &mut [f32]) -> std::result::Result<(), Infallible> {
        let (lay, w, c, t) = (self.lay, self.w, self.lay.c, self.t);
        for (r, &id) in self.ids.iter().enumerate() {
            let e = &w[lay.wte + id as usize * c..][..c];
            let row = &mut x[r * c..(r + 1) * c];
            match lay.wpe {
                Some(wpe) => {
                    let p = &w[wpe + (r % t) * c..][..c];
                    for ((o, x), y) in row.iter_mut().zip(e).zip(p) {
                        *o = x + y;
                    }
                }
                None => row.copy_from_slice(e),
            }
        }
        Ok(())
    }

    fn norm(
        &self,
        x: &[f32],
        at: usize,
        out: &mut [f32],
        stats: &mut [f32],
    ) -> std::result::Result<(), Infallible> {
        let (lay, m) = (self.lay, self.b * self.t);
        let nw = lay.norm_at(self.w, at);
        k::layer_norm(x, nw.w, nw.b, lay.eps, m, out, stats);
        Ok(())
    }

    fn attend(
        &self,
        l: usize,
        qkv: &mut [f32],
        probs: &mut [f32],
        atty: &mut [f32],
        dropout: Option<k::Dropout>,
    ) -> std::result::Result<(), Infallible> {
        let (b, t, heads) = (self.b, self.t, self.lay.heads);
        if let Some(table) = self.rope {
            k::rope(qkv, b * t, t, heads, table, false);
        }
        let window = self.lay.windows[l];
        k::attention(qkv, b, t, heads, window, probs, atty, dropout);
        Ok(())
    }

    fn weights(&self, l: usize) -> block::Weights<'_> {
        self.lay.block_weights(self.w, &self.lay.blocks[l])
    }

    fn norm_w(&self, at: usize) -> NormW<'_> {
        self.lay.norm_at(self.w, at)
    }

    fn head(&self) -> Rhs<'_> {
        let (lay, at) = (self.lay, self.lay.head_at());
        Rhs::Nt(&self.w[at..at + lay.vocab * lay.c])
    }
}

/// The gradients of a norm's weight and (LayerNorm) bias, at `at` in `g`.
fn norm_grads<'g>(
    lay: &Layout,
    g: &'g mut [f32],
    at: usize,
) -> (&'g mut [f32], Option<&'g mut [f32]>) {
    let c = lay.c;
    if lay.norm_bias {
        let (gw, gb) = g[at..at + 2 * c].split_at_mut(c);
        (gw, Some(gb))
    } else {
        (&mut g[at..at + c], None)
    }
}

/// The backward pass of the last forward pass into `a` (whose logits now hold the loss
/// gradient), over `ids [b, t]`: adds the gradients to `g`.
#[allow(clippy::too_many_arguments)]
fn backward(
    lay: &Layout,
    w: &[f32],
    g: &mut [f32],
    a: &mut Acts,
    ids: &[u32],
    b: usize,
    t: usize,
    rope: Option<&RopeTable>,
) {
    let mut ops = Cpu {
        lay,
        w,
        g,
        ids,
        b,
        t,
        rope,
        panels: &mut a.panels,
        xpack: &mut a.xpack,
    };
    let Ok(()) = backward::backward(&mut ops, lay, &mut a.keep, b * t, a.drops);
}

/// The CPU's operations of the backward pass: the slice kernels, for one shard's batch
/// `ids [b, t]`, over the parameters `w`, adding to the gradients `g`.
struct Cpu<'a> {
    lay: &'a Layout,
    w: &'a [f32],
    g: &'a mut [f32],
    ids: &'a [u32],
    b: usize,
    t: usize,
    rope: Option<&'a RopeTable>,
    /// Packed right-hand sides of the products.
    panels: &'a mut Vec<f32>,
    /// Packed left-hand sides of the weight-gradient products.
    xpack: &'a mut Vec<f32>,
}

/// The `len` floats of matrix `at` in the parameters `w`, as a product's right-hand side.
fn rhs(w: &[f32], at: backward::Weight, len: usize) -> Rhs<'_> {
    match at {
        backward::Weight::Nn(at) => Rhs::Nn(&w[at..at + len]),
        backward::Weight::Nt(at) => Rhs::Nt(&w[at..at + len]),
    }
}

impl backward::Ops for Cpu<'_> {
    type B = [f32];
    type Err = Infallible;

    fn matmul(
        &mut self,
        a: &[f32],
        (m, k, n): (usize, usize, usize),
        w: backward::Weight,
        out: &mut [f32],
    ) -> std::result::Result<(), Infallible> {
        let (w, panels) = (rhs(self.w, w, k * n), &mut *self.panels);
        time("gemm", || k::gemm(a, m, k, n, w, out, panels));
        Ok(())
    }

    fn matmul_times(
        &mut self,
        a: &[f32],
        (m, k, n): (usize, usize, usize),
        w: backward::Weight,
        by: &[f32],
        out: &mut [f32],
    ) -> std::result::Result<(), Infallible> {
        let (w, panels) = (rhs(self.w, w, k * n), &mut *self.panels);
        time("gemm dgelu", || {
            k::gemm_gelu_grad(a, m, k, n, w, by, out, panels)
        });
        Ok(())
    }

    fn weight_grad(
        &mut self,
        x: &[f32],
        dy: &[f32],
        (m, rows, cols): (usize, usize, usize),
        (w, bias): (usize, Option<usize>),
    ) -> std::result::Result<(), Infallible> {
        // The kernel finds the bias's gradient right after the matrix's.
        debug_assert!(bias.is_none_or(|b| b == w + rows * cols));
        let scratch = (&mut *self.panels, &mut *self.xpack);
        let g = &mut self.g[w..];
        time("gemm_tn_acc", || {
            k::gemm_tn_acc(x, m, rows, dy, cols, g, scratch, bias.is_some())
        });
        Ok(())
    }

    fn swiglu_backward(
        &mut self,
        d: &[f32],
        gu: &[f32],
        (m, f): (usize, usize),
        dgu: &mut [f32],
    ) -> std::result::Result<(), Infallible> {
        time("swiglu_backward", || k::swiglu_backward(d, gu, m, f, dgu));
        Ok(())
    }

    fn norm_backward(
        &mut self,
        dy: &[f32],
        x: &[f32],
        stats: &[f32],
        at: usize,
        dx: &mut [f32],
    ) -> std::result::Result<(), Infallible> {
        let (c, m) = (self.lay.c, self.b * self.t);
        let nw = &self.w[at..at + c];
        let (gw, gb) = norm_grads(self.lay, self.g, at);
        time("layer_norm_backward", || {
            k::layer_norm_backward(dy, x, stats, nw, m, dx, gw, gb)
        });
        Ok(())
    }

    fn attention_backward(
        &mut self,
        dy: &[f32],
        qkv: &[f32],
        probs: &[f32],
        window: Option<usize>,
        dropout: Option<k::Dropout>,
        dqkv: &mut [f32],
    ) -> std::result::Result<(), Infallible> {
        let (b, t, heads) = (self.b, self.t, self.lay.heads);
        time("attention_backward", || {
            k::attention_backward(dy, qkv, probs, b, t, heads, window, dqkv, dropout)
        });
        Ok(())
    }

    fn rope_backward(&mut self, dqkv: &mut [f32]) -> std::result::Result<(), Infallible> {
        if let Some(table) = self.rope {
            let (m, t, heads) = (self.b * self.t, self.t, self.lay.heads);
            time("rope", || k::rope(dqkv, m, t, heads, table, true));
        }
        Ok(())
    }

    fn dropout_into(
        &mut self,
        x: &[f32],
        d: k::Dropout,
        n: usize,
        out: &mut [f32],
    ) -> std::result::Result<(), Infallible> {
        k::dropout_into(&x[..n], d, &mut out[..n]);
        Ok(())
    }

    fn dropout_in_place(
        &mut self,
        x: &mut [f32],
        d: k::Dropout,
        n: usize,
    ) -> std::result::Result<(), Infallible> {
        k::dropout::drop_row(&mut x[..n], d, 0);
        Ok(())
    }

    fn clear(&mut self, x: &mut [f32], n: usize) -> std::result::Result<(), Infallible> {
        x[..n].fill(0.0);
        Ok(())
    }

    fn embed_backward(&mut self, d: &[f32]) -> std::result::Result<(), Infallible> {
        let (lay, c, t) = (self.lay, self.lay.c, self.t);
        for (r, &id) in self.ids.iter().enumerate() {
            let d = &d[r * c..(r + 1) * c];
            let e = lay.wte + id as usize * c;
            for (x, y) in self.g[e..e + c].iter_mut().zip(d) {
                *x += y;
            }
            if let Some(wpe) = lay.wpe {
                let q = wpe + (r % t) * c;
                for (x, y) in self.g[q..q + c].iter_mut().zip(d) {
                    *x += y;
                }
            }
        }
        Ok(())
    }
}

impl super::fit::Trainable for NativeDecoder {
    fn zero_grads(&mut self) {
        NativeDecoder::zero_grads(self)
    }
    fn grad_norm(&self) -> f64 {
        NativeDecoder::grad_norm(self)
    }
    fn adamw_step(&mut self, config: &AdamWConfig, lr: f64, grad_scale: f64) {
        NativeDecoder::adamw_step(self, config, lr, grad_scale)
    }
    /// `exp_avg.NAME` and `exp_avg_sq.NAME` (PyTorch's names).
    fn moments(&self) -> Plain {
        let mut out = self.read_all(&self.m);
        out = out
            .into_iter()
            .map(|(k, v)| (format!("exp_avg.{k}"), v))
            .collect();
        out.extend(
            self.read_all(&self.v)
                .into_iter()
                .map(|(k, v)| (format!("exp_avg_sq.{k}"), v)),
        );
        out
    }
    fn load_moments(&mut self, mut moments: Plain, t: usize) -> Result<()> {
        for s in &self.slots {
            for (prefix, buf) in [("exp_avg", &mut self.m), ("exp_avg_sq", &mut self.v)] {
                let key = format!("{prefix}.{}", s.name);
                let (values, shape) = moments
                    .remove(&key)
                    .ok_or_else(|| Error::Model(format!("optimizer state lacks {key}")))?;
                if shape != s.shape {
                    return Err(Error::Model(format!(
                        "optimizer state {key} has shape {shape:?}, the parameter {:?}",
                        s.shape
                    )));
                }
                s.write(buf, &values);
            }
        }
        self.t = t;
        if let Some(g) = &self.gpu {
            g.gpu.write(&g.m, &self.m)?;
            g.gpu.write(&g.v, &self.v)?;
        }
        Ok(())
    }
    fn trainable_count(&self) -> usize {
        self.params.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clipping norm the shards' sum computes is the gradients' (as a pass over them
    /// computes it), for one shard and several; AdamW leaves every gradient zero (its
    /// regions cover them all), so that the next step's `zero_grads` may skip its pass;
    /// and a step after that gives the gradients a model given a plain zeroing does.
    #[test]
    fn the_step_keeps_its_norm_and_clears_the_gradients() {
        use crate::models::{gpt2::Gpt2Config, llama::LlamaConfig};
        let llama: LlamaConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llama", "vocab_size": 23, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 16,
            "tie_word_embeddings": false, "rms_norm_eps": 1e-5,
        }))
        .unwrap();
        let specs = [
            DecoderSpec::from_gpt2(&Gpt2Config::new(29, 16, 64, 2, 2)).unwrap(),
            DecoderSpec::from_llama(&llama).unwrap(),
        ];
        let adamw = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let (b, t) = (4, 8);
        let x: Vec<u32> = (0..b * t).map(|i| (i * 7 % 23) as u32).collect();
        for spec in specs {
            for shards in [1, 2, 3] {
                let mut n = NativeDecoder::init(&spec, (0.0, 0.0, 0.0), 3, 0.02).unwrap();
                n.set_shards(shards);
                for step in 0..3 {
                    n.zero_grads();
                    n.forward_backward(&x, &x, b, t, 1.0, step).unwrap();
                    let norm = n.grad_norm();
                    let want = k::sum_squares(&n.grads).sqrt();
                    // (Sixteen f32 partial sums a chunk, over chunks of other lengths.)
                    assert!(
                        norm > 0.0 && (norm - want).abs() <= 1e-5 * want,
                        "{norm} {want}"
                    );
                    // A second model at the same parameters, its gradients zeroed by
                    // the plain pass, gives the same gradients.
                    let mut fresh = NativeDecoder::init(&spec, (0.0, 0.0, 0.0), 3, 0.02).unwrap();
                    fresh.params.copy_from_slice(&n.params);
                    fresh.set_shards(shards);
                    fresh.grads.fill(1.0);
                    fresh.grads_zero = false;
                    fresh.zero_grads();
                    fresh.forward_backward(&x, &x, b, t, 1.0, step).unwrap();
                    assert!(
                        fresh.grads[..] == n.grads[..],
                        "{shards} shards, step {step}"
                    );
                    n.adamw_step(&adamw, 1e-2, 1.0);
                    assert!(
                        n.grads.iter().all(|&g| g == 0.0),
                        "a gradient left after AdamW"
                    );
                    assert_eq!(n.grad_norm(), 0.0);
                }
            }
        }
    }

    /// Layer buffers above the huge-page threshold (their own mapping on Linux) and
    /// below it: zeroed, each layer its own disjoint range, and writable to the end.
    #[test]
    fn layer_buffers_are_zeroed_and_disjoint() {
        for each in [1000usize, 300_000] {
            let mut l = Layers::new(each, 3);
            for i in 0..3 {
                assert!(l[i].len() == each && l[i].iter().all(|&v| v == 0.0));
                l[i].fill(i as f32 + 1.0);
            }
            for i in 0..3 {
                assert!(l[i].iter().all(|&v| v == i as f32 + 1.0), "layer {i}");
            }
        }
    }
}

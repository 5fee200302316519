//! BERT's training step on the engine's kernels: the sequence classifier
//! (`BertForSequenceClassification`) forward over a ragged batch, its loss, the backward
//! pass written by hand, and AdamW, with parameters, gradients and moments in flat
//! buffers under Hugging Face's names.
//!
//! Matrices keep transformers' `[out, in]` layout (products take them transposed), and
//! a layer's query, key and value weights (and biases) sit next to each other, so the
//! three projections are one product. Each sequence attends over its own tokens only
//! (no padding is computed), as the padding mask makes transformers do.
//!
//! Dropout (hidden states and attention weights, as transformers places it) uses
//! counter-based masks, so the backward draws the hidden states' masks again; the
//! forward keeps the attention weights after dropout beside those before it. Checked
//! against transformers' gradients for every parameter, and with dropout against finite
//! differences (`tests/engine_parity.rs`). LoRA adapters on the query and value
//! projections freeze everything else: frozen tensors get no weight gradients computed
//! and no AdamW moments. `classify train` runs this step.
//!
//! Why one file of this length: the layout of the flat buffers, the forward that keeps
//! what the backward reads, the hand-written backward and the adapters' freezing are one
//! contract over the same offsets; split, each part would restate the others' layout.

use std::collections::HashMap;
use std::path::Path;

use super::flat::Flat;
use crate::engine::encoder::read_bert;
use crate::engine::io::Plain;
use crate::engine::sublayers::{
    attn_backward, attn_forward, drop_in_place, first_queries_only, head_jobs, linear,
    linear_backward, mlp_backward, mlp_forward, norm_grads, spans_of, weight_backward, wgrads, Act,
    AttnActs, Dims, MlpActs, MlpAt, PostAt, Scratch,
};
use crate::kernels::cpu as k;
use crate::kernels::cpu::{Dropout, Rhs};
use crate::models::bert::{BertConfig, EncoderFamily, LoraConfig, LORA_TARGETS};
use crate::{Error, Result};

/// Where one layer's tensors start in the flat buffers.
struct LayerAt {
    /// `[3c, c]`: query, key and value weights stacked; biases `[3c]` likewise.
    qkv_w: usize,
    qkv_b: usize,
    /// The attention's output projection and norm.
    post: PostAt,
    mlp: MlpAt,
}

struct Layout {
    word: usize,
    pos: usize,
    /// Token types (none in DistilBERT).
    typ: Option<usize>,
    emb_w: usize,
    emb_b: usize,
    layers: Vec<LayerAt>,
    pool_w: usize,
    pool_b: usize,
    cls_w: usize,
    cls_b: usize,
}

/// A BERT sequence classifier's parameters, gradients and AdamW moments.
pub struct NativeEncoder {
    pub config: BertConfig,
    lay: Layout,
    /// Parameters, gradients and moments under canonical names.
    flat: Flat,
    scratch: Scratch,
    /// Low-rank adapters on every layer's query and value projections: the rest of the
    /// encoder is frozen, and only the adapters and the classification head (the
    /// buffers' tail from `trainable_from`) get gradients and AdamW moments.
    lora: Option<(LoraConfig, Vec<AdapterAt>)>,
    act: Act,
}

/// Where a layer's adapters start: `A [r, c]` and `B [c, r]` for the query and value.
struct AdapterAt {
    qa: usize,
    qb: usize,
    va: usize,
    vb: usize,
}

/// The dropout of one step (none when evaluating): where the hidden states are
/// dropped (embeddings' output, each sublayer's output before its residual sum, the
/// pooled vector before the head) and the attention weights.
#[derive(Clone, Copy, Default)]
struct Drops {
    hidden: Option<Dropout>,
    attn: Option<Dropout>,
    /// The classification head's (its own rate: `classifier_dropout`, DistilBERT's
    /// `seq_classif_dropout`).
    head: Option<Dropout>,
    /// Whether the attention's output is dropped before its residual sum (not in
    /// DistilBERT).
    after_attention: bool,
}

impl Drops {
    fn emb(&self) -> Option<Dropout> {
        self.hidden.map(|d| d.site(0))
    }
    fn proj(&self, l: usize) -> Option<Dropout> {
        self.hidden
            .filter(|_| self.after_attention)
            .map(|d| d.site(1 + 2 * l as u64))
    }
    fn down(&self, l: usize) -> Option<Dropout> {
        self.hidden.map(|d| d.site(2 + 2 * l as u64))
    }
    fn pooled(&self) -> Option<Dropout> {
        self.head.map(|d| d.site(u64::MAX))
    }
    /// RoBERTa's: the first token's vector before the head.
    fn head_in(&self) -> Option<Dropout> {
        self.head.map(|d| d.site(u64::MAX - 1))
    }
    /// Head `h` of sequence `s` in layer `l`: element `i·len + j` is weight (i, j).
    fn attn_head(&self, l: usize, s: usize, h: usize) -> Option<Dropout> {
        self.attn
            .map(|d| d.site(((l as u64) << 48) ^ ((s as u64) << 16) ^ h as u64))
    }
}

/// The activations of one forward pass that the backward pass reads.
struct Saved {
    n: usize,
    /// First row and length of each sequence.
    spans: Vec<(usize, usize)>,
    /// The embeddings' sum before their norm, and its statistics.
    emb: Vec<f32>,
    emb_st: Vec<f32>,
    /// Each layer's input (`x[0]` the embeddings' output) and the last layer's output.
    x: Vec<Vec<f32>>,
    layers: Vec<LayerActs>,
    /// The pooler's output, and after the classifier's dropout.
    pooled: Vec<f32>,
    pooled_d: Vec<f32>,
    logits: Vec<f32>,
}

struct LayerActs {
    qkv: Vec<f32>,
    /// With adapters: `x·Aᵀ` `[n, r]` for the query's and the value's.
    adapted: Vec<Vec<f32>>,
    attn: AttnActs,
    /// The attention sublayer's output (the MLP's input).
    h1: Vec<f32>,
    mlp: MlpActs,
}

/// Each sequence's first row of `x` (`[n, c]`), as `[spans, c]`.
fn first_rows(x: &[f32], spans: &[(usize, usize)], c: usize) -> Vec<f32> {
    spans
        .iter()
        .flat_map(|&(r0, _)| x[r0 * c..(r0 + 1) * c].iter().copied())
        .collect()
}

/// Which tensors a load may draw when the folder lacks them.
#[derive(Clone, Copy)]
enum Fill {
    /// Every one (a new model).
    All(u64),
    /// The pooler and the classifier only (a pretrained encoder given a new head): a
    /// folder missing an encoder layer is refused, not completed with random weights.
    Head(u64),
}

impl NativeEncoder {
    /// Load a `BertForSequenceClassification` folder (or a bare BERT with pooler and
    /// classifier tensors under either naming).
    pub fn load(dir: &Path) -> Result<Self> {
        let (config, tensors) = read_bert(dir, |_| true)?;
        Self::from_plain(config, tensors, None, None)
            .map_err(|e| Error::bad_file(dir.join(crate::checkpoint::WEIGHTS), e.to_string()))
    }

    /// Load a pretrained encoder folder and put a new classification head of `labels`
    /// classes on it (weights drawn from N(0, 0.02²) with `seed`, biases zero, as
    /// transformers initialises one), unless the folder is a classifier of the same
    /// labels in the same order, whose head is kept; a missing pooler is drawn the same
    /// way.
    ///
    /// With `lora`, adapters go on every query and value projection and everything but
    /// them and the head is frozen.
    pub fn load_with_head(
        dir: &Path,
        labels: &[String],
        seed: u64,
        lora: Option<LoraConfig>,
    ) -> Result<Self> {
        let (config, mut tensors) = read_bert(dir, |_| true)?;
        // A classifier of these very labels keeps its head (as transformers loads a
        // `…ForSequenceClassification` folder); any other gets a new one.
        if !(config.is_classifier() && config.label_names() == labels) {
            tensors.retain(|k, _| !k.starts_with("classifier."));
        }
        let lora = lora.map(|l| (l, seed ^ 0x10a));
        Self::from_plain(
            config.with_labels(labels),
            tensors,
            lora,
            Some(Fill::Head(seed)),
        )
        .map_err(|e| Error::bad_file(dir.join(crate::checkpoint::WEIGHTS), e.to_string()))
    }

    /// A classifier of `config`'s shape with weights drawn as transformers initialises
    /// BERT: N(0, 0.02²) for matrices and embeddings (the padding row zero), zero
    /// biases, unit norms.
    pub fn init(config: BertConfig, seed: u64) -> Result<Self> {
        let mut enc = Self::from_plain(config, Plain::new(), None, Some(Fill::All(seed)))?;
        if let Some(pad) = enc.config.pad_token_id {
            let (c, at) = (enc.config.hidden_size, enc.lay.word);
            let row = at + pad as usize * c;
            enc.flat.params[row..row + c]
                .iter_mut()
                .for_each(|v| *v = 0.0);
        }
        Ok(enc)
    }

    /// Load a classifier folder to train on: with `lora`, its adapters (beside the
    /// weights, as a checkpoint keeps them) are trained and the rest is frozen.
    pub fn load_adapted(dir: &Path, lora: Option<LoraConfig>) -> Result<Self> {
        let (config, mut tensors) = read_bert(dir, |_| true)?;
        if lora.is_some() {
            tensors.extend(crate::tasks::classify::read_adapters(dir, config.family)?);
        }
        Self::from_plain(config, tensors, lora.map(|l| (l, 0)), None)
            .map_err(|e| Error::bad_file(dir.join(crate::checkpoint::WEIGHTS), e.to_string()))
    }

    /// The number of values (trained or frozen).
    pub fn count(&self) -> usize {
        self.flat.params.len()
    }

    /// The LoRA adapters' config, when the encoder has them.
    pub fn lora(&self) -> Option<LoraConfig> {
        self.lora.as_ref().map(|(l, _)| *l)
    }

    /// Lay out the tensors `t` holds; with `fill`, those it lacks that `fill` may draw
    /// are drawn from its seed (norms one, biases zero, the rest N(0, 0.02²)).
    fn from_plain(
        config: BertConfig,
        mut t: Plain,
        lora: Option<(LoraConfig, u64)>,
        fill: Option<Fill>,
    ) -> Result<Self> {
        config.validate()?;
        let act = Act::of(&config.hidden_act)?;
        let c = config.hidden_size;
        let inner = config.intermediate_size;
        let labels = config.labels();
        let mut tensors: Vec<(String, usize, Vec<usize>)> = Vec::new();
        let mut params: Vec<f32> = Vec::new();
        let head_only = matches!(fill, Some(Fill::Head(_)));
        let mut fill = fill.map(|f| match f {
            Fill::All(seed) | Fill::Head(seed) => crate::rng::Rng::new(seed),
        });
        let mut put = |name: String, shape: Vec<usize>, t: &mut Plain| -> Result<usize> {
            let drawn =
                !head_only || name.starts_with("pooler.") || name.starts_with("classifier.");
            let (v, s) = match (t.remove(&name), fill.as_mut()) {
                (Some(found), _) => found,
                (None, Some(rng)) if drawn => (draw(&name, &shape, rng)?, shape.clone()),
                (None, _) => {
                    return Err(Error::invalid(
                        "weights",
                        format!("tensor {name} is missing"),
                    ))
                }
            };
            if s != shape {
                return Err(Error::invalid(
                    "weights",
                    format!("tensor {name} has shape {s:?}, expected {shape:?}"),
                ));
            }
            let at = params.len();
            params.extend_from_slice(&v);
            tensors.push((name, at, shape));
            Ok(at)
        };
        let word = put(
            "embeddings.word_embeddings.weight".into(),
            vec![config.vocab_size, c],
            &mut t,
        )?;
        let pos = put(
            "embeddings.position_embeddings.weight".into(),
            vec![config.max_position_embeddings, c],
            &mut t,
        )?;
        let typ = if config.type_vocab_size > 0 {
            Some(put(
                "embeddings.token_type_embeddings.weight".into(),
                vec![config.type_vocab_size, c],
                &mut t,
            )?)
        } else {
            None
        };
        let emb_w = put("embeddings.LayerNorm.weight".into(), vec![c], &mut t)?;
        let emb_b = put("embeddings.LayerNorm.bias".into(), vec![c], &mut t)?;
        let mut layers = Vec::new();
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let s = |m: &str| format!("{p}.attention.self.{m}");
            let qkv_w = put(s("query.weight"), vec![c, c], &mut t)?;
            put(s("key.weight"), vec![c, c], &mut t)?;
            put(s("value.weight"), vec![c, c], &mut t)?;
            let qkv_b = put(s("query.bias"), vec![c], &mut t)?;
            put(s("key.bias"), vec![c], &mut t)?;
            put(s("value.bias"), vec![c], &mut t)?;
            let o = |m: &str| format!("{p}.{m}");
            layers.push(LayerAt {
                qkv_w,
                qkv_b,
                post: PostAt {
                    proj_w: put(o("attention.output.dense.weight"), vec![c, c], &mut t)?,
                    proj_b: put(o("attention.output.dense.bias"), vec![c], &mut t)?,
                    ln_w: put(o("attention.output.LayerNorm.weight"), vec![c], &mut t)?,
                    ln_b: put(o("attention.output.LayerNorm.bias"), vec![c], &mut t)?,
                },
                mlp: MlpAt {
                    up_w: put(o("intermediate.dense.weight"), vec![inner, c], &mut t)?,
                    up_b: put(o("intermediate.dense.bias"), vec![inner], &mut t)?,
                    down_w: put(o("output.dense.weight"), vec![c, inner], &mut t)?,
                    down_b: put(o("output.dense.bias"), vec![c], &mut t)?,
                    ln_w: put(o("output.LayerNorm.weight"), vec![c], &mut t)?,
                    ln_b: put(o("output.LayerNorm.bias"), vec![c], &mut t)?,
                    inner,
                },
            });
        }
        let pool_w = put("pooler.dense.weight".into(), vec![c, c], &mut t)?;
        let pool_b = put("pooler.dense.bias".into(), vec![c], &mut t)?;
        // Adapters (drawn when the tensors do not hold them: A from N(0, 1/c), B zero,
        // so training starts from the pretrained function), then the head: the
        // trainable tail.
        // The pooler's bias is the last frozen tensor.
        let trainable_from = if lora.is_some() { pool_b + c } else { 0 };
        let lora = match lora {
            None => None,
            Some((cfg, seed)) => {
                let mut rng = crate::rng::Rng::new(seed);
                let std = 1.0 / (c as f64).sqrt();
                let mut adapters = Vec::new();
                for l in 0..config.num_hidden_layers {
                    let mut at = [0usize; 4];
                    for (i, target) in LORA_TARGETS.iter().enumerate() {
                        let m = format!("encoder.layer.{l}.{target}");
                        let (a, b) = (format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight"));
                        if !t.contains_key(&a) {
                            let v = (0..cfg.r * c)
                                .map(|_| (rng.normal() * std) as f32)
                                .collect();
                            t.insert(a.clone(), (v, vec![cfg.r, c]));
                            t.insert(b.clone(), (vec![0.0; c * cfg.r], vec![c, cfg.r]));
                        }
                        at[2 * i] = put(a, vec![cfg.r, c], &mut t)?;
                        at[2 * i + 1] = put(b, vec![c, cfg.r], &mut t)?;
                    }
                    adapters.push(AdapterAt {
                        qa: at[0],
                        qb: at[1],
                        va: at[2],
                        vb: at[3],
                    });
                }
                Some((cfg, adapters))
            }
        };
        let cls_w = put("classifier.weight".into(), vec![labels, c], &mut t)?;
        let cls_b = put("classifier.bias".into(), vec![labels], &mut t)?;
        if !t.is_empty() {
            let mut left: Vec<&str> = t.keys().map(|s| s.as_str()).collect();
            left.sort_unstable();
            return Err(Error::invalid(
                "weights",
                format!("unexpected tensors: {}", left.join(", ")),
            ));
        }
        Ok(NativeEncoder {
            config,
            flat: Flat::new(tensors, params, trainable_from),
            lay: Layout {
                word,
                pos,
                typ,
                emb_w,
                emb_b,
                layers,
                pool_w,
                pool_b,
                cls_w,
                cls_b,
            },
            scratch: Scratch::default(),
            lora,
            act,
        })
    }

    /// The gradient of the tensor `name` (transformers' name without `bert.`).
    pub fn gradient(&self, name: &str) -> Option<&[f32]> {
        self.flat.gradient(name)
    }

    /// The values of the tensor `name`.
    pub fn param(&self, name: &str) -> Option<&[f32]> {
        self.flat.param(name)
    }

    /// Every tensor's name and shape, in buffer order.
    pub fn names(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.flat.names()
    }

    fn check(&self, seqs: &[&[u32]], types: Option<&[&[u32]]>, labels: &[u32]) -> Result<()> {
        let cfg = &self.config;
        if seqs.is_empty() || labels.len() != seqs.len() {
            return Err(Error::invalid(
                "batch",
                "one label per sequence, at least one sequence",
            ));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= cfg.labels()) {
            return Err(Error::invalid(
                "labels",
                format!("{bad} is not below the {} labels", cfg.labels()),
            ));
        }
        crate::engine::encoder::check_batch(cfg, seqs, types)
    }

    /// Mean cross-entropy of the batch, and its gradient added to the gradients. With
    /// `dropout_seed`, the config's dropout applies (masks drawn from the seed: the same
    /// seed gives the same masks); without, none does.
    pub fn forward_backward(
        &mut self,
        seqs: &[&[u32]],
        types: Option<&[&[u32]]>,
        labels: &[u32],
        dropout_seed: Option<u64>,
    ) -> Result<f64> {
        self.check(seqs, types, labels)?;
        let drops = self.drops(dropout_seed);
        let mut scratch = std::mem::take(&mut self.scratch);
        let loss = k::in_pool(|| {
            let (saved, loss) = self.forward(seqs, types, labels, drops, &mut scratch);
            self.backward(seqs, types, labels, saved, drops, &mut scratch);
            loss
        });
        self.scratch = scratch;
        Ok(loss)
    }

    /// Mean cross-entropy of the batch, without gradients (dropout as in
    /// [`NativeEncoder::forward_backward`]).
    pub fn loss(
        &self,
        seqs: &[&[u32]],
        types: Option<&[&[u32]]>,
        labels: &[u32],
        dropout_seed: Option<u64>,
    ) -> Result<f64> {
        self.check(seqs, types, labels)?;
        let drops = self.drops(dropout_seed);
        Ok(k::in_pool(|| {
            self.forward(seqs, types, labels, drops, &mut Scratch::default())
                .1
        }))
    }

    fn drops(&self, seed: Option<u64>) -> Drops {
        let at = |p: f32, site: u64| seed.and_then(|s| Dropout::new(p, s).map(|d| d.site(site)));
        Drops {
            hidden: at(self.config.hidden_dropout_prob, 1),
            attn: at(self.config.attention_probs_dropout_prob, 2),
            head: at(self.config.head_dropout(), 3),
            after_attention: self.config.family != EncoderFamily::DistilBert,
        }
    }

    /// Element `i` of the tensor `name`, to change (finite-difference tests).
    pub fn param_mut(&mut self, name: &str, i: usize) -> Option<&mut f32> {
        self.flat.param_mut(name, i)
    }

    /// Classification logits `[labels]` per sequence.
    pub fn logits(&self, seqs: &[&[u32]], types: Option<&[&[u32]]>) -> Result<Vec<Vec<f32>>> {
        let labels = vec![0u32; seqs.len()];
        self.check(seqs, types, &labels)?;
        let (saved, _) = k::in_pool(|| {
            self.forward(
                seqs,
                types,
                &labels,
                Drops::default(),
                &mut Scratch::default(),
            )
        });
        let nl = self.config.labels();
        Ok(saved.logits.chunks(nl).map(<[f32]>::to_vec).collect())
    }

    /// The sizes of the blocks.
    fn dims(&self) -> Dims {
        Dims {
            c: self.config.hidden_size,
            nh: self.config.num_attention_heads,
            eps: self.config.layer_norm_eps as f32,
        }
    }

    fn forward(
        &self,
        seqs: &[&[u32]],
        types: Option<&[&[u32]]>,
        labels: &[u32],
        drops: Drops,
        scratch: &mut Scratch,
    ) -> (Saved, f64) {
        let dims = self.dims();
        let cfg = &self.config;
        let (lay, w) = (&self.lay, &self.flat.params);
        let c = cfg.hidden_size;
        let eps = cfg.layer_norm_eps as f32;
        let (spans, n) = spans_of(seqs);
        let mut emb = scratch.pool.take_written(n * c);
        for (s, ids) in seqs.iter().enumerate() {
            let positions = cfg.position_ids(ids);
            for (j, &id) in ids.iter().enumerate() {
                let row = &mut emb[(spans[s].0 + j) * c..][..c];
                let (a, b) = (
                    &w[lay.word + id as usize * c..][..c],
                    &w[lay.pos + positions[j] * c..][..c],
                );
                for i in 0..c {
                    row[i] = a[i] + b[i];
                }
                if let Some(typ) = lay.typ {
                    let ty = types.map_or(0, |tt| tt[s][j] as usize);
                    let d = &w[typ + ty * c..][..c];
                    row.iter_mut().zip(d).for_each(|(r, d)| *r += d);
                }
            }
        }
        let ln = |x: &[f32], at_w: usize, at_b: usize, out: &mut Vec<f32>, st: &mut Vec<f32>| {
            k::layer_norm(
                x,
                &w[at_w..at_w + c],
                Some(&w[at_b..at_b + c]),
                eps,
                n,
                out,
                st,
            );
        };
        let (mut x0, mut emb_st) = (
            scratch.pool.take_written(n * c),
            scratch.pool.take_written(2 * n),
        );
        ln(&emb, lay.emb_w, lay.emb_b, &mut x0, &mut emb_st);
        drop_in_place(&mut x0, drops.emb());
        let mut xs = vec![x0];
        let mut acts = Vec::with_capacity(lay.layers.len());
        for (l, at) in lay.layers.iter().enumerate() {
            let x = xs.last().unwrap();
            let mut qkv = scratch.pool.take_written(n * 3 * c);
            linear(
                x,
                n,
                &w[at.qkv_w..at.qkv_w + 3 * c * c],
                &w[at.qkv_b..at.qkv_b + 3 * c],
                &mut qkv,
                &mut scratch.panels,
            );
            // Adapters add scale·(x·Aᵀ)·Bᵀ to the queries and values.
            let mut adapted = Vec::new();
            if let Some((cfg, ads)) = &self.lora {
                let (r, sc) = (cfg.r, cfg.scale() as f32);
                let mut u = scratch.pool.take(n * c);
                for (part, a_at, b_at) in [(0, ads[l].qa, ads[l].qb), (2, ads[l].va, ads[l].vb)] {
                    let mut t = scratch.pool.take(n * r);
                    let (a, b) = (&w[a_at..a_at + r * c], &w[b_at..b_at + c * r]);
                    k::gemm(x, n, c, r, Rhs::Nt(a), &mut t, &mut scratch.panels);
                    k::gemm(&t, n, r, c, Rhs::Nt(b), &mut u, &mut scratch.panels);
                    for (row, ur) in qkv.chunks_mut(3 * c).zip(u.chunks(c)) {
                        let out = &mut row[part * c..(part + 1) * c];
                        out.iter_mut().zip(ur).for_each(|(o, v)| *o += sc * v);
                    }
                    adapted.push(t);
                }
                scratch.pool.give(u);
            }
            let mut jobs = head_jobs(dims, &spans, None, false, |s, h| drops.attn_head(l, s, h));
            // The last layer computes each sequence's first row alone (what the pooler
            // reads); its keys and values are still every row's.
            let firsts;
            let x = if l + 1 == lay.layers.len() {
                first_queries_only(&mut jobs, dims.nh);
                firsts = first_rows(x, &spans, c);
                &firsts
            } else {
                x
            };
            let (attn, h1) = attn_forward(
                dims,
                at.post.weights(w, c),
                x,
                &qkv,
                &qkv,
                &jobs,
                drops.proj(l),
                scratch,
                true,
            );
            let (mlp, x1) = mlp_forward(
                dims,
                at.mlp.weights(w, c),
                self.act,
                &h1,
                None,
                drops.down(l),
                scratch,
                true,
            );
            acts.push(LayerActs {
                qkv,
                adapted,
                attn,
                h1,
                mlp,
            });
            xs.push(x1);
        }
        // Pooler over each sequence's first token (the last layer's output rows), then
        // the head.
        let b = seqs.len();
        // RoBERTa's head drops the first token's vector out before its first matrix.
        if cfg.family.drops_before_head() {
            drop_in_place(xs.last_mut().unwrap(), drops.head_in());
        }
        let firsts = xs.last().unwrap();
        let mut pooled = vec![0f32; b * c];
        linear(
            firsts,
            b,
            &w[lay.pool_w..lay.pool_w + c * c],
            &w[lay.pool_b..lay.pool_b + c],
            &mut pooled,
            &mut scratch.panels,
        );
        cfg.family.head_activation(&mut pooled);
        let mut pooled_d = pooled.clone();
        drop_in_place(&mut pooled_d, drops.pooled());
        let nl = cfg.labels();
        let mut logits = vec![0f32; b * nl];
        linear(
            &pooled_d,
            b,
            &w[lay.cls_w..lay.cls_w + nl * c],
            &w[lay.cls_b..lay.cls_b + nl],
            &mut logits,
            &mut scratch.panels,
        );
        let mut tmp = logits.clone();
        let loss = k::cross_entropy(&mut tmp, nl, labels, None) / b as f64;
        (
            Saved {
                n,
                spans,
                emb,
                emb_st,
                x: xs,
                layers: acts,
                pooled,
                pooled_d,
                logits,
            },
            loss,
        )
    }

    fn backward(
        &mut self,
        seqs: &[&[u32]],
        types: Option<&[&[u32]]>,
        labels: &[u32],
        s: Saved,
        drops: Drops,
        scratch: &mut Scratch,
    ) {
        let dims = self.dims();
        let cfg = &self.config;
        let (lay, w) = (&self.lay, &self.flat.params);
        let g = &mut self.flat.grads;
        let c = cfg.hidden_size;
        let (n, b, nl) = (s.n, seqs.len(), cfg.labels());
        let frozen = self.lora.is_some();
        let mut junk = vec![0f32; 2 * c];
        // The head: dlogits = (softmax − onehot) / b (set by cross_entropy below).
        let mut dlogits = s.logits.clone();
        k::cross_entropy(&mut dlogits, nl, labels, Some(1.0 / b as f32));
        let mut dpooled = vec![0f32; b * c];
        {
            let gr = wgrads(g, false, (lay.cls_w, nl * c), (lay.cls_b, nl));
            linear_backward(
                &dlogits,
                &s.pooled_d,
                b,
                &w[lay.cls_w..lay.cls_w + nl * c],
                nl,
                gr,
                Some(&mut dpooled),
                scratch,
            );
        }
        drop_in_place(&mut dpooled, drops.pooled());
        cfg.family.head_activation_backward(&mut dpooled, &s.pooled);
        let firsts = s.x.last().unwrap();
        let mut dfirst = scratch.pool.take(b * c);
        {
            let gr = wgrads(g, frozen, (lay.pool_w, c * c), (lay.pool_b, c));
            linear_backward(
                &dpooled,
                firsts,
                b,
                &w[lay.pool_w..lay.pool_w + c * c],
                c,
                gr,
                Some(&mut dfirst),
                scratch,
            );
        }
        if cfg.family.drops_before_head() {
            drop_in_place(&mut dfirst, drops.head_in());
        }
        // The gradient of the last layer's output: its rows are the sequences' first.
        let mut dx = dfirst;
        for (l, at) in lay.layers.iter().enumerate().rev() {
            let a = &s.layers[l];
            let last = l + 1 == lay.layers.len();
            let dh1 = mlp_backward(
                w,
                g,
                &mut junk,
                frozen,
                dims,
                &at.mlp,
                &dx,
                &a.h1,
                &a.mlp,
                None,
                drops.down(l),
                scratch,
            );
            let mut jobs = head_jobs(dims, &s.spans, None, false, |q, h| drops.attn_head(l, q, h));
            if last {
                first_queries_only(&mut jobs, dims.nh);
            }
            let mut dqkv = scratch.pool.take(n * 3 * c);
            let ds1 = attn_backward(
                w,
                g,
                &mut junk,
                frozen,
                dims,
                &at.post,
                &dh1,
                &a.attn,
                &a.qkv,
                &a.qkv,
                &jobs,
                drops.proj(l),
                scratch,
                &mut dqkv,
                None,
            );
            // dx = ds1 (the residual) + dqkv·W_qkv; the last layer's input has every
            // row (its keys and values are every row's).
            if last {
                let first_rows_only = std::mem::replace(&mut dx, scratch.pool.take_written(n * c));
                scratch.pool.give(first_rows_only);
            }
            {
                let gr = wgrads(g, frozen, (at.qkv_w, 3 * c * c), (at.qkv_b, 3 * c));
                linear_backward(
                    &dqkv,
                    &s.x[l],
                    n,
                    &w[at.qkv_w..at.qkv_w + 3 * c * c],
                    3 * c,
                    gr,
                    Some(&mut dx),
                    scratch,
                );
            }
            if let Some((cfg, ads)) = &self.lora {
                // Through the adapters: with dy' = scale·dy of the queries (values),
                // dB += dy'ᵀ·(x·Aᵀ), dt = dy'·B, dA += dtᵀ·x, dx += dt·A.
                let (r, sc) = (cfg.r, cfg.scale() as f32);
                let mut dyp = scratch.pool.take(n * c);
                let mut dt = scratch.pool.take(n * r);
                let mut dxa = scratch.pool.take(n * c);
                let parts = [(0, ads[l].qa, ads[l].qb), (2, ads[l].va, ads[l].vb)];
                for (i, (part, a_at, b_at)) in parts.into_iter().enumerate() {
                    for (d, row) in dyp.chunks_mut(c).zip(dqkv.chunks(3 * c)) {
                        let src = &row[part * c..(part + 1) * c];
                        d.iter_mut().zip(src).for_each(|(o, v)| *o = sc * v);
                    }
                    let (bw, aw) = (b_at..b_at + c * r, a_at..a_at + r * c);
                    weight_backward(
                        &dyp,
                        &a.adapted[i],
                        n,
                        &w[bw.clone()],
                        c,
                        Some(&mut g[bw]),
                        Some(&mut dt),
                        scratch,
                    );
                    weight_backward(
                        &dt,
                        &s.x[l],
                        n,
                        &w[aw.clone()],
                        r,
                        Some(&mut g[aw]),
                        Some(&mut dxa),
                        scratch,
                    );
                    dx.iter_mut().zip(&dxa).for_each(|(d, v)| *d += v);
                }
                for v in [dyp, dt, dxa] {
                    scratch.pool.give(v);
                }
            }
            if last {
                for (i, &(r0, _)) in s.spans.iter().enumerate() {
                    let row = &mut dx[r0 * c..(r0 + 1) * c];
                    row.iter_mut()
                        .zip(&ds1[i * c..(i + 1) * c])
                        .for_each(|(d, s)| *d += s);
                }
            } else {
                dx.iter_mut().zip(&ds1).for_each(|(d, s)| *d += s);
            }
            for v in [dh1, ds1, dqkv] {
                scratch.pool.give(v);
            }
        }
        // The embeddings: their norm, then the three tables.
        drop_in_place(&mut dx, drops.emb());
        let mut de = scratch.pool.take(n * c);
        {
            let [dw, db] = norm_grads(g, &mut junk, frozen, lay.emb_w, lay.emb_b, c);
            k::layer_norm_backward(
                &dx,
                &s.emb,
                &s.emb_st,
                &w[lay.emb_w..lay.emb_w + c],
                n,
                &mut de,
                dw,
                Some(db),
            );
        }
        for (q, ids) in seqs.iter().enumerate().filter(|_| !frozen) {
            let positions = cfg.position_ids(ids);
            for (j, &id) in ids.iter().enumerate() {
                let ty = types.map_or(0, |tt| tt[q][j] as usize);
                let row = &de[(s.spans[q].0 + j) * c..][..c];
                let typ = lay.typ.map(|typ| typ + ty * c);
                for at in [
                    Some(lay.word + id as usize * c),
                    Some(lay.pos + positions[j] * c),
                    typ,
                ]
                .into_iter()
                .flatten()
                {
                    g[at..at + c].iter_mut().zip(row).for_each(|(g, d)| *g += d);
                }
            }
        }
        for v in [dx, de, s.emb, s.emb_st].into_iter().chain(s.x) {
            scratch.pool.give(v);
        }
        for a in s.layers {
            a.attn.give(&mut scratch.pool);
            a.mlp.give(&mut scratch.pool);
            for v in [a.qkv, a.h1].into_iter().chain(a.adapted) {
                scratch.pool.give(v);
            }
        }
    }

    /// Tensors by name (canonical, without `bert.`), for saving.
    pub fn tensors(&self) -> HashMap<String, (Vec<f32>, Vec<usize>)> {
        self.flat.tensors()
    }
}

super::flat::trainable_by_flat!(NativeEncoder);

/// A new tensor `name` of `shape` as transformers initialises BERT's.
fn draw(name: &str, shape: &[usize], rng: &mut crate::rng::Rng) -> Result<Vec<f32>> {
    let len = shape.iter().product();
    let mut v = crate::guard::try_filled(name, len, 0f32)?;
    if name.ends_with("LayerNorm.weight") {
        v.iter_mut().for_each(|x| *x = 1.0);
    } else if !name.ends_with(".bias") {
        v.iter_mut().for_each(|x| *x = (rng.normal() * 0.02) as f32);
    }
    Ok(v)
}

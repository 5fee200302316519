//! The encoder stack for inference on the CPU: BERT (`BertModel`,
//! `BertForSequenceClassification`) as Hugging Face computes it — word, position and
//! token-type embeddings with a LayerNorm, post-norm blocks of bidirectional
//! self-attention and a GELU MLP, the tanh pooler over the first token and the
//! classification head — on the same kernels and weight layout as the decoder.
//!
//! A batch is ragged: the sequences' tokens are stacked with no padding, and each
//! sequence attends over its own keys only, which is what a padding mask computes
//! without spending work on the padded positions.
//!
//! The tests check hidden states, pooler output and logits against transformers'
//! fixtures, and sentence embeddings against sentence-transformers'.

use std::path::Path;

use super::decoder::{Layer, Linear, Norm};
use super::io::{plain_tensors, read_weight_files, take, unexpected, Plain};
use super::sublayers::{attn_forward, head_jobs, mlp_forward, Act, Dims, Scratch};
use super::Mlp;
use crate::checkpoint::{read_json, CONFIG, WEIGHTS};
use crate::kernels::cpu::quant::{QMatrix, WeightType};
use crate::kernels::cpu::Rhs;
use crate::models::bert::BertConfig;
use crate::{Error, Result};

/// How [`Encoder::embed`] turns a sequence's token vectors into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the token vectors (sentence-transformers).
    Mean,
    /// The first token's vector (`[CLS]`).
    Cls,
}

/// A BERT encoder laid out for inference.
pub struct Encoder {
    pub config: BertConfig,
    mlp: Mlp,
    /// `[vocab, d_model]`.
    word: Vec<f32>,
    /// `[max_position_embeddings, d_model]`.
    positions: Vec<f32>,
    /// `[type_vocab_size, d_model]`.
    types: Vec<f32>,
    emb_norm: Norm,
    /// `norm1` follows the attention's residual sum, `norm2` the MLP's.
    layers: Vec<Layer>,
    pooler: Option<Linear>,
    classifier: Option<Linear>,
}

/// What [`Encoder::encode`] returns.
pub struct Encoded {
    /// Per sequence, its final hidden states `[len, d_model]`.
    pub last: Vec<Vec<f32>>,
    /// When asked for: the embeddings' output and every layer's, each per sequence
    /// (`num_hidden_layers + 1` entries, as transformers' `hidden_states`).
    pub all: Vec<Vec<Vec<f32>>>,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::bad_file(path, msg.into())
}

impl Encoder {
    /// Load a BERT folder (`model_type` "bert"; bare `BertModel` names or the `bert.`
    /// names of a task checkpoint, with or without pooler and classification head).
    pub fn load(dir: &Path) -> Result<Self> {
        let (config, tensors) = read_bert(dir, |_| true)?;
        Self::from_plain(config, &dir.join(WEIGHTS), tensors)
    }

    /// Build from tensors under their canonical names (without `bert.`). LoRA adapters
    /// among them (`<module>.lora_A.weight`, `<module>.lora_B.weight`) are folded into
    /// their module's weight with `lora_scale`.
    pub fn from_tensors(config: BertConfig, mut t: Plain, lora_scale: Option<f64>) -> Result<Self> {
        if let Some(scale) = lora_scale {
            fold_adapters(&mut t, scale)?;
        }
        Self::from_plain(config, Path::new("(parameters)"), t)
    }

    pub(crate) fn from_plain(config: BertConfig, path: &Path, mut t: Plain) -> Result<Self> {
        config.validate()?;
        let c = config.hidden_size;
        let inner = config.intermediate_size;
        let take = |t: &mut Plain, name: &str, shape: &[usize]| take(t, path, name, shape);
        let norm = |t: &mut Plain, name: &str| take_norm(t, path, name, c);
        let linear = |t: &mut Plain, names: &[&str], rows: usize, cols: usize| {
            take_linear(t, path, names, rows, cols)
        };
        let word = take(
            &mut t,
            "embeddings.word_embeddings.weight",
            &[config.vocab_size, c],
        )?;
        let positions = take(
            &mut t,
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, c],
        )?;
        let types = if config.type_vocab_size > 0 {
            take(
                &mut t,
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, c],
            )?
        } else {
            Vec::new()
        };
        let emb_norm = norm(&mut t, "embeddings.LayerNorm")?;
        // Grown layer by layer: a wrong layer count is found at its first missing
        // tensor, before anything of its size exists.
        let mut layers = Vec::new();
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let q = format!("{p}.attention.self.query");
            let k = format!("{p}.attention.self.key");
            let v = format!("{p}.attention.self.value");
            layers.push(Layer {
                qkv: linear(&mut t, &[&q, &k, &v], c, c)?,
                proj: linear(&mut t, &[&format!("{p}.attention.output.dense")], c, c)?,
                norm1: norm(&mut t, &format!("{p}.attention.output.LayerNorm"))?,
                up: linear(&mut t, &[&format!("{p}.intermediate.dense")], inner, c)?,
                down: linear(&mut t, &[&format!("{p}.output.dense")], c, inner)?,
                norm2: norm(&mut t, &format!("{p}.output.LayerNorm"))?,
            });
        }
        let pooler = if t.contains_key("pooler.dense.weight") {
            Some(linear(&mut t, &["pooler.dense"], c, c)?)
        } else {
            None
        };
        let classifier = if t.contains_key("classifier.weight") {
            Some(linear(&mut t, &["classifier"], config.labels(), c)?)
        } else {
            None
        };
        t.retain(|k, _| !is_buffer(k));
        unexpected(&t, path)?;
        let mlp = match config.hidden_act.as_str() {
            "gelu" => Mlp::GeluErf,
            "relu" => Mlp::Relu,
            _ => Mlp::GeluTanh,
        };
        Ok(Encoder {
            config,
            mlp,
            word,
            positions,
            types,
            emb_norm,
            layers,
            pooler,
            classifier,
        })
    }

    pub fn d_model(&self) -> usize {
        self.config.hidden_size
    }

    /// Whether the folder had a classification head (and pooler).
    pub fn has_classifier(&self) -> bool {
        self.pooler.is_some() && self.classifier.is_some()
    }

    fn check(&self, seqs: &[&[u32]], types: Option<&[&[u32]]>) -> Result<()> {
        check_batch(&self.config, seqs, types)
    }

    /// Encode a ragged batch: `seqs[s]` with token types `types[s]` (all 0 when not
    /// given). With `all_layers`, also every layer's hidden states.
    pub fn encode(
        &self,
        seqs: &[&[u32]],
        types: Option<&[&[u32]]>,
        all_layers: bool,
    ) -> Result<Encoded> {
        self.check(seqs, types)?;
        Ok(crate::kernels::in_pool(|| {
            self.run(seqs, types, all_layers)
        }))
    }

    fn run(&self, seqs: &[&[u32]], types: Option<&[&[u32]]>, all_layers: bool) -> Encoded {
        let cfg = &self.config;
        let c = cfg.hidden_size;
        let nh = cfg.num_attention_heads;
        let eps = cfg.layer_norm_eps as f32;
        let n: usize = seqs.iter().map(|s| s.len()).sum();
        let first = super::row_starts(seqs.iter().map(|s| s.len()));
        let mut x = vec![0f32; n * c];
        for (s, ids) in seqs.iter().enumerate() {
            let positions = cfg.position_ids(ids);
            for (j, &id) in ids.iter().enumerate() {
                let row = &mut x[(first[s] + j) * c..][..c];
                let word = &self.word[id as usize * c..][..c];
                let pos = &self.positions[positions[j] * c..][..c];
                for (i, o) in row.iter_mut().enumerate() {
                    *o = word[i] + pos[i];
                }
                if cfg.type_vocab_size > 0 {
                    let ty = types.map_or(0, |tt| tt[s][j] as usize);
                    let typ = &self.types[ty * c..][..c];
                    row.iter_mut().zip(typ).for_each(|(o, t)| *o += t);
                }
            }
        }
        let mut h = vec![0f32; n * c];
        self.emb_norm.apply(&x, &mut h, eps);
        let mut x = h;
        let split = |x: &[f32]| -> Vec<Vec<f32>> {
            seqs.iter()
                .zip(&first)
                .map(|(s, &f)| x[f * c..(f + s.len()) * c].to_vec())
                .collect()
        };
        let mut all = Vec::new();
        if all_layers {
            all.push(split(&x));
        }
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        post_norm_blocks(&self.layers, self.mlp, nh, eps, &lens, &mut x, |x| {
            if all_layers {
                all.push(split(x));
            }
        });
        Encoded {
            last: split(&x),
            all,
        }
    }

    /// The pooler's output `tanh(W·h₀ + b)` for each sequence's first hidden state
    /// (`[d_model]` each), from [`Encoded::last`].
    pub fn pool(&self, last: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let pooler = self
            .pooler
            .as_ref()
            .ok_or_else(|| Error::Model("this BERT model has no pooler".into()))?;
        let c = self.d_model();
        let firsts: Vec<f32> = last.iter().flat_map(|h| h[..c].iter().copied()).collect();
        let mut out = vec![0f32; firsts.len()];
        pooler.apply(&firsts, last.len(), &mut out);
        self.config.family.head_activation(&mut out);
        Ok(out.chunks(c).map(<[f32]>::to_vec).collect())
    }

    /// Classification logits (`[labels]` each) for a ragged batch (token types as in
    /// [`Encoder::encode`]).
    pub fn classify(&self, seqs: &[&[u32]], types: Option<&[&[u32]]>) -> Result<Vec<Vec<f32>>> {
        let head = self
            .classifier
            .as_ref()
            .ok_or_else(|| Error::Model("this BERT model has no classification head".into()))?;
        let pooled = self.pool(&self.encode(seqs, types, false)?.last)?;
        let flat: Vec<f32> = pooled.concat();
        let k = self.config.labels();
        let mut logits = vec![0f32; seqs.len() * k];
        head.apply(&flat, seqs.len(), &mut logits);
        Ok(logits.chunks(k).map(<[f32]>::to_vec).collect())
    }

    /// One vector per sequence: its token vectors pooled, scaled to unit length when
    /// `normalize` (sentence-transformers' recipe is mean pooling, normalised).
    pub fn embed(
        &self,
        seqs: &[&[u32]],
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>> {
        let c = self.d_model();
        let enc = self.encode(seqs, None, false)?;
        Ok(enc
            .last
            .iter()
            .map(|h| {
                let mut v = match pooling {
                    Pooling::Cls => h[..c].to_vec(),
                    Pooling::Mean => {
                        let mut sum = vec![0f64; c];
                        for row in h.chunks(c) {
                            sum.iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
                        }
                        let rows = (h.len() / c) as f64;
                        sum.iter().map(|s| (s / rows) as f32).collect()
                    }
                };
                if normalize {
                    let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                    let inv = 1.0 / norm.max(1e-12);
                    v.iter_mut().for_each(|x| *x = (*x as f64 * inv) as f32);
                }
                v
            })
            .collect())
    }
}

/// Bidirectional post-norm blocks over a ragged batch (BERT's and Marian's encoders):
/// `x` `[n, d_model]` holds the sequences' rows one after another (`lens[s]` rows for
/// sequence `s`), and each block attends within a sequence, adds the attention's output
/// and normalises (`norm1`), then adds the MLP's output and normalises (`norm2`).
/// `each` sees `x` after every block.
pub(crate) fn post_norm_blocks(
    layers: &[Layer],
    mlp: Mlp,
    nh: usize,
    eps: f32,
    lens: &[usize],
    x: &mut Vec<f32>,
    mut each: impl FnMut(&[f32]),
) {
    let Some(first_layer) = layers.first() else {
        return;
    };
    let c = first_layer.proj.w.rows;
    let n: usize = lens.iter().sum();
    let d = Dims { c, nh, eps };
    let act = Act::of_mlp(mlp);
    let spans = super::spans(lens);
    // One job per (sequence, head): its queries against its own keys.
    let jobs = head_jobs(d, &spans, None, false, |_, _| None);
    let mut scratch = Scratch::default();
    let mut qkv = vec![0f32; n * 3 * c];
    for layer in layers {
        let b = layer.qkv.b.as_deref();
        let qkv_w = Rhs::Q(&layer.qkv.w);
        crate::kernels::cpu::gemm_bias(x, n, c, 3 * c, qkv_w, b, &mut qkv, &mut scratch.panels);
        let (a, h1) = attn_forward(
            d,
            layer.attn_tail(),
            x,
            &qkv,
            &qkv,
            &jobs,
            None,
            &mut scratch,
            false,
        );
        a.give(&mut scratch.pool);
        let (m, out) = mlp_forward(d, layer.mlp(), act, &h1, None, None, &mut scratch, false);
        m.give(&mut scratch.pool);
        scratch.pool.give(h1);
        scratch.pool.give(std::mem::replace(x, out));
        each(x);
    }
}

/// The norm `name` (`.weight` and `.bias`, `[c]` each).
pub(crate) fn take_norm(t: &mut Plain, path: &Path, name: &str, c: usize) -> Result<Norm> {
    Ok(Norm {
        w: take(t, path, &format!("{name}.weight"), &[c])?,
        b: Some(take(t, path, &format!("{name}.bias"), &[c])?),
    })
}

/// The `[rows, cols]` matrices `names` stacked by rows (f32), with their biases.
pub(crate) fn take_linear(
    t: &mut Plain,
    path: &Path,
    names: &[&str],
    rows: usize,
    cols: usize,
) -> Result<Linear> {
    let (mut w, mut b) = (Vec::new(), Vec::new());
    for name in names {
        w.extend(take(t, path, &format!("{name}.weight"), &[rows, cols])?);
        b.extend(take(t, path, &format!("{name}.bias"), &[rows])?);
    }
    Ok(Linear {
        w: QMatrix::from_f32(&w, rows * names.len(), cols, WeightType::F32)?,
        b: Some(b),
    })
}

pub(crate) fn is_buffer(name: &str) -> bool {
    matches!(
        name,
        "embeddings.position_ids" | "embeddings.token_type_ids"
    )
}

/// A ragged batch fits the model: every sequence has tokens, fits the positions and the
/// vocabulary, and has one token type (below `type_vocab_size`) per token when given.
pub(crate) fn check_batch(
    cfg: &BertConfig,
    seqs: &[&[u32]],
    types: Option<&[&[u32]]>,
) -> Result<()> {
    if let Some(tt) = types {
        if tt.len() != seqs.len() {
            return Err(Error::invalid(
                "token_type_ids",
                "one list of token types per sequence is needed",
            ));
        }
    }
    for (i, s) in seqs.iter().enumerate() {
        if s.is_empty() {
            return Err(Error::invalid("tokens", "a sequence was given no tokens"));
        }
        crate::engine::check_positions(s.len(), cfg.max_len())?;
        if let Some(&bad) = s.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(Error::invalid(
                "tokens",
                format!("id {bad} is outside the vocabulary of {}", cfg.vocab_size),
            ));
        }
        if let Some(tt) = types {
            if tt[i].len() != s.len() {
                return Err(Error::invalid(
                    "token_type_ids",
                    format!(
                        "sequence {i} has {} tokens and {} token types",
                        s.len(),
                        tt[i].len()
                    ),
                ));
            }
            if let Some(&bad) = tt[i]
                .iter()
                .find(|&&t| t as usize >= cfg.type_vocab_size.max(1))
            {
                return Err(Error::invalid(
                    "token_type_ids",
                    format!("{bad} is not below type_vocab_size {}", cfg.type_vocab_size),
                ));
            }
        }
    }
    Ok(())
}

/// An encoder folder's config (validated; `model_type` one of
/// [`crate::models::bert::ENCODER_TYPES`]) and its tensors as f32 under canonical
/// (BERT's) names, those `keep` accepts; the integer buffers some checkpoints keep
/// (`position_ids`, `token_type_ids`) and the tensors nothing reads (masked-LM heads)
/// are left out.
pub(crate) fn read_bert(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<(BertConfig, Plain)> {
    let cfg_path = dir.join(CONFIG);
    let value = read_json(&cfg_path)?;
    let config = BertConfig::from_hf(&value).map_err(|e| bad(&cfg_path, e.to_string()))?;
    config
        .validate()
        .map_err(|e| bad(&cfg_path, e.to_string()))?;
    let family = config.family;
    let (files, blobs) = read_weight_files(dir)?;
    let (tensors, _) = plain_tensors(&files, &blobs, |name| {
        let key = family.canonical(name)?;
        (!is_buffer(&key) && keep(&key)).then_some(key)
    })?;
    Ok((config, tensors))
}

/// Fold `<m>.lora_A.weight` `[r, in]` and `<m>.lora_B.weight` `[out, r]` into
/// `<m>.weight` `[out, in]` as `W + scale·B·A`, removing the adapters.
pub(crate) fn fold_adapters(t: &mut Plain, scale: f64) -> Result<()> {
    let modules: Vec<String> = t
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_A.weight").map(str::to_string))
        .collect();
    for m in modules {
        let (a, sa) = t.remove(&format!("{m}.lora_A.weight")).unwrap();
        let (b, sb) = t
            .remove(&format!("{m}.lora_B.weight"))
            .ok_or_else(|| Error::Model(format!("adapter {m} has lora_A but no lora_B")))?;
        let (w, sw) = t
            .get_mut(&format!("{m}.weight"))
            .ok_or_else(|| Error::Model(format!("adapter {m} has no base weight {m}.weight")))?;
        let (r, cols) = (sa[0], sa[1]);
        let rows = sb[0];
        if sb[1] != r || sw[..] != [rows, cols] {
            return Err(Error::Model(format!(
                "adapter {m}: shapes {sa:?} and {sb:?} do not fit the weight {sw:?}"
            )));
        }
        for i in 0..rows {
            for k in 0..r {
                let bik = b[i * r + k] as f64 * scale;
                for (j, wv) in w[i * cols..(i + 1) * cols].iter_mut().enumerate() {
                    *wv += (bik * a[k * cols + j] as f64) as f32;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `W + s·B·A`, element by element, with the adapters removed.
    #[test]
    fn adapters_fold_into_their_weight() {
        let mut t = Plain::new();
        // W [3, 2], A [1, 2] (r = 1), B [3, 1].
        t.insert(
            "m.weight".into(),
            (vec![1., 2., 3., 4., 5., 6.], vec![3, 2]),
        );
        t.insert("m.lora_A.weight".into(), (vec![0.5, -1.0], vec![1, 2]));
        t.insert("m.lora_B.weight".into(), (vec![2.0, 0.0, -4.0], vec![3, 1]));
        fold_adapters(&mut t, 0.25).unwrap();
        assert_eq!(t.len(), 1);
        let w = &t["m.weight"].0;
        // Row i adds 0.25·B[i]·A: row 0 += [0.25, -0.5], row 2 += [-0.5, 1].
        assert_eq!(w, &vec![1.25, 1.5, 3., 4., 4.5, 7.]);
        let mut lone = Plain::new();
        lone.insert("m.weight".into(), (vec![1.; 4], vec![2, 2]));
        lone.insert("m.lora_A.weight".into(), (vec![1.; 2], vec![1, 2]));
        assert!(fold_adapters(&mut lone, 1.0).is_err());
    }
}

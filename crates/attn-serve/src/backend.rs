//! The model side of the server: one forward pass for a new prompt (prefill) and one
//! decode step for many sequences at once.
//!
//! Two back ends:
//! - [`Gpt2Batched`] reads a GPT-2's parameters by their Hugging Face names and runs a
//!   decode step for B sequences of different lengths as one batch: embeddings, layer
//!   norms, the QKV / output projections, the MLP and the output head are single
//!   `[B, C]` matrix products; only the attention itself (each row against its own
//!   key/value cache) is done row by row, because rows have different lengths.
//! - [`Interleaved`] works with any [`CausalLm`] (Llama included) through the library's
//!   own forward pass and key/value cache: one sequence after the other in each step.
//!
//! The batched forward pass duplicates GPT-2's arithmetic; `tests/backend.rs` checks
//! that its logits match the library's model on the same weights.

use attn::checkpoint::LoadedLm;
use attn::models::gpt2::Gpt2Config;
use attn::models::CausalLm;
use attn::nn::{conv1d, layer_norm, softmax_last, KvCache, Mode};
use attn::{Error, Result};
use candle_core::{DType, Device, Tensor, D};

/// Per-sequence model state.
pub enum SeqCache {
    Lib(KvCache),
    Gpt2 {
        /// Per layer, keys and values `[1, H, T, D]`.
        layers: Vec<(Tensor, Tensor)>,
        len: usize,
    },
}

impl SeqCache {
    pub fn len(&self) -> usize {
        match self {
            SeqCache::Lib(c) => c.len(),
            SeqCache::Gpt2 { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Attention weights of one forward pass: per layer `[H, T, T]` (row = query position).
pub type AttentionMaps = Vec<Vec<Vec<Vec<f32>>>>;

pub enum Backend {
    Gpt2(Gpt2Batched),
    Interleaved(Interleaved),
}

impl Backend {
    /// The batched GPT-2 path when `batched` and the model is a GPT-2, else interleaved.
    pub fn new(lm: LoadedLm, config: &serde_json::Value, batched: bool) -> Result<Self> {
        if lm.model_type == "gpt2" {
            let b = Gpt2Batched::new(&lm, config)?;
            if batched {
                return Ok(Backend::Gpt2(b));
            }
            return Ok(Backend::Interleaved(Interleaved {
                model: lm.model,
                gpt2: Some(b),
            }));
        }
        Ok(Backend::Interleaved(Interleaved {
            model: lm.model,
            gpt2: None,
        }))
    }

    pub fn is_batched(&self) -> bool {
        matches!(self, Backend::Gpt2(_))
    }

    pub fn context(&self) -> usize {
        match self {
            Backend::Gpt2(b) => b.cfg.n_positions,
            Backend::Interleaved(i) => i.model.context(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Backend::Gpt2(b) => b.cfg.vocab_size,
            Backend::Interleaved(i) => i.model.vocab_size(),
        }
    }

    pub fn eos(&self) -> Option<u32> {
        match self {
            Backend::Gpt2(b) => b.cfg.eos_token_id,
            Backend::Interleaved(i) => i.model.eos(),
        }
    }

    pub fn bos(&self) -> Option<u32> {
        match self {
            Backend::Gpt2(b) => b.cfg.bos_token_id,
            Backend::Interleaved(i) => i.model.bos(),
        }
    }

    /// Run a whole prompt; returns its cache and the logits of the last position.
    pub fn prefill(&self, ids: &[u32]) -> Result<(SeqCache, Vec<f32>)> {
        match self {
            Backend::Gpt2(b) => {
                let (cache, logits, _) = b.prefill(ids, false)?;
                Ok((cache, logits))
            }
            Backend::Interleaved(i) => i.prefill(ids),
        }
    }

    /// Run several prompts (of any lengths) together: for GPT-2 one padded forward pass,
    /// else one after another. Returns each prompt's cache and last-position logits.
    pub fn prefill_many(&self, prompts: &[&[u32]]) -> Result<Vec<(SeqCache, Vec<f32>)>> {
        match self {
            Backend::Gpt2(b) if prompts.len() > 1 => b.prefill_batch(prompts),
            _ => prompts.iter().map(|p| self.prefill(p)).collect(),
        }
    }

    /// One new token for each sequence; returns each sequence's next logits.
    pub fn step(&self, rows: &mut [(&mut SeqCache, u32)]) -> Result<Vec<Vec<f32>>> {
        match self {
            Backend::Gpt2(b) => b.step(rows),
            Backend::Interleaved(i) => i.step(rows),
        }
    }

    /// Attention weights of every layer and head for `ids` (GPT-2 models only).
    pub fn attention(&self, ids: &[u32]) -> Result<AttentionMaps> {
        let b = match self {
            Backend::Gpt2(b) => b,
            Backend::Interleaved(Interleaved { gpt2: Some(b), .. }) => b,
            Backend::Interleaved(_) => {
                return Err(Error::invalid(
                    "model",
                    "attention maps are available for GPT-2 models only",
                ))
            }
        };
        let (_, _, maps) = b.prefill(ids, true)?;
        let maps = maps.unwrap_or_default();
        maps.iter()
            .map(|w| Ok(w.squeeze(0)?.to_dtype(DType::F32)?.to_vec3::<f32>()?))
            .collect()
    }
}

/// Any causal model through the library, one sequence at a time.
pub struct Interleaved {
    model: Box<dyn CausalLm>,
    /// Kept for attention maps when the model is a GPT-2 served without batching.
    gpt2: Option<Gpt2Batched>,
}

impl Interleaved {
    fn last_logits(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let x = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
        let h = self.model.hidden(&x, Some(cache), &mut Mode::Eval)?;
        let last = h.narrow(1, h.dim(1)? - 1, 1)?;
        let logits = self.model.logits(&last)?.flatten_all()?;
        Ok(logits.to_dtype(DType::F32)?.to_vec1()?)
    }

    fn prefill(&self, ids: &[u32]) -> Result<(SeqCache, Vec<f32>)> {
        let mut cache = KvCache::new(self.model.n_layer());
        let logits = self.last_logits(ids, &mut cache)?;
        Ok((SeqCache::Lib(cache), logits))
    }

    fn step(&self, rows: &mut [(&mut SeqCache, u32)]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(rows.len());
        for (cache, id) in rows.iter_mut() {
            match cache {
                SeqCache::Lib(c) => out.push(self.last_logits(&[*id], c)?),
                SeqCache::Gpt2 { .. } => {
                    return Err(Error::invalid(
                        "cache",
                        "a GPT-2 batch cache in the interleaved path",
                    ))
                }
            }
        }
        Ok(out)
    }
}

struct Block {
    ln_1: (Tensor, Tensor),
    c_attn: (Tensor, Tensor),
    attn_proj: (Tensor, Tensor),
    ln_2: (Tensor, Tensor),
    c_fc: (Tensor, Tensor),
    mlp_proj: (Tensor, Tensor),
}

/// GPT-2 from its parameters, with a ragged-batch decode step.
pub struct Gpt2Batched {
    cfg: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: (Tensor, Tensor),
}

impl Gpt2Batched {
    pub fn new(lm: &LoadedLm, config: &serde_json::Value) -> Result<Self> {
        let cfg: Gpt2Config = serde_json::from_value(config.clone())
            .map_err(|e| Error::invalid("config", format!("not a GPT-2 config: {e}")))?;
        let get = |name: &str| -> Result<Tensor> {
            let v = lm
                .params
                .get(name)
                .ok_or_else(|| Error::invalid("model", format!("no parameter {name}")))?;
            Ok(v.as_tensor().to_dtype(DType::F32)?)
        };
        let pair = |name: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                get(&format!("{name}.weight"))?,
                get(&format!("{name}.bias"))?,
            ))
        };
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let p = format!("transformer.h.{l}");
            blocks.push(Block {
                ln_1: pair(&format!("{p}.ln_1"))?,
                c_attn: pair(&format!("{p}.attn.c_attn"))?,
                attn_proj: pair(&format!("{p}.attn.c_proj"))?,
                ln_2: pair(&format!("{p}.ln_2"))?,
                c_fc: pair(&format!("{p}.mlp.c_fc"))?,
                mlp_proj: pair(&format!("{p}.mlp.c_proj"))?,
            });
        }
        Ok(Gpt2Batched {
            wte: get("transformer.wte.weight")?,
            wpe: get("transformer.wpe.weight")?,
            ln_f: pair("transformer.ln_f")?,
            blocks,
            cfg,
        })
    }

    fn act(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.cfg.activation_function.as_str() {
            "gelu" => x.gelu_erf()?,
            "relu" => x.relu()?,
            _ => x.gelu()?,
        })
    }

    /// The MLP half of a block and the residual around it, for `x` `[N, C]`.
    fn mlp(&self, blk: &Block, x: Tensor) -> Result<Tensor> {
        let eps = self.cfg.layer_norm_epsilon;
        let h = layer_norm(&x, &blk.ln_2.0, &blk.ln_2.1, eps, &Mode::Eval)?;
        let h = self.act(&conv1d(&h, &blk.c_fc.0, Some(&blk.c_fc.1))?)?;
        let h = conv1d(&h, &blk.mlp_proj.0, Some(&blk.mlp_proj.1))?;
        Ok((x + h)?)
    }

    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let h = layer_norm(
            x,
            &self.ln_f.0,
            &self.ln_f.1,
            self.cfg.layer_norm_epsilon,
            &Mode::Eval,
        )?;
        Ok(h.matmul(&self.wte.t()?)?)
    }

    /// One sequence from position 0: its cache, last-position logits and (if asked) the
    /// attention weights of every layer `[1, H, T, T]`.
    pub fn prefill(
        &self,
        ids: &[u32],
        want_weights: bool,
    ) -> Result<(SeqCache, Vec<f32>, Option<Vec<Tensor>>)> {
        let cfg = &self.cfg;
        let t = ids.len();
        attn::nn::check_positions(t, cfg.n_positions)?;
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let hd = c / nh;
        let dev = Device::Cpu;
        let idt = Tensor::new(ids, &dev)?;
        let pos = Tensor::arange(0u32, t as u32, &dev)?;
        let mut x = (self.wte.embedding(&idt)? + self.wpe.embedding(&pos)?)?; // [T, C]
        let mask = causal_mask(t, &dev)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let mut maps = want_weights.then(Vec::new);
        for blk in &self.blocks {
            let h = layer_norm(
                &x,
                &blk.ln_1.0,
                &blk.ln_1.1,
                cfg.layer_norm_epsilon,
                &Mode::Eval,
            )?;
            let qkv = conv1d(&h, &blk.c_attn.0, Some(&blk.c_attn.1))?; // [T, 3C]
            let heads = |i: usize| -> Result<Tensor> {
                Ok(qkv
                    .narrow(1, i * c, c)?
                    .reshape((1, t, nh, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
            let scores = (q.matmul(&k.transpose(D::Minus2, D::Minus1)?)? * scale)?;
            let w = softmax_last(&scores.broadcast_add(&mask)?, &Mode::Eval)?;
            let y = w.matmul(&v)?.transpose(1, 2)?.reshape((t, c))?;
            if let Some(m) = maps.as_mut() {
                m.push(w);
            }
            layers.push((k, v));
            let y = conv1d(&y, &blk.attn_proj.0, Some(&blk.attn_proj.1))?;
            x = self.mlp(blk, (x + y)?)?;
        }
        let last = x.narrow(0, t - 1, 1)?;
        let logits = self.head(&last)?.flatten_all()?.to_vec1::<f32>()?;
        Ok((SeqCache::Gpt2 { layers, len: t }, logits, maps))
    }

    /// Several prompts from position 0 in one pass, right-padded to the longest. No
    /// padding mask is needed: under the causal mask a real position only sees earlier
    /// positions, which are real too; the padded positions' outputs are never read and
    /// their keys and values are cut off each row's cache.
    pub fn prefill_batch(&self, prompts: &[&[u32]]) -> Result<Vec<(SeqCache, Vec<f32>)>> {
        let cfg = &self.cfg;
        let b = prompts.len();
        let t = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        if b == 0 || prompts.iter().any(|p| p.is_empty()) {
            return Err(Error::invalid(
                "prompt",
                "every prompt needs at least one token",
            ));
        }
        attn::nn::check_positions(t, cfg.n_positions)?;
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let hd = c / nh;
        let dev = Device::Cpu;
        let mut ids = Vec::with_capacity(b * t);
        for p in prompts {
            ids.extend(p.iter().copied().chain(std::iter::repeat(0)).take(t));
        }
        let ids = Tensor::from_vec(ids, b * t, &dev)?;
        let pos = Tensor::arange(0u32, t as u32, &dev)?;
        let x = self.wte.embedding(&ids)?.reshape((b, t, c))?;
        let mut x = x.broadcast_add(&self.wpe.embedding(&pos)?)?;
        let mask = causal_mask(t, &dev)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut kv = Vec::with_capacity(cfg.n_layer);
        for blk in &self.blocks {
            let h = layer_norm(
                &x,
                &blk.ln_1.0,
                &blk.ln_1.1,
                cfg.layer_norm_epsilon,
                &Mode::Eval,
            )?;
            let qkv = conv1d(&h, &blk.c_attn.0, Some(&blk.c_attn.1))?; // [B, T, 3C]
            let heads = |i: usize| -> Result<Tensor> {
                Ok(qkv
                    .narrow(2, i * c, c)?
                    .reshape((b, t, nh, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
            let scores = (q.matmul(&k.transpose(D::Minus2, D::Minus1)?)? * scale)?;
            let w = softmax_last(&scores.broadcast_add(&mask)?, &Mode::Eval)?;
            let y = w.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
            kv.push((k, v));
            let y = conv1d(&y, &blk.attn_proj.0, Some(&blk.attn_proj.1))?;
            x = self.mlp(blk, (x + y)?)?;
        }
        let last: Vec<u32> = prompts
            .iter()
            .enumerate()
            .map(|(r, p)| (r * t + p.len() - 1) as u32)
            .collect();
        let last = Tensor::new(last.as_slice(), &dev)?;
        let h = x.reshape((b * t, c))?.index_select(&last, 0)?;
        let logits = self.head(&h)?.to_vec2::<f32>()?;
        let mut out = Vec::with_capacity(b);
        for (r, (p, l)) in prompts.iter().zip(logits).enumerate() {
            let layers = kv
                .iter()
                .map(|(k, v)| {
                    let cut = |x: &Tensor| -> Result<Tensor> {
                        Ok(x.narrow(0, r, 1)?.narrow(2, 0, p.len())?.contiguous()?)
                    };
                    Ok((cut(k)?, cut(v)?))
                })
                .collect::<Result<Vec<_>>>()?;
            out.push((
                SeqCache::Gpt2 {
                    layers,
                    len: p.len(),
                },
                l,
            ));
        }
        Ok(out)
    }

    /// One token for each row, every row continuing its own cache.
    pub fn step(&self, rows: &mut [(&mut SeqCache, u32)]) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.cfg;
        let b = rows.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let hd = c / nh;
        let dev = Device::Cpu;
        let mut ids = Vec::with_capacity(b);
        let mut pos = Vec::with_capacity(b);
        for (cache, id) in rows.iter() {
            let len = cache.len();
            attn::nn::check_positions(len + 1, cfg.n_positions)?;
            ids.push(*id);
            pos.push(len as u32);
        }
        let ids = Tensor::new(ids.as_slice(), &dev)?;
        let pos = Tensor::new(pos.as_slice(), &dev)?;
        let mut x = (self.wte.embedding(&ids)? + self.wpe.embedding(&pos)?)?; // [B, C]
        let scale = 1.0 / (hd as f64).sqrt();
        for (l, blk) in self.blocks.iter().enumerate() {
            let h = layer_norm(
                &x,
                &blk.ln_1.0,
                &blk.ln_1.1,
                cfg.layer_norm_epsilon,
                &Mode::Eval,
            )?;
            let qkv = conv1d(&h, &blk.c_attn.0, Some(&blk.c_attn.1))?; // [B, 3C]
            let mut ys = Vec::with_capacity(b);
            for (r, (cache, _)) in rows.iter_mut().enumerate() {
                let row = qkv.narrow(0, r, 1)?;
                let head = |i: usize| -> Result<Tensor> {
                    Ok(row.narrow(1, i * c, c)?.reshape((1, nh, 1, hd))?)
                };
                let (q, k, v) = (head(0)?, head(1)?, head(2)?);
                let SeqCache::Gpt2 { layers, .. } = &mut **cache else {
                    return Err(Error::invalid(
                        "cache",
                        "a library cache in the batched path",
                    ));
                };
                let (pk, pv) = &layers[l];
                let k = Tensor::cat(&[pk, &k], 2)?;
                let v = Tensor::cat(&[pv, &v], 2)?;
                let scores = (q.matmul(&k.transpose(D::Minus2, D::Minus1)?)? * scale)?;
                let w = softmax_last(&scores, &Mode::Eval)?;
                ys.push(w.matmul(&v)?.reshape((1, c))?);
                layers[l] = (k, v);
            }
            let y = Tensor::cat(&ys, 0)?;
            let y = conv1d(&y, &blk.attn_proj.0, Some(&blk.attn_proj.1))?;
            x = self.mlp(blk, (x + y)?)?;
        }
        for (cache, _) in rows.iter_mut() {
            if let SeqCache::Gpt2 { len, .. } = &mut **cache {
                *len += 1;
            }
        }
        Ok(self.head(&x)?.to_vec2::<f32>()?)
    }
}

fn causal_mask(t: usize, dev: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(m, (t, t), dev)?)
}

//! GPT-2 (Radford et al. 2019), as in Hugging Face's `GPT2LMHeadModel`:
//! learned token and position embeddings, pre-LayerNorm blocks of causal multi-head
//! self-attention and a 4×-wide GELU MLP with residual connections, a final LayerNorm,
//! and an output head tied to the token embedding.
//!
//! Linear layers are stored as GPT-2's `Conv1D`, weight `[in, out]`.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::nn::{causal_attention, conv1d, dropout, layer_norm, Init, KvCache, Mode, ParamBuilder};
use crate::{Error, Result};

fn default_eps() -> f64 {
    1e-5
}
fn default_pdrop() -> f32 {
    0.1
}
fn default_init_range() -> f64 {
    0.02
}
fn default_act() -> String {
    "gelu_new".into()
}
fn default_true() -> bool {
    true
}

/// The configuration, with HF GPT-2 `config.json` field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_pdrop")]
    pub resid_pdrop: f32,
    #[serde(default = "default_pdrop")]
    pub embd_pdrop: f32,
    #[serde(default = "default_pdrop")]
    pub attn_pdrop: f32,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

impl Gpt2Config {
    /// A config with GPT-2's defaults for everything but the shape.
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Gpt2Config {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: default_act(),
            resid_pdrop: default_pdrop(),
            embd_pdrop: default_pdrop(),
            attn_pdrop: default_pdrop(),
            layer_norm_epsilon: default_eps(),
            initializer_range: default_init_range(),
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    pub fn set_dropout(&mut self, p: f32) {
        self.resid_pdrop = p;
        self.embd_pdrop = p;
        self.attn_pdrop = p;
    }

    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Reject shapes that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        if self.n_embd % self.n_head != 0 {
            return Err(Error::invalid(
                "n_head",
                format!(
                    "n_embd {} is not divisible by n_head {}",
                    self.n_embd, self.n_head
                ),
            ));
        }
        for (name, p) in [
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
            ("attn_pdrop", self.attn_pdrop),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::invalid(name, format!("{p} is not in [0, 1)")));
            }
        }
        if !matches!(
            self.activation_function.as_str(),
            "gelu_new" | "gelu" | "gelu_pytorch_tanh" | "relu"
        ) {
            return Err(Error::invalid(
                "activation_function",
                format!(
                    "{:?} is not supported (gelu_new, gelu, gelu_pytorch_tanh, relu)",
                    self.activation_function
                ),
            ));
        }
        if !self.tie_word_embeddings {
            return Err(Error::invalid(
                "tie_word_embeddings",
                "untied GPT-2 heads are not supported",
            ));
        }
        crate::guard::positive_finite("layer_norm_epsilon", self.layer_norm_epsilon)?;
        Ok(())
    }

    /// The HF `config.json` content, with `model_type` and `architectures`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let o = v.as_object_mut().unwrap();
        o.insert("model_type".into(), "gpt2".into());
        o.insert(
            "architectures".into(),
            serde_json::json!(["GPT2LMHeadModel"]),
        );
        o.insert("n_ctx".into(), self.n_positions.into());
        o.insert("scale_attn_weights".into(), true.into());
        o.insert("use_cache".into(), true.into());
        v
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

/// A GPT-2 language model.
pub struct Gpt2 {
    pub config: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: (Tensor, Tensor),
}

impl Gpt2 {
    /// Build the model, taking every parameter from `pb`: GPT-2's initialisation
    /// (normal with std `initializer_range`, residual projections scaled by
    /// 1/√(2·n_layer), zero biases, unit norms) or the tensors of a checkpoint.
    pub fn new(config: Gpt2Config, pb: &mut ParamBuilder) -> Result<Self> {
        config.validate()?;
        let c = config.n_embd;
        let std = config.initializer_range;
        let proj_std = std / (2.0 * config.n_layer as f64).sqrt();
        let normal = Init::Normal { std };
        let wte = pb.get("transformer.wte.weight", &[config.vocab_size, c], normal)?;
        let wpe = pb.get("transformer.wpe.weight", &[config.n_positions, c], normal)?;
        let ln = |pb: &mut ParamBuilder, name: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                pb.get(&format!("{name}.weight"), &[c], Init::Ones)?,
                pb.get(&format!("{name}.bias"), &[c], Init::Zeros)?,
            ))
        };
        let lin = |pb: &mut ParamBuilder,
                   name: &str,
                   i: usize,
                   o: usize,
                   std: f64|
         -> Result<(Tensor, Tensor)> {
            Ok((
                pb.get(&format!("{name}.weight"), &[i, o], Init::Normal { std })?,
                pb.get(&format!("{name}.bias"), &[o], Init::Zeros)?,
            ))
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for l in 0..config.n_layer {
            let p = format!("transformer.h.{l}");
            blocks.push(Block {
                ln_1: ln(pb, &format!("{p}.ln_1"))?,
                c_attn: lin(pb, &format!("{p}.attn.c_attn"), c, 3 * c, std)?,
                attn_proj: lin(pb, &format!("{p}.attn.c_proj"), c, c, proj_std)?,
                ln_2: ln(pb, &format!("{p}.ln_2"))?,
                c_fc: lin(pb, &format!("{p}.mlp.c_fc"), c, config.inner(), std)?,
                mlp_proj: lin(pb, &format!("{p}.mlp.c_proj"), config.inner(), c, proj_std)?,
            });
            // Buffers that older transformers versions saved with the weights.
            pb.ignore(&format!("{p}.attn.bias"));
            pb.ignore(&format!("{p}.attn.masked_bias"));
        }
        let ln_f = ln(pb, "transformer.ln_f")?;
        pb.ignore("lm_head.weight");
        Ok(Gpt2 {
            config,
            wte,
            wpe,
            blocks,
            ln_f,
        })
    }

    fn act(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.config.activation_function.as_str() {
            "gelu" => x.gelu_erf()?,
            "relu" => x.relu()?,
            _ => crate::nn::gelu_tanh(x)?, // gelu_new / gelu_pytorch_tanh: the tanh approximation
        })
    }

    /// Logits `[B, T, vocab]` for token ids `[B, T]`. With a cache, the ids continue the
    /// cached positions and their keys and values are appended to it.
    pub fn forward(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let h = self.hidden(ids, cache.as_deref_mut(), mode)?;
        self.logits(&h)
    }

    /// The output head (tied to the token embedding) applied to hidden states `[B, T, C]`.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let (b, t, c) = h.dims3()?;
        let logits = crate::nn::linear(&h.reshape((b * t, c))?, &self.wte, None)?;
        Ok(logits.reshape((b, t, self.config.vocab_size))?)
    }

    /// The final hidden states `[B, T, C]` (after `ln_f`).
    pub fn hidden(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        crate::nn::check_positions(offset + t, cfg.n_positions)?;
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let hd = c / nh;
        let eps = cfg.layer_norm_epsilon;
        let pos = Tensor::arange(offset as u32, (offset + t) as u32, ids.device())?;
        let tok = self
            .wte
            .embedding(&ids.flatten_all()?)?
            .reshape((b, t, c))?;
        let x = tok.broadcast_add(&self.wpe.embedding(&pos)?)?;
        let mut x = dropout(&x, cfg.embd_pdrop, mode)?;
        for (l, blk) in self.blocks.iter().enumerate() {
            let h = layer_norm(&x, &blk.ln_1.0, &blk.ln_1.1, eps, mode)?;
            let qkv = conv1d(&h, &blk.c_attn.0, Some(&blk.c_attn.1))?;
            let heads = |i: usize| -> Result<Tensor> {
                Ok(qkv
                    .narrow(2, i * c, c)?
                    .reshape((b, t, nh, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
            let (k, v) = match cache.as_deref_mut() {
                Some(cache) => cache.append(l, &k, &v)?,
                None => (k, v),
            };
            let y = causal_attention(&q, &k, &v, cfg.attn_pdrop, mode)?;
            let y = y.transpose(1, 2)?.reshape((b, t, c))?;
            let y = conv1d(&y, &blk.attn_proj.0, Some(&blk.attn_proj.1))?;
            x = (x + dropout(&y, cfg.resid_pdrop, mode)?)?;
            let h = layer_norm(&x, &blk.ln_2.0, &blk.ln_2.1, eps, mode)?;
            let h = self.act(&conv1d(&h, &blk.c_fc.0, Some(&blk.c_fc.1))?)?;
            let h = conv1d(&h, &blk.mlp_proj.0, Some(&blk.mlp_proj.1))?;
            x = (x + dropout(&h, cfg.resid_pdrop, mode)?)?;
        }
        layer_norm(&x, &self.ln_f.0, &self.ln_f.1, eps, mode)
    }

    /// Mean next-token cross-entropy of `ids` `[B, T]` against `targets` `[B, T]`.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let logits = self.forward(ids, None, mode)?;
        let (b, t, v) = logits.dims3()?;
        crate::nn::cross_entropy(&logits.reshape((b * t, v))?, &targets.reshape(b * t)?)
    }

    pub fn dtype(&self) -> DType {
        self.wte.dtype()
    }
}

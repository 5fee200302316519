//! Llama-style decoders (Llama 2/3, Mistral-like shapes), as in Hugging Face's
//! `LlamaForCausalLM`: token embedding, pre-RMSNorm blocks of rotary-position attention
//! with grouped key/value heads and a SwiGLU MLP, a final RMSNorm and an output head
//! (tied to the embedding or not). Linear weights are `[out, in]` (PyTorch `nn.Linear`).

use candle_core::{DType, Tensor, D};
use serde::Deserialize;

use crate::nn::{causal_attention, linear, Init, KvCache, Mode, ParamBuilder};
use crate::{Error, Result};

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_act() -> String {
    "silu".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Older configs: `rope_theta` and `rope_scaling` at the top level.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5: `{"rope_theta": …, "rope_type": "default", …}`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        if self.kv_heads() == 0 || self.num_attention_heads % self.kv_heads() != 0 {
            return Err(Error::invalid(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.kv_heads(),
                    self.num_attention_heads
                ),
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(Error::invalid(
                "head_dim",
                format!("{} must be even for rotary positions", self.head_dim()),
            ));
        }
        if let Some(s) = &self.rope_scaling {
            if !s.is_null() {
                return Err(Error::invalid(
                    "rope_scaling",
                    format!("{s} is not supported yet"),
                ));
            }
        }
        if let Some(kind) = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_type"))
            .and_then(|v| v.as_str())
        {
            if kind != "default" {
                return Err(Error::invalid(
                    "rope_parameters.rope_type",
                    format!("{kind:?} is not supported yet (default)"),
                ));
            }
        }
        if self.hidden_act != "silu" {
            return Err(Error::invalid(
                "hidden_act",
                format!("{:?} is not supported (silu)", self.hidden_act),
            ));
        }
        crate::guard::positive_finite("rms_norm_eps", self.rms_norm_eps)?;
        if let Some(t) = self.rope_theta {
            crate::guard::positive_finite("rope_theta", t)?;
        }
        Ok(())
    }

    /// The rotary base: `rope_parameters.rope_theta`, else `rope_theta`, else 10000.
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .or(self.rope_theta)
            .unwrap_or_else(default_theta)
    }

    /// The first end-of-sequence id (`eos_token_id` may be a number or a list).
    pub fn eos(&self) -> Option<u32> {
        first_id(&self.eos_token_id)
    }

    pub fn bos(&self) -> Option<u32> {
        first_id(&self.bos_token_id)
    }
}

pub(crate) fn first_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    }
}

struct Layer {
    input_norm: Tensor,
    q: (Tensor, Option<Tensor>),
    k: (Tensor, Option<Tensor>),
    v: (Tensor, Option<Tensor>),
    o: (Tensor, Option<Tensor>),
    post_norm: Tensor,
    gate: (Tensor, Option<Tensor>),
    up: (Tensor, Option<Tensor>),
    down: (Tensor, Option<Tensor>),
}

pub struct Llama {
    pub config: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    /// Rotary tables `[max_positions, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
}

/// RMSNorm over the last dimension, computed in f32: x / √(mean(x²) + ε) · w.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf.broadcast_div(&(ms + eps)?.sqrt()?)?.to_dtype(dtype)?;
    Ok(y.broadcast_mul(w)?)
}

/// HF's rotate-half rotary embedding of `x` `[B, H, T, D]` at positions from `offset`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, offset: usize) -> Result<Tensor> {
    let (_, _, t, d) = x.dims4()?;
    let cos = cos.narrow(0, offset, t)?.to_dtype(x.dtype())?;
    let sin = sin.narrow(0, offset, t)?.to_dtype(x.dtype())?;
    // Duplicate [T, D/2] to [T, D] as HF's cat((freqs, freqs)).
    let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?;
    let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

/// Repeat each key/value head `n` times: `[B, KV, T, D]` → `[B, KV·n, T, D]`.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, n, t, d))?
        .reshape((b, kv * n, t, d))?)
}

impl Llama {
    pub fn new(config: LlamaConfig, pb: &mut ParamBuilder) -> Result<Self> {
        config.validate()?;
        let h = config.hidden_size;
        let (nh, nkv, hd) = (
            config.num_attention_heads,
            config.kv_heads(),
            config.head_dim(),
        );
        let normal = Init::Normal { std: 0.02 };
        let embed = pb.get("model.embed_tokens.weight", &[config.vocab_size, h], normal)?;
        let lin = |pb: &mut ParamBuilder,
                   name: &str,
                   o: usize,
                   i: usize,
                   bias: bool|
         -> Result<(Tensor, Option<Tensor>)> {
            let w = pb.get(&format!("{name}.weight"), &[o, i], normal)?;
            let b = if bias {
                Some(pb.get(&format!("{name}.bias"), &[o], Init::Zeros)?)
            } else {
                None
            };
            Ok((w, b))
        };
        let mut layers = vec![];
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let (ab, mb) = (config.attention_bias, config.mlp_bias);
            layers.push(Layer {
                input_norm: pb.get(&format!("{p}.input_layernorm.weight"), &[h], Init::Ones)?,
                q: lin(pb, &format!("{p}.self_attn.q_proj"), nh * hd, h, ab)?,
                k: lin(pb, &format!("{p}.self_attn.k_proj"), nkv * hd, h, ab)?,
                v: lin(pb, &format!("{p}.self_attn.v_proj"), nkv * hd, h, ab)?,
                o: lin(pb, &format!("{p}.self_attn.o_proj"), h, nh * hd, ab)?,
                post_norm: pb.get(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                    Init::Ones,
                )?,
                gate: lin(
                    pb,
                    &format!("{p}.mlp.gate_proj"),
                    config.intermediate_size,
                    h,
                    mb,
                )?,
                up: lin(
                    pb,
                    &format!("{p}.mlp.up_proj"),
                    config.intermediate_size,
                    h,
                    mb,
                )?,
                down: lin(
                    pb,
                    &format!("{p}.mlp.down_proj"),
                    h,
                    config.intermediate_size,
                    mb,
                )?,
            });
            pb.ignore(&format!("{p}.self_attn.rotary_emb.inv_freq"));
        }
        let norm = pb.get("model.norm.weight", &[h], Init::Ones)?;
        let lm_head = if config.tie_word_embeddings {
            pb.ignore("lm_head.weight");
            embed.clone()
        } else {
            pb.get("lm_head.weight", &[config.vocab_size, h], normal)?
        };
        let half = hd / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / config.theta().powf(2.0 * i as f64 / hd as f64))
            .collect();
        let n = config.max_position_embeddings;
        // The rotary tables are the one thing here sized by the config alone (not by a
        // tensor in the file): check their size before building them.
        crate::guard::check_memory(
            "max_position_embeddings (its rotary tables)",
            2.0 * n as f64 * half as f64 * 4.0,
        )?;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            for f in &inv_freq {
                // HF computes the angle in f32: pos (f32) * inv_freq (f32).
                let a = (pos as f32) * (*f as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let dev = embed.device().clone();
        Ok(Llama {
            cos: Tensor::from_vec(cos, (n, half), &dev)?,
            sin: Tensor::from_vec(sin, (n, half), &dev)?,
            config,
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// Final hidden states `[B, T, H]` (after the last RMSNorm).
    pub fn hidden(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        crate::nn::check_positions(offset + t, cfg.max_position_embeddings)?;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let mut x = self
            .embed
            .embedding(&ids.flatten_all()?)?
            .reshape((b, t, cfg.hidden_size))?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, cfg.rms_norm_eps)?;
            let heads = |p: &(Tensor, Option<Tensor>), n: usize| -> Result<Tensor> {
                Ok(linear(&h, &p.0, p.1.as_ref())?
                    .reshape((b, t, n, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = rope(&heads(&layer.q, nh)?, &self.cos, &self.sin, offset)?;
            let k = rope(&heads(&layer.k, nkv)?, &self.cos, &self.sin, offset)?;
            let v = heads(&layer.v, nkv)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(l, &k, &v)?,
                None => (k, v),
            };
            let k = repeat_kv(&k, nh / nkv)?.contiguous()?;
            let v = repeat_kv(&v, nh / nkv)?.contiguous()?;
            let y = causal_attention(&q.contiguous()?, &k, &v, 0.0, mode)?;
            let y = y.transpose(1, 2)?.reshape((b, t, nh * hd))?;
            x = (x + linear(&y, &layer.o.0, layer.o.1.as_ref())?)?;
            let h = rms_norm(&x, &layer.post_norm, cfg.rms_norm_eps)?;
            let g = linear(&h, &layer.gate.0, layer.gate.1.as_ref())?.silu()?;
            let u = linear(&h, &layer.up.0, layer.up.1.as_ref())?;
            x = (x + linear(&(g * u)?, &layer.down.0, layer.down.1.as_ref())?)?;
        }
        rms_norm(&x, &self.norm, cfg.rms_norm_eps)
    }

    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        linear(h, &self.lm_head, None)
    }
}

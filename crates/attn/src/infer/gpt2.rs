//! GPT-2 inference on the CPU without the tensor graph: weights in their product layout
//! (f32, f16, 8- or 4-bit blocks), a key/value cache per sequence that grows in place,
//! and one forward pass for a ragged batch of sequences (a prompt, one new token for each
//! of several sequences, or both at once).
//!
//! The arithmetic is that of [`crate::models::gpt2::Gpt2`] in evaluation mode; the tests
//! check the logits against it.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use super::attend::attend_head;
use super::quant::{matmul, QMatrix, WeightType};
use crate::checkpoint::{read_json, CONFIG, WEIGHTS};
use crate::models::gpt2::Gpt2Config;
use crate::{Error, Result};

struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Norm {
    /// Normalise each `w.len()`-long row of `x` into `out`.
    fn apply(&self, x: &[f32], out: &mut [f32], eps: f32) {
        let c = self.w.len();
        crate::nn::fused::for_rows(out, c, |start, out| {
            let x = &x[start * c..start * c + out.len()];
            for (xr, or) in x.chunks(c).zip(out.chunks_mut(c)) {
                super::vmath::layer_norm(xr, &self.w, &self.b, eps, or);
            }
        });
    }
}

struct Layer {
    ln_1: Norm,
    qkv: QMatrix,
    qkv_b: Vec<f32>,
    proj: QMatrix,
    proj_b: Vec<f32>,
    ln_2: Norm,
    fc: QMatrix,
    fc_b: Vec<f32>,
    out: QMatrix,
    out_b: Vec<f32>,
}

/// The keys and values of one sequence: per layer `[len, n_embd]`, heads side by side.
#[derive(Default)]
pub struct Gpt2State {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl Gpt2State {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget every position (the buffers are kept for reuse).
    pub fn clear(&mut self) {
        self.k
            .iter_mut()
            .chain(self.v.iter_mut())
            .for_each(Vec::clear);
        self.len = 0;
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.capacity() * 4).sum()
    }
}

/// Which positions' logits [`Gpt2Engine::forward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The last new position of each sequence: `[vocab]` each.
    Last,
    /// Every new position: `[t, vocab]` each.
    All,
    /// The final hidden states (after `ln_f`) of every new position: `[t, n_embd]` each.
    Hidden,
}

/// A GPT-2 model laid out for inference.
pub struct Gpt2Engine {
    pub config: Gpt2Config,
    /// Token embedding `[vocab, C]`, also the output head.
    wte: QMatrix,
    /// Position embedding `[n_positions, C]`.
    wpe: Vec<f32>,
    layers: Vec<Layer>,
    ln_f: Norm,
}

/// Tensors by name (without the `transformer.` prefix), as f32 with their shapes.
type Plain = HashMap<String, (Vec<f32>, Vec<usize>)>;

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::bad_file(path, msg.into())
}

/// Values of a safetensors tensor as f32 (from f32, f16 or bf16).
fn to_f32(path: &Path, name: &str, t: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    let b = t.data();
    let v: Vec<f32> = match t.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(bad(
                path,
                format!("tensor {name} has dtype {other:?}; expected f32, f16 or bf16"),
            ))
        }
    };
    crate::checkpoint::check_finite(path, name, &v)?;
    Ok(v)
}

impl Gpt2Engine {
    /// Load a GPT-2 folder (f32, f16 or bf16 weights, or one written by
    /// [`Gpt2Engine::save`]), storing its matrices as `ty` (default: as stored, f16 for
    /// f16/bf16 folders).
    pub fn load(dir: &Path, ty: Option<WeightType>) -> Result<Self> {
        let cfg_path = dir.join(CONFIG);
        let value = read_json(&cfg_path)?;
        let config: Gpt2Config = serde_json::from_value(value.clone())
            .map_err(|e| bad(&cfg_path, format!("not a GPT-2 config: {e}")))?;
        config
            .validate()
            .map_err(|e| bad(&cfg_path, e.to_string()))?;
        let path = dir.join(WEIGHTS);
        crate::checkpoint::check_weights_file(&path)?;
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(&path, format!("not a valid safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(&path, format!("not a valid safetensors file: {e}")))?;
        let stored = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(QUANT_KEY).cloned());
        if let Some(q) = stored {
            let qty = WeightType::parse(&q)
                .map_err(|_| bad(&path, format!("unknown {QUANT_KEY} {q:?}")))?;
            if let Some(t) = ty {
                if t != qty {
                    return Err(Error::invalid(
                        "dtype",
                        format!(
                            "the folder holds {} weights; it cannot be loaded as {}",
                            qty.name(),
                            t.name()
                        ),
                    ));
                }
            }
            return Self::from_quantized(config, &path, &st, qty);
        }
        let mut half_weights = false;
        let mut tensors = HashMap::new();
        for (name, t) in st.tensors() {
            if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
                continue;
            }
            half_weights |= matches!(
                t.dtype(),
                safetensors::Dtype::F16 | safetensors::Dtype::BF16
            );
            let key = name
                .strip_prefix("transformer.")
                .unwrap_or(&name)
                .to_string();
            tensors.insert(key, (to_f32(&path, &name, &t)?, t.shape().to_vec()));
        }
        let ty = ty.unwrap_or(if half_weights {
            WeightType::F16
        } else {
            WeightType::F32
        });
        Self::from_plain(config, &path, tensors, ty, None)
    }

    /// Build from the plain tensors `t` (vectors, and matrices unless `quantized` gives
    /// them by Hugging Face name and `[rows, cols]`).
    fn from_plain(
        config: Gpt2Config,
        path: &Path,
        mut t: Plain,
        ty: WeightType,
        quantized: Option<&dyn Fn(&str, usize, usize) -> Result<QMatrix>>,
    ) -> Result<Self> {
        let c = config.n_embd;
        let take = |t: &mut Plain, name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let (v, s) = t
                .remove(name)
                .ok_or_else(|| bad(path, format!("tensor transformer.{name} is missing")))?;
            if s != shape {
                return Err(bad(
                    path,
                    format!("tensor transformer.{name} has shape {s:?}, expected {shape:?}"),
                ));
            }
            Ok(v)
        };
        // Conv1D weights are [in, out]; products want [out, in].
        let linear = |t: &mut Plain, name: &str, i: usize, o: usize| -> Result<QMatrix> {
            if let Some(q) = quantized {
                return q(&format!("transformer.{name}"), o, i);
            }
            let v = take(t, name, &[i, o])?;
            QMatrix::from_f32(&transpose(&v, i, o), o, i, ty)
        };
        let inner = config.inner();
        // Grown layer by layer: n_layer comes from a file, and a wrong one is found at
        // its first missing tensor, before anything of its size exists.
        let mut layers = Vec::new();
        for l in 0..config.n_layer {
            let p = format!("h.{l}");
            let qkv = linear(&mut t, &format!("{p}.attn.c_attn.weight"), c, 3 * c)?;
            let proj = linear(&mut t, &format!("{p}.attn.c_proj.weight"), c, c)?;
            let fc = linear(&mut t, &format!("{p}.mlp.c_fc.weight"), c, inner)?;
            let out = linear(&mut t, &format!("{p}.mlp.c_proj.weight"), inner, c)?;
            let mut v = |n: &str, len: usize| take(&mut t, &format!("{p}.{n}"), &[len]);
            layers.push(Layer {
                ln_1: Norm {
                    w: v("ln_1.weight", c)?,
                    b: v("ln_1.bias", c)?,
                },
                qkv,
                qkv_b: v("attn.c_attn.bias", 3 * c)?,
                proj,
                proj_b: v("attn.c_proj.bias", c)?,
                ln_2: Norm {
                    w: v("ln_2.weight", c)?,
                    b: v("ln_2.bias", c)?,
                },
                fc,
                fc_b: v("mlp.c_fc.bias", inner)?,
                out,
                out_b: v("mlp.c_proj.bias", c)?,
            });
        }
        let wte = match quantized {
            Some(q) => q("transformer.wte.weight", config.vocab_size, c)?,
            None => QMatrix::from_f32(
                &take(&mut t, "wte.weight", &[config.vocab_size, c])?,
                config.vocab_size,
                c,
                ty,
            )?,
        };
        let wpe = take(&mut t, "wpe.weight", &[config.n_positions, c])?;
        let ln_f = Norm {
            w: take(&mut t, "ln_f.weight", &[c])?,
            b: take(&mut t, "ln_f.bias", &[c])?,
        };
        if !t.is_empty() {
            let mut names: Vec<String> = t.keys().map(|k| format!("transformer.{k}")).collect();
            names.sort();
            return Err(bad(
                path,
                format!(
                    "unexpected tensors (the config describes fewer layers or other shapes): {}",
                    names.join(", ")
                ),
            ));
        }
        Ok(Gpt2Engine {
            config,
            wte,
            wpe,
            layers,
            ln_f,
        })
    }

    /// The weight type of the matrices.
    pub fn weight_type(&self) -> WeightType {
        self.wte.weight_type()
    }

    /// Bytes of weights read to produce one token at batch 1: every matrix, one row of
    /// each embedding, the norms and biases.
    pub fn weight_bytes_per_token(&self) -> usize {
        let c = self.config.n_embd;
        let mut total = self.wte.bytes() + self.wte.weight_type().row_bytes(c) + 4 * c + 8 * c;
        for l in &self.layers {
            total += l.qkv.bytes() + l.proj.bytes() + l.fc.bytes() + l.out.bytes();
            total += 4 * (l.qkv_b.len() + l.proj_b.len() + l.fc_b.len() + l.out_b.len() + 4 * c);
        }
        total
    }

    pub fn new_state(&self) -> Gpt2State {
        Gpt2State {
            k: vec![Vec::new(); self.config.n_layer],
            v: vec![Vec::new(); self.config.n_layer],
            len: 0,
        }
    }

    fn act(&self, x: &mut [f32]) {
        let kind = self.config.activation_function.as_str();
        crate::nn::fused::for_rows(x, 1, |_, xs| match kind {
            "relu" => xs.iter_mut().for_each(|v| *v = v.max(0.0)),
            "gelu" => xs.iter_mut().for_each(|v| {
                *v =
                    0.5 * *v * (1.0 + candle_core::cpu::erf::erf_f32(*v / std::f32::consts::SQRT_2))
            }),
            _ => super::vmath::gelu_tanh(xs),
        });
    }

    /// Run new tokens through the model: `tokens[s]` continues sequence `states[s]` (any
    /// lengths, at least one token each). Returns per sequence what `want` asks for.
    pub fn forward(
        &self,
        states: &mut [&mut Gpt2State],
        tokens: &[&[u32]],
        want: Want,
    ) -> Result<Vec<Vec<f32>>> {
        self.run(states, tokens, want, None)
    }

    /// Attention weights of every layer and head for `ids` from an empty cache:
    /// `[layer][head][query][key]`, zero above the diagonal.
    pub fn attention_maps(&self, ids: &[u32]) -> Result<Vec<Vec<Vec<Vec<f32>>>>> {
        let mut st = self.new_state();
        let mut maps = Vec::with_capacity(self.config.n_layer);
        self.run(&mut [&mut st], &[ids], Want::Last, Some(&mut maps))?;
        Ok(maps)
    }

    fn run(
        &self,
        states: &mut [&mut Gpt2State],
        tokens: &[&[u32]],
        want: Want,
        mut maps: Option<&mut Vec<Vec<Vec<Vec<f32>>>>>,
    ) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.config;
        let capture = maps.is_some();
        if states.len() != tokens.len() {
            return Err(Error::invalid(
                "tokens",
                "one token list per sequence is needed",
            ));
        }
        for (st, t) in states.iter().zip(tokens) {
            if t.is_empty() {
                return Err(Error::invalid("tokens", "a sequence was given no tokens"));
            }
            crate::nn::check_positions(st.len + t.len(), cfg.n_positions)?;
            if let Some(&bad) = t.iter().find(|&&id| id as usize >= cfg.vocab_size) {
                return Err(Error::invalid(
                    "tokens",
                    format!("id {bad} is outside the vocabulary of {}", cfg.vocab_size),
                ));
            }
            if st.k.len() != cfg.n_layer {
                return Err(Error::invalid(
                    "state",
                    "was not made by this model's new_state",
                ));
            }
        }
        let c = cfg.n_embd;
        let nh = cfg.n_head;
        let hd = c / nh;
        let eps = cfg.layer_norm_epsilon as f32;
        let n: usize = tokens.iter().map(|t| t.len()).sum();
        // First row of each sequence in the batch.
        let mut first = Vec::with_capacity(tokens.len());
        let mut acc = 0;
        for t in tokens {
            first.push(acc);
            acc += t.len();
        }
        let mut x = vec![0f32; n * c];
        for (s, t) in tokens.iter().enumerate() {
            for (j, &id) in t.iter().enumerate() {
                let row = &mut x[(first[s] + j) * c..(first[s] + j + 1) * c];
                self.wte.row_to_f32(id as usize, row);
                let pos = states[s].len + j;
                for (o, p) in row.iter_mut().zip(&self.wpe[pos * c..(pos + 1) * c]) {
                    *o += p;
                }
            }
        }
        let inner = cfg.inner();
        let mut h = vec![0f32; n * c];
        let mut qkv = vec![0f32; n * 3 * c];
        let mut y = vec![0f32; n * c];
        let mut a = vec![0f32; n * c];
        let mut f = vec![0f32; n * inner];
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            layer.ln_1.apply(&x, &mut h, eps);
            matmul(&h, n, &layer.qkv, Some(&layer.qkv_b), &mut qkv);
            for (s, t) in tokens.iter().enumerate() {
                let st = &mut *states[s];
                for j in 0..t.len() {
                    let row = &qkv[(first[s] + j) * 3 * c..(first[s] + j + 1) * 3 * c];
                    st.k[l].extend_from_slice(&row[c..2 * c]);
                    st.v[l].extend_from_slice(&row[2 * c..]);
                }
            }
            // One task per (sequence, head): its queries against its own cache.
            let jobs: Vec<(usize, usize)> = (0..tokens.len())
                .flat_map(|s| (0..nh).map(move |hh| (s, hh)))
                .collect();
            let caches: Vec<(&[f32], &[f32], usize)> = states
                .iter()
                .map(|st| (st.k[l].as_slice(), st.v[l].as_slice(), st.len))
                .collect();
            let outs: Vec<(Vec<f32>, Vec<Vec<f32>>)> = jobs
                .par_iter()
                .map(|&(s, hh)| {
                    let (kc, vc, past) = caches[s];
                    let t = tokens[s].len();
                    let mut out = vec![0f32; t * hd];
                    let mut kept = Vec::new();
                    let q = &qkv[first[s] * 3 * c + hh * hd..];
                    let keep = if capture { Some(&mut kept) } else { None };
                    attend_head(
                        q,
                        3 * c,
                        &kc[hh * hd..],
                        &vc[hh * hd..],
                        c,
                        past,
                        t,
                        hd,
                        scale,
                        &mut out,
                        keep,
                    );
                    (out, kept)
                })
                .collect();
            if let Some(m) = maps.as_deref_mut() {
                m.push(outs.iter().map(|(_, kept)| kept.clone()).collect());
            }
            for (&(s, hh), (out, _)) in jobs.iter().zip(&outs) {
                for j in 0..tokens[s].len() {
                    y[(first[s] + j) * c + hh * hd..][..hd]
                        .copy_from_slice(&out[j * hd..(j + 1) * hd]);
                }
            }
            matmul(&y, n, &layer.proj, Some(&layer.proj_b), &mut a);
            x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
            layer.ln_2.apply(&x, &mut h, eps);
            matmul(&h, n, &layer.fc, Some(&layer.fc_b), &mut f);
            self.act(&mut f);
            matmul(&f, n, &layer.out, Some(&layer.out_b), &mut a);
            x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
        }
        for (st, t) in states.iter_mut().zip(tokens) {
            st.len += t.len();
        }
        // The rows asked for, normalised, then through the head.
        let rows: Vec<(usize, usize)> = match want {
            Want::Last => tokens
                .iter()
                .enumerate()
                .map(|(s, t)| (first[s] + t.len() - 1, 1))
                .collect(),
            _ => tokens
                .iter()
                .enumerate()
                .map(|(s, t)| (first[s], t.len()))
                .collect(),
        };
        let m: usize = rows.iter().map(|r| r.1).sum();
        let mut sel = Vec::with_capacity(m * c);
        for &(r, k) in &rows {
            sel.extend_from_slice(&x[r * c..(r + k) * c]);
        }
        let mut hs = vec![0f32; m * c];
        self.ln_f.apply(&sel, &mut hs, eps);
        let (width, out) = if want == Want::Hidden {
            (c, hs)
        } else {
            let mut logits = vec![0f32; m * cfg.vocab_size];
            matmul(&hs, m, &self.wte, None, &mut logits);
            (cfg.vocab_size, logits)
        };
        let mut res = Vec::with_capacity(rows.len());
        let mut at = 0;
        for &(_, k) in &rows {
            res.push(out[at * width..(at + k) * width].to_vec());
            at += k;
        }
        Ok(res)
    }

    /// Logits `[m, vocab]` for final hidden states `[m, n_embd]`.
    pub fn head(&self, hidden: &[f32]) -> Vec<f32> {
        let m = hidden.len() / self.config.n_embd;
        let mut logits = vec![0f32; m * self.config.vocab_size];
        matmul(hidden, m, &self.wte, None, &mut logits);
        logits
    }
}

/// Safetensors metadata key naming the block format of a quantized folder.
pub const QUANT_KEY: &str = "attn.quantization";

/// Suffixes of a quantized matrix's two tensors: codes and f16 scales.
const QS: &str = ".qs";
const SCALES: &str = ".scales";

/// The Hugging Face names of the matrices (Conv1D layout `[in, out]`), with their
/// `(in, out)` sizes, in the order of [`Gpt2Engine::matrices`].
fn matrix_names(cfg: &Gpt2Config) -> Vec<(String, usize, usize)> {
    let (c, inner) = (cfg.n_embd, cfg.inner());
    let mut v = Vec::new();
    for l in 0..cfg.n_layer {
        let p = format!("transformer.h.{l}");
        v.push((format!("{p}.attn.c_attn.weight"), c, 3 * c));
        v.push((format!("{p}.attn.c_proj.weight"), c, c));
        v.push((format!("{p}.mlp.c_fc.weight"), c, inner));
        v.push((format!("{p}.mlp.c_proj.weight"), inner, c));
    }
    v
}

impl Gpt2Engine {
    fn matrices(&self) -> Vec<&QMatrix> {
        self.layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.proj, &l.fc, &l.out])
            .collect()
    }

    /// The vectors (norms, biases, position embedding) under their Hugging Face names.
    fn vectors(&self) -> Vec<(String, &[f32], Vec<usize>)> {
        let c = self.config.n_embd;
        let mut v: Vec<(String, &[f32], Vec<usize>)> = Vec::new();
        v.push((
            "transformer.wpe.weight".into(),
            &self.wpe,
            vec![self.config.n_positions, c],
        ));
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            for (n, x) in [
                ("ln_1.weight", &l.ln_1.w),
                ("ln_1.bias", &l.ln_1.b),
                ("ln_2.weight", &l.ln_2.w),
                ("ln_2.bias", &l.ln_2.b),
                ("attn.c_attn.bias", &l.qkv_b),
                ("attn.c_proj.bias", &l.proj_b),
                ("mlp.c_fc.bias", &l.fc_b),
                ("mlp.c_proj.bias", &l.out_b),
            ] {
                v.push((format!("{p}.{n}"), x.as_slice(), vec![x.len()]));
            }
        }
        v.push(("transformer.ln_f.weight".into(), &self.ln_f.w, vec![c]));
        v.push(("transformer.ln_f.bias".into(), &self.ln_f.b, vec![c]));
        v
    }

    /// Write the model as a folder: `config.json` and `model.safetensors` (atomically,
    /// config last), plus every other file of `source_dir` (tokenizer, generation config).
    /// f32 and f16 folders use the Hugging Face layout and load in transformers; q8 and q4
    /// folders store each matrix as `NAME.qs` (codes, `[out, in]` or `[out, in/2]`) and
    /// `NAME.scales` (f16, `[out, in/32]`) and load in attn.
    pub fn save(&self, dir: &Path, source_dir: Option<&Path>) -> Result<()> {
        use super::quant::Data;
        use safetensors::tensor::TensorView;
        use safetensors::Dtype;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let ty = self.weight_type();
        let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut matrix = |name: &str, m: &QMatrix, hf_in_out: bool| {
            let (rows, cols) = (m.rows, m.cols);
            // f32 and f16 matrices in the Hugging Face layout: Conv1D weights `[in, out]`.
            let hf_shape = if hf_in_out {
                vec![cols, rows]
            } else {
                vec![rows, cols]
            };
            match &m.data {
                Data::F32(_) => {
                    let v = m.to_f32();
                    let bytes = if hf_in_out {
                        transpose(&v, rows, cols)
                    } else {
                        v
                    };
                    blobs.push((
                        name.into(),
                        Dtype::F32,
                        hf_shape,
                        bytes.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ));
                }
                Data::F16(v) => {
                    let bytes = if hf_in_out {
                        transpose(v, rows, cols)
                    } else {
                        v.clone()
                    };
                    blobs.push((
                        name.into(),
                        Dtype::F16,
                        hf_shape,
                        bytes.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ));
                }
                Data::Q8 { qs, d } => {
                    blobs.push((
                        format!("{name}{QS}"),
                        Dtype::I8,
                        vec![rows, cols],
                        qs.iter().map(|&q| q as u8).collect(),
                    ));
                    blobs.push((
                        format!("{name}{SCALES}"),
                        Dtype::F16,
                        vec![rows, cols / 32],
                        d.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ));
                }
                Data::Q4 { qs, d } => {
                    blobs.push((
                        format!("{name}{QS}"),
                        Dtype::U8,
                        vec![rows, cols / 2],
                        qs.clone(),
                    ));
                    blobs.push((
                        format!("{name}{SCALES}"),
                        Dtype::F16,
                        vec![rows, cols / 32],
                        d.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ));
                }
            }
        };
        matrix("transformer.wte.weight", &self.wte, false);
        for ((name, _, _), m) in matrix_names(&self.config).iter().zip(self.matrices()) {
            matrix(name, m, true);
        }
        for (name, v, shape) in self.vectors() {
            blobs.push((
                name,
                Dtype::F32,
                shape,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
        let views = blobs
            .iter()
            .map(|(n, dt, shape, b)| {
                TensorView::new(*dt, shape.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::invalid("weights", format!("{n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        if ty.is_quantized() {
            meta.insert(QUANT_KEY.to_string(), ty.name().to_string());
        }
        let path = dir.join(WEIGHTS);
        let bytes = safetensors::tensor::serialize(views, Some(meta))
            .map_err(|e| Error::bad_file(&path, format!("cannot serialise tensors: {e}")))?;
        crate::checkpoint::write_atomic(&path, &bytes)?;
        if let Some(src) = source_dir {
            let entries = std::fs::read_dir(src).map_err(|e| Error::io(src, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(src, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let skip = name == CONFIG
                    || name.starts_with("model") && name.contains(".safetensors")
                    || name.starts_with('.')
                    || name.ends_with(".bin")
                    || !entry.path().is_file();
                if !skip {
                    let bytes =
                        std::fs::read(entry.path()).map_err(|e| Error::io(&entry.path(), e))?;
                    crate::checkpoint::write_atomic(&dir.join(&*name), &bytes)?;
                }
            }
        }
        let mut config = self.config.to_hf_json();
        let o = config.as_object_mut().expect("config is an object");
        match ty {
            WeightType::F16 => {
                o.insert("torch_dtype".into(), "float16".into());
            }
            WeightType::Q8 | WeightType::Q4 => {
                o.insert(
                    "attn_quantization".into(),
                    serde_json::json!({"dtype": ty.name(), "block_size": super::quant::QK}),
                );
            }
            WeightType::F32 => {}
        }
        crate::checkpoint::write_json(&dir.join(CONFIG), &config)
    }

    fn from_quantized(
        config: Gpt2Config,
        path: &Path,
        st: &safetensors::SafeTensors<'_>,
        ty: WeightType,
    ) -> Result<Self> {
        use super::quant::Data;
        use safetensors::Dtype;
        let tensor = |name: &str, dtype: Dtype, shape: &[usize]| -> Result<Vec<u8>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(path, format!("tensor {name} is missing")))?;
            if t.dtype() != dtype || t.shape() != shape {
                return Err(bad(
                    path,
                    format!(
                        "tensor {name} is {:?} {:?}, expected {dtype:?} {shape:?}",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            Ok(t.data().to_vec())
        };
        let halves = |b: Vec<u8>| -> Vec<u16> {
            b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        let qmatrix = |name: &str, rows: usize, cols: usize| -> Result<QMatrix> {
            if cols % super::quant::QK != 0 {
                return Err(bad(
                    path,
                    format!("{name}: {cols} columns is not a multiple of 32"),
                ));
            }
            let d = halves(tensor(
                &format!("{name}{SCALES}"),
                Dtype::F16,
                &[rows, cols / 32],
            )?);
            let data = match ty {
                WeightType::Q8 => Data::Q8 {
                    qs: tensor(&format!("{name}{QS}"), Dtype::I8, &[rows, cols])?
                        .into_iter()
                        .map(|b| b as i8)
                        .collect(),
                    d,
                },
                _ => Data::Q4 {
                    qs: tensor(&format!("{name}{QS}"), Dtype::U8, &[rows, cols / 2])?,
                    d,
                },
            };
            Ok(QMatrix { rows, cols, data })
        };
        // Vectors are read through the plain path, matrices from their blocks.
        let mut plain: Plain = HashMap::new();
        for (name, t) in st.tensors() {
            if name.ends_with(QS) || name.ends_with(SCALES) {
                continue;
            }
            let key = name
                .strip_prefix("transformer.")
                .unwrap_or(&name)
                .to_string();
            plain.insert(key, (to_f32(path, &name, &t)?, t.shape().to_vec()));
        }
        Self::from_plain(config, path, plain, ty, Some(&qmatrix))
    }
}

fn transpose<T: Copy + Default>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

// ------------------------------------------------------------------ as a CausalLm

/// Run each row of `ids` `[B, T]` from an empty cache.
fn rows_of(ids: &candle_core::Tensor) -> Result<Vec<Vec<u32>>> {
    Ok(ids.to_dtype(candle_core::DType::U32)?.to_vec2::<u32>()?)
}

impl Gpt2Engine {
    fn whole(
        &self,
        ids: &candle_core::Tensor,
        cache: Option<&mut crate::nn::KvCache>,
        mode: &crate::nn::Mode,
        want: Want,
    ) -> Result<candle_core::Tensor> {
        if cache.is_some() {
            return Err(Error::invalid(
                "cache",
                "the inference engine keeps its own cache; decode through generate::session",
            ));
        }
        if mode.is_train() {
            return Err(Error::invalid(
                "mode",
                "the inference engine does not train; load the model for training instead",
            ));
        }
        let rows = rows_of(ids)?;
        let (b, t) = ids.dims2()?;
        let mut states: Vec<Gpt2State> = (0..b).map(|_| self.new_state()).collect();
        let mut refs: Vec<&mut Gpt2State> = states.iter_mut().collect();
        let toks: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        let out = self.forward(&mut refs, &toks, want)?;
        let width = out[0].len() / t;
        let flat: Vec<f32> = out.into_iter().flatten().collect();
        Ok(candle_core::Tensor::from_vec(
            flat,
            (b, t, width),
            ids.device(),
        )?)
    }
}

impl crate::models::CausalLm for Gpt2Engine {
    fn hidden(
        &self,
        ids: &candle_core::Tensor,
        cache: Option<&mut crate::nn::KvCache>,
        mode: &mut crate::nn::Mode,
    ) -> Result<candle_core::Tensor> {
        self.whole(ids, cache, mode, Want::Hidden)
    }
    fn logits(&self, h: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        let (b, t, _) = h.dims3()?;
        let flat = h
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let logits = self.head(&flat);
        Ok(candle_core::Tensor::from_vec(
            logits,
            (b, t, self.config.vocab_size),
            h.device(),
        )?)
    }
    fn forward(
        &self,
        ids: &candle_core::Tensor,
        cache: Option<&mut crate::nn::KvCache>,
        mode: &mut crate::nn::Mode,
    ) -> Result<candle_core::Tensor> {
        self.whole(ids, cache, mode, Want::All)
    }
    fn context(&self) -> usize {
        self.config.n_positions
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn n_layer(&self) -> usize {
        self.config.n_layer
    }
    fn bos(&self) -> Option<u32> {
        self.config.bos_token_id
    }
    fn eos(&self) -> Option<u32> {
        self.config.eos_token_id
    }
    fn native_session(&self) -> Option<Box<dyn crate::generate::Session + '_>> {
        Some(Box::new(EngineSession {
            engine: self,
            state: self.new_state(),
        }))
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

struct EngineSession<'a> {
    engine: &'a Gpt2Engine,
    state: Gpt2State,
}

impl crate::generate::Session for EngineSession<'_> {
    fn len(&self) -> usize {
        self.state.len()
    }
    fn clear(&mut self) {
        self.state.clear();
    }
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        Ok(self
            .engine
            .forward(&mut [&mut self.state], &[ids], Want::Last)?
            .remove(0))
    }
}

impl Gpt2Engine {
    /// Build from a tensor-graph model's parameters (Hugging Face names), storing the
    /// matrices as `ty`.
    pub fn from_params(
        config: Gpt2Config,
        params: &crate::nn::Params,
        ty: WeightType,
    ) -> Result<Self> {
        let mut plain: Plain = HashMap::new();
        for (name, t) in params.tensors() {
            let shape = t.dims().to_vec();
            let v = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let key = name
                .strip_prefix("transformer.")
                .unwrap_or(&name)
                .to_string();
            plain.insert(key, (v, shape));
        }
        Self::from_plain(config, Path::new("(parameters)"), plain, ty, None)
    }
}

impl Gpt2Engine {
    /// Generate after each prompt, all sequences advancing together: one forward pass
    /// per step for every sequence still running (a sequence leaves the batch at the
    /// model's end-of-text id or after `max_new_tokens`). Sequence `i` samples with seed
    /// `sampling.seed + i`, so its tokens are those of decoding it alone with that seed.
    pub fn generate_batch(
        &self,
        prompts: &[&[u32]],
        max_new_tokens: usize,
        sampling: &crate::generate::SamplingConfig,
    ) -> Result<Vec<(Vec<u32>, crate::generate::FinishReason)>> {
        use crate::generate::{FinishReason, Sampler, SamplingConfig};
        sampling.validate()?;
        let ctx = self.config.n_positions;
        for p in prompts {
            if p.is_empty() || p.len() + max_new_tokens > ctx {
                return Err(Error::invalid(
                    "prompt",
                    format!(
                        "has {} tokens; with {max_new_tokens} new ones it needs between 1 and the context of {ctx}",
                        p.len()
                    ),
                ));
            }
        }
        let eos = if sampling.ignore_eos {
            None
        } else {
            self.config.eos_token_id
        };
        let mut states: Vec<Gpt2State> = prompts.iter().map(|_| self.new_state()).collect();
        let mut samplers: Vec<Sampler> = (0..prompts.len())
            .map(|i| {
                let cfg = SamplingConfig {
                    seed: sampling.seed.wrapping_add(i as u64),
                    ..sampling.clone()
                };
                Sampler::new(cfg, self.config.vocab_size)
            })
            .collect();
        // Each sequence's prompt and tokens so far (the sampler's repetition history).
        let mut history: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
        let mut finish = vec![FinishReason::Length; prompts.len()];
        let mut logits = {
            let mut refs: Vec<&mut Gpt2State> = states.iter_mut().collect();
            self.forward(&mut refs, prompts, Want::Last)?
        };
        // Indices of the sequences still decoding, ascending; logits[k] is running[k]'s.
        let mut running: Vec<usize> = (0..prompts.len()).collect();
        loop {
            let mut feed = Vec::with_capacity(running.len());
            running = running
                .iter()
                .zip(logits.iter_mut())
                .filter_map(|(&i, l)| {
                    let id = samplers[i].sample(l, &history[i]);
                    if Some(id) == eos {
                        finish[i] = FinishReason::EndOfText;
                        return None;
                    }
                    history[i].push(id);
                    (history[i].len() - prompts[i].len() < max_new_tokens).then(|| {
                        feed.push([id]);
                        i
                    })
                })
                .collect();
            if running.is_empty() {
                break;
            }
            let mut refs: Vec<&mut Gpt2State> = states
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| running.binary_search(i).is_ok())
                .map(|(_, st)| st)
                .collect();
            let toks: Vec<&[u32]> = feed.iter().map(|f| f.as_slice()).collect();
            logits = self.forward(&mut refs, &toks, Want::Last)?;
        }
        let out = history
            .into_iter()
            .zip(prompts)
            .zip(finish)
            .map(|((h, p), f)| (h[p.len()..].to_vec(), f))
            .collect();
        Ok(out)
    }
}

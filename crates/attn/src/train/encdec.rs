//! The encoder-decoder families the trainer runs, behind one type: what the
//! sequence-to-sequence tasks (translation, summarization, span-corruption
//! pre-training) need from a model, whichever family it is.

use std::path::Path;

use super::fit::Trainable;
use super::optimizer::AdamWConfig;
use super::seq2seq::NativeSeq2Seq;
use super::t5::NativeT5;
use crate::engine::io::Plain;
use crate::engine::sublayers::Scratch;
use crate::kernels::cpu as k;
use crate::models::marian::MarianConfig;
use crate::models::t5::T5Config;
use crate::{Error, Result};

/// A Marian or T5 model with its gradients and optimizer state.
pub enum EncDecModel {
    Marian(NativeSeq2Seq),
    T5(NativeT5),
}

macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            EncDecModel::Marian($m) => $e,
            EncDecModel::T5($m) => $e,
        }
    };
}

impl EncDecModel {
    /// Load a `marian` or `t5` folder for training.
    pub fn load(dir: &Path) -> Result<Self> {
        match Self::type_of(dir)? {
            "t5" => Ok(EncDecModel::T5(NativeT5::load(dir)?)),
            _ => Ok(EncDecModel::Marian(NativeSeq2Seq::load(dir)?)),
        }
    }

    /// The `model_type` of the folder `dir` when it is one this trains (`t5` or
    /// `marian`), else the error naming what it is: for checking a `--model` before
    /// anything is written.
    pub fn type_of(dir: &Path) -> Result<&'static str> {
        let path = dir.join(crate::checkpoint::CONFIG);
        let cfg = crate::checkpoint::read_json(&path)?;
        match cfg.get("model_type").and_then(|v| v.as_str()) {
            Some("t5") => Ok("t5"),
            Some("marian") => Ok("marian"),
            other => Err(Error::bad_file(
                path,
                crate::engine::seq2seq::not_seq2seq(other, "trains"),
            )),
        }
    }

    pub fn new_marian(config: MarianConfig, seed: u64) -> Result<Self> {
        Ok(EncDecModel::Marian(NativeSeq2Seq::init(config, seed)?))
    }

    pub fn new_t5(config: T5Config, seed: u64) -> Result<Self> {
        Ok(EncDecModel::T5(NativeT5::init(config, seed)?))
    }

    /// Sets the dropout probability of the next training steps (T5's `dropout_rate`,
    /// Marian's `dropout`), which the saved config then carries: fine-tuning takes the
    /// `--dropout` asked for, not whatever the loaded folder was trained with (a model
    /// pre-trained without dropout would otherwise be fine-tuned without it too).
    pub fn set_dropout(&mut self, p: f32) {
        match self {
            EncDecModel::Marian(m) => m.config.dropout = p,
            EncDecModel::T5(m) => m.config.dropout_rate = p,
        }
    }

    /// `marian` or `t5`.
    pub fn model_type(&self) -> &'static str {
        match self {
            EncDecModel::Marian(_) => "marian",
            EncDecModel::T5(_) => "t5",
        }
    }

    pub fn to_engine(&self) -> Result<crate::engine::Seq2Seq> {
        each!(self, m => m.to_engine())
    }

    pub fn count(&self) -> usize {
        each!(self, m => m.count())
    }

    pub fn tensors(&self) -> Plain {
        each!(self, m => m.tensors())
    }

    /// The Hugging Face `config.json`.
    pub fn hf_config(&self) -> serde_json::Value {
        match self {
            EncDecModel::Marian(m) => m.config.to_hf_json(),
            EncDecModel::T5(m) => m.config.to_hf_json(),
        }
    }

    /// (pad, end-of-sentence, decoder start) ids.
    pub fn special_ids(&self) -> (u32, u32, u32) {
        match self {
            EncDecModel::Marian(m) => {
                let c = &m.config;
                (c.pad_token_id, c.eos_token_id, c.decoder_start_token_id)
            }
            EncDecModel::T5(m) => {
                let c = &m.config;
                (c.pad_token_id, c.eos_token_id, c.decoder_start_token_id)
            }
        }
    }

    /// The longest sequence its positions allow (`None`: relative positions).
    pub fn context(&self) -> Option<usize> {
        match self {
            EncDecModel::Marian(m) => Some(m.config.max_position_embeddings),
            EncDecModel::T5(_) => None,
        }
    }
}

/// A batch of (source, target) pairs.
pub type Pairs<'a> = &'a [(&'a [u32], &'a [u32])];

/// Training and evaluation passes over a batch of (source, target) pairs, both ending
/// with end-of-sentence: the decoder reads the start token and the target without its
/// last token, and the loss is the mean (label-smoothed) loss over the batch's target
/// tokens. With a dropout seed, the config's dropout applies.
pub trait PairTrainer {
    /// The loss, after adding its gradient to the accumulated gradients when
    /// `backward`.
    fn pass(&mut self, pairs: Pairs, smooth: f64, seed: Option<u64>, backward: bool)
        -> Result<f64>;

    /// Forward and backward: adds the loss's gradient, returns the loss.
    fn forward_backward(&mut self, pairs: Pairs, smooth: f64, seed: Option<u64>) -> Result<f64> {
        self.pass(pairs, smooth, seed, true)
    }

    /// The loss alone (no gradients).
    fn loss(&mut self, pairs: Pairs, smooth: f64, seed: Option<u64>) -> Result<f64> {
        self.pass(pairs, smooth, seed, false)
    }
}

/// What a family's trainer gives [`PairTrainer`]: its checks, dropout, forward pass (the
/// saved activations, the logits and the targets) and backward pass.
pub(crate) trait Passes: Send {
    type Saved: Send;
    type Drops: Copy + Send + Sync;
    fn vocab(&self) -> usize;
    fn check(&self, pairs: Pairs) -> Result<()>;
    fn drops(&self, seed: Option<u64>) -> Self::Drops;
    /// The saved activations, the logits and the targets.
    fn forward(&self, pairs: Pairs, drops: Self::Drops, scratch: &mut Scratch) -> Forward<Self>;
    fn backward(&mut self, pairs: Pairs, fwd: Forward<Self>, d: Self::Drops, s: &mut Scratch);
    /// Return a forward pass's buffers to the pool (no backward pass follows).
    fn give(saved: Self::Saved, scratch: &mut Scratch);
    fn scratch(&mut self) -> &mut Scratch;
}

/// A forward pass's saved activations, logits (the loss's gradient after it) and targets.
pub(crate) type Forward<M> = (<M as Passes>::Saved, Vec<f32>, Vec<u32>);

impl<M: Passes> PairTrainer for M {
    fn pass(
        &mut self,
        pairs: Pairs,
        smooth: f64,
        seed: Option<u64>,
        backward: bool,
    ) -> Result<f64> {
        self.check(pairs)?;
        let drops = self.drops(seed);
        let mut scratch = std::mem::take(self.scratch());
        let vocab = self.vocab();
        let loss = k::in_pool(|| {
            let (saved, mut logits, targets) = self.forward(pairs, drops, &mut scratch);
            let ntok = targets.len();
            let loss = k::smoothed_cross_entropy(
                &mut logits,
                vocab,
                &targets,
                smooth as f32,
                backward.then_some(1.0 / ntok as f32),
            ) / ntok as f64;
            if backward {
                self.backward(pairs, (saved, logits, targets), drops, &mut scratch);
            } else {
                M::give(saved, &mut scratch);
                scratch.pool.give(logits);
            }
            loss
        });
        *self.scratch() = scratch;
        Ok(loss)
    }
}

impl PairTrainer for EncDecModel {
    fn pass(
        &mut self,
        pairs: Pairs,
        smooth: f64,
        seed: Option<u64>,
        backward: bool,
    ) -> Result<f64> {
        each!(self, m => m.pass(pairs, smooth, seed, backward))
    }
}

impl Trainable for EncDecModel {
    fn zero_grads(&mut self) {
        each!(self, m => m.zero_grads())
    }
    fn grad_norm(&self) -> f64 {
        each!(self, m => m.grad_norm())
    }
    fn adamw_step(&mut self, config: &AdamWConfig, lr: f64, grad_scale: f64) {
        each!(self, m => m.adamw_step(config, lr, grad_scale))
    }
    fn moments(&self) -> Plain {
        each!(self, m => m.moments())
    }
    fn load_moments(&mut self, moments: Plain, t: usize) -> Result<()> {
        each!(self, m => m.load_moments(moments, t))
    }
    fn trainable_count(&self) -> usize {
        each!(self, m => m.trainable_count())
    }
}

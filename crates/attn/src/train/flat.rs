//! A model's tensors for a training step on the engine: parameters, gradients and AdamW
//! moments in flat buffers, each tensor a range of them under its Hugging Face name.
//! Tensors before `trainable_from` are frozen (LoRA): they keep no moments and AdamW
//! leaves them alone.

use crate::engine::io::Plain;
use crate::kernels::cpu as k;
use crate::kernels::cpu::huge::HugeVec;
use crate::train::optimizer::AdamWConfig;
use crate::{Error, Result};

/// A model's tensors drawn afresh, in `schema`'s order (name, shape, how to draw): each
/// value is `value(how, rng)`, with one generator seeded by `seed` for all of them.
pub(crate) fn draw<I: Copy>(
    schema: Vec<(String, Vec<usize>, I)>,
    seed: u64,
    value: impl Fn(I, &mut crate::rng::Rng) -> f32,
) -> Result<Plain> {
    let mut rng = crate::rng::Rng::new(seed);
    let mut plain = Plain::new();
    for (name, shape, how) in schema {
        let len: usize = shape.iter().product();
        let mut v = crate::guard::try_filled(&name, len, 0f32)?;
        v.iter_mut().for_each(|x| *x = value(how, &mut rng));
        plain.insert(name, (v, shape));
    }
    Ok(plain)
}

/// The tensors of the model folder `dir`, less the copies `copy` names (tied weights
/// written twice), for `from_plain` (whose error is reported against the weights file).
pub(crate) fn read_folder<M>(
    dir: &std::path::Path,
    copy: impl Fn(&str) -> bool,
    from_plain: impl FnOnce(Plain) -> Result<M>,
) -> Result<M> {
    let (files, blobs) = crate::engine::io::read_weight_files(dir)?;
    let (tensors, _) = crate::engine::io::plain_tensors(&files, &blobs, |name| {
        (!copy(name)).then(|| name.to_string())
    })?;
    from_plain(tensors)
        .map_err(|e| Error::bad_file(dir.join(crate::checkpoint::WEIGHTS), e.to_string()))
}

/// A config's layer count checked against the tensors of a folder before anything is
/// built per layer: every layer has tensors of its own (`first(l)` names one of layer
/// `l`'s), so more layers than the folder has tensors, or a last layer that is absent,
/// means tensors are missing. The schemas list every layer's tensors before they are
/// looked up, and a config declaring a million layers would otherwise have them
/// listed (gigabytes of names) before the first lookup failed.
pub(crate) fn layers_present(
    t: &Plain,
    layers: usize,
    first: impl Fn(usize) -> String,
) -> Result<()> {
    if layers == 0 || (layers <= t.len() && t.contains_key(&first(layers - 1))) {
        return Ok(());
    }
    // At most t.len() + 1 names are tried: that many distinct names cannot all be there.
    let l = (0..layers.min(t.len() + 1))
        .find(|&l| !t.contains_key(&first(l)))
        .unwrap_or(layers - 1);
    Err(Error::Model(format!(
        "tensor {} is missing (the config declares {layers} layers)",
        first(l)
    )))
}

pub(crate) struct Flat {
    /// (name, offset, shape) of every tensor, in buffer order.
    pub tensors: Vec<(String, usize, Vec<usize>)>,
    pub params: Vec<f32>,
    /// The gradients and the moments of the trainable tail, in buffers advised as huge
    /// pages (AdamW streams all four once a step; small pages cost a TLB miss every 4
    /// KiB and, on first touch, a fault and a TLB shootdown per page).
    pub grads: HugeVec<f32>,
    pub m: HugeVec<f32>,
    pub v: HugeVec<f32>,
    /// AdamW updates applied.
    pub t: usize,
    pub trainable_from: usize,
}

impl Flat {
    /// Buffers holding the tensors `schema` names (in its order, with its shapes), taken
    /// from `t`, every one trainable; also each tensor's offset by name. A tensor
    /// missing, of another shape, or left over in `t` is an error.
    pub fn from_schema(
        schema: impl IntoIterator<Item = (String, Vec<usize>)>,
        mut t: Plain,
    ) -> Result<(Self, std::collections::HashMap<String, usize>)> {
        let mut tensors = Vec::new();
        let mut params = Vec::new();
        let mut at = std::collections::HashMap::new();
        for (name, shape) in schema {
            let (vals, s) = t
                .remove(&name)
                .ok_or_else(|| Error::Model(format!("tensor {name} is missing")))?;
            if s != shape {
                return Err(Error::Model(format!(
                    "tensor {name} has shape {s:?}, expected {shape:?}"
                )));
            }
            at.insert(name.clone(), params.len());
            params.extend_from_slice(&vals);
            tensors.push((name, params.len() - vals.len(), shape));
        }
        if !t.is_empty() {
            let mut left: Vec<&str> = t.keys().map(|s| s.as_str()).collect();
            left.sort_unstable();
            return Err(Error::Model(format!(
                "unexpected tensors (the config describes fewer layers or other shapes): {}",
                left.join(", ")
            )));
        }
        Ok((Flat::new(tensors, params, 0), at))
    }

    /// Buffers for `params` (laid out as `tensors` says), trainable from
    /// `trainable_from`.
    pub fn new(
        tensors: Vec<(String, usize, Vec<usize>)>,
        params: Vec<f32>,
        trainable_from: usize,
    ) -> Self {
        let n = params.len();
        Flat {
            tensors,
            grads: HugeVec::zeroed_rounded(n),
            m: HugeVec::zeroed_rounded(n - trainable_from),
            v: HugeVec::zeroed_rounded(n - trainable_from),
            params,
            t: 0,
            trainable_from,
        }
    }

    /// Offset and length of the tensor `name`.
    fn range(&self, name: &str) -> Option<(usize, usize)> {
        let (_, at, shape) = self.tensors.iter().find(|(n, _, _)| n == name)?;
        Some((*at, shape.iter().product()))
    }

    pub fn gradient(&self, name: &str) -> Option<&[f32]> {
        let (at, len) = self.range(name)?;
        Some(&self.grads[at..at + len])
    }

    pub fn param(&self, name: &str) -> Option<&[f32]> {
        let (at, len) = self.range(name)?;
        Some(&self.params[at..at + len])
    }

    /// Element `i` of the tensor `name`, to change (finite-difference tests).
    pub fn param_mut(&mut self, name: &str, i: usize) -> Option<&mut f32> {
        let (at, len) = self.range(name)?;
        (i < len).then(|| &mut self.params[at + i])
    }

    /// Every tensor's name and shape, in buffer order.
    pub fn names(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.tensors
            .iter()
            .map(|(n, _, s)| (n.as_str(), s.as_slice()))
    }

    pub fn zero_grads(&mut self) {
        self.grads.iter_mut().for_each(|g| *g = 0.0);
    }

    /// Every tensor by name.
    pub fn tensors(&self) -> Plain {
        self.tensors
            .iter()
            .map(|(name, at, shape)| {
                let len: usize = shape.iter().product();
                (
                    name.clone(),
                    (self.params[*at..at + len].to_vec(), shape.clone()),
                )
            })
            .collect()
    }

    /// One AdamW update of the trainable tensors with the accumulated gradients times
    /// `grad_scale`; matrices and embedding tables are decayed, vectors (biases, norms,
    /// a `[1, n]` bias row) are not.
    pub fn adamw_step(&mut self, config: &AdamWConfig, lr: f64, grad_scale: f64) {
        self.t += 1;
        let from = self.trainable_from;
        let segments: Vec<(usize, usize, bool)> = self
            .tensors
            .iter()
            .filter(|(_, at, _)| *at >= from)
            .map(|(_, at, shape)| {
                let len: usize = shape.iter().product();
                (at - from, at - from + len, shape.len() >= 2 && shape[0] > 1)
            })
            .collect();
        let (params, grads, m, v) = (
            &mut self.params[from..],
            &mut self.grads[from..],
            &mut self.m,
            &mut self.v,
        );
        let step = config.kernel_step(self.t, lr, grad_scale);
        k::in_pool(|| k::adamw(params, grads, m, v, &segments, step, false));
    }

    /// √Σ g² over the trainable tensors' gradients.
    pub fn grad_norm(&self) -> f64 {
        k::sum_squares(&self.grads[self.trainable_from..]).sqrt()
    }

    /// The AdamW moments of the trainable tensors by name (`exp_avg.NAME`,
    /// `exp_avg_sq.NAME`, PyTorch's names), for a checkpoint.
    pub fn moments(&self) -> Plain {
        let mut out = Plain::new();
        for (name, at, shape) in &self.tensors {
            if *at < self.trainable_from {
                continue;
            }
            let (at, len) = (at - self.trainable_from, shape.iter().product::<usize>());
            for (kind, buf) in [("exp_avg", &self.m), ("exp_avg_sq", &self.v)] {
                out.insert(
                    format!("{kind}.{name}"),
                    (buf[at..at + len].to_vec(), shape.clone()),
                );
            }
        }
        out
    }

    /// Restore the moments [`Self::moments`] gave, after `t` updates.
    pub fn load_moments(&mut self, mut moments: Plain, t: usize) -> Result<()> {
        for (name, at, shape) in &self.tensors {
            if *at < self.trainable_from {
                continue;
            }
            let (at, len) = (at - self.trainable_from, shape.iter().product::<usize>());
            for (kind, buf) in [("exp_avg", &mut self.m), ("exp_avg_sq", &mut self.v)] {
                let key = format!("{kind}.{name}");
                let (vals, s) = moments
                    .remove(&key)
                    .ok_or_else(|| Error::Model(format!("optimizer state {key} is missing")))?;
                if &s != shape {
                    return Err(Error::Model(format!(
                        "optimizer state {key} has shape {s:?}, expected {shape:?}"
                    )));
                }
                buf[at..at + len].copy_from_slice(&vals);
            }
        }
        if let Some(left) = moments.keys().next() {
            return Err(Error::Model(format!(
                "optimizer state {left} belongs to no trained tensor"
            )));
        }
        self.t = t;
        Ok(())
    }
}

/// A model's accessors to the [`Flat`] in its `flat` field (inside its `impl`): its
/// parameter count, gradients and parameters by name, and its tensors.
macro_rules! flat_accessors {
    () => {
        /// Number of parameters.
        pub fn count(&self) -> usize {
            self.flat.params.len()
        }

        pub fn gradient(&self, name: &str) -> Option<&[f32]> {
            self.flat.gradient(name)
        }

        pub fn param(&self, name: &str) -> Option<&[f32]> {
            self.flat.param(name)
        }

        /// Element `i` of the tensor `name`, to change (finite-difference tests).
        pub fn param_mut(&mut self, name: &str, i: usize) -> Option<&mut f32> {
            self.flat.param_mut(name, i)
        }

        pub fn names(&self) -> impl Iterator<Item = (&str, &[usize])> {
            self.flat.names()
        }

        /// Tensors by name, for saving and for the inference engine.
        pub fn tensors(&self) -> $crate::engine::io::Plain {
            self.flat.tensors()
        }
    };
}
pub(crate) use flat_accessors;

/// [`super::fit::Trainable`] for a model whose buffers are a [`Flat`] in its `flat` field.
macro_rules! trainable_by_flat {
    ($t:ty) => {
        impl $crate::train::fit::Trainable for $t {
            fn zero_grads(&mut self) {
                self.flat.zero_grads()
            }
            fn grad_norm(&self) -> f64 {
                self.flat.grad_norm()
            }
            fn adamw_step(
                &mut self,
                config: &$crate::train::optimizer::AdamWConfig,
                lr: f64,
                grad_scale: f64,
            ) {
                self.flat.adamw_step(config, lr, grad_scale)
            }
            fn moments(&self) -> $crate::engine::io::Plain {
                self.flat.moments()
            }
            fn load_moments(
                &mut self,
                moments: $crate::engine::io::Plain,
                t: usize,
            ) -> $crate::Result<()> {
                self.flat.load_moments(moments, t)
            }
            fn trainable_count(&self) -> usize {
                self.flat.params.len() - self.flat.trainable_from
            }
        }
    };
}
pub(crate) use trainable_by_flat;

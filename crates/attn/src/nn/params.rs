//! Named parameters: created with a chosen initialisation or loaded from a checkpoint,
//! kept in name order so that iteration (and therefore training) is deterministic.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};

use crate::rng::Rng;
use crate::{Error, Result};

/// How a new parameter is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Zeros,
    Ones,
    Normal { std: f64 },
}

/// How many missing or wrongly shaped tensors a load lists before it gives up.
pub const MAX_PROBLEMS: usize = 12;

/// The trainable parameters of a model, by name (HF tensor names).
#[derive(Debug, Default, Clone)]
pub struct Params {
    vars: BTreeMap<String, Var>,
}

impl Params {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The parameters whose names satisfy `keep`.
    pub fn filter(&self, keep: impl Fn(&str) -> bool) -> Params {
        Params {
            vars: self
                .vars
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Total number of scalars.
    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// The tensors by name, for saving.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }
}

enum Source {
    Init(Rng),
    Load(HashMap<String, Tensor>),
}

/// Hands out parameters to a model's constructor, either freshly initialised or looked
/// up in a loaded checkpoint (checking shapes, and afterwards that nothing was left over).
type NamePredicate = Box<dyn Fn(&str) -> bool>;

pub struct ParamBuilder {
    source: Source,
    /// When loading: parameters absent from the checkpoint that may be created fresh
    /// (a new classification head, LoRA adapters), with the generator to draw them.
    init_missing: Option<(Rng, NamePredicate)>,
    /// Parameters handed out detached: they are saved but get no gradient.
    frozen: Option<NamePredicate>,
    device: Device,
    dtype: DType,
    params: Params,
    missing: Vec<String>,
    wrong_shape: Vec<String>,
}

impl ParamBuilder {
    /// Fresh parameters drawn from `rng`.
    pub fn init(rng: Rng, device: &Device) -> Self {
        Self::with_source(Source::Init(rng), device)
    }

    /// Parameters taken from `tensors` (for example the content of `model.safetensors`).
    pub fn load(tensors: HashMap<String, Tensor>, device: &Device) -> Self {
        Self::with_source(Source::Load(tensors), device)
    }

    /// When loading, create the parameters for which `allowed` is true if the checkpoint
    /// lacks them, drawing from `rng`.
    pub fn init_missing(mut self, rng: Rng, allowed: impl Fn(&str) -> bool + 'static) -> Self {
        self.init_missing = Some((rng, Box::new(allowed)));
        self
    }

    /// Hand out the parameters for which `frozen` is true without gradient tracking.
    pub fn freeze(mut self, frozen: impl Fn(&str) -> bool + 'static) -> Self {
        self.frozen = Some(Box::new(frozen));
        self
    }

    /// Keep parameters in `dtype` (f32 by default; f64 for gradient checks).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    fn with_source(source: Source, device: &Device) -> Self {
        ParamBuilder {
            source,
            init_missing: None,
            frozen: None,
            device: device.clone(),
            dtype: DType::F32,
            params: Params::default(),
            missing: vec![],
            wrong_shape: vec![],
        }
    }

    /// The parameter `name` of shape `shape`. Problems with a loaded checkpoint are
    /// collected and reported together by [`ParamBuilder::finish`]; until then a
    /// placeholder of the right shape is returned that allocates nothing (a zero
    /// broadcast), so that a config declaring absurd sizes costs no memory. Past
    /// [`MAX_PROBLEMS`] problems the build stops at once (a config with a million layers
    /// is refused at its first missing layer, not after listing them all).
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let fresh = |rng: &mut Rng, device: &Device, dtype: DType| -> Result<Tensor> {
            let n = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| Error::invalid(name, format!("shape {shape:?} is too large")))?;
            let mut data: Vec<f32> = crate::guard::try_filled(name, n, 0.0)?;
            match init {
                Init::Zeros => {}
                Init::Ones => data.fill(1.0),
                Init::Normal { std } => data
                    .iter_mut()
                    .for_each(|v| *v = (rng.normal() * std) as f32),
            }
            Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?)
        };
        let placeholder = |dtype: DType, device: &Device| -> Result<Tensor> {
            Ok(Tensor::zeros((), dtype, device)?.broadcast_as(shape)?)
        };
        let t = match &mut self.source {
            Source::Init(rng) => fresh(rng, &self.device, self.dtype)?,
            Source::Load(map) => match map.remove(name) {
                None if self.init_missing.as_ref().is_some_and(|(_, ok)| ok(name)) => {
                    let (rng, _) = self.init_missing.as_mut().unwrap();
                    fresh(rng, &self.device, self.dtype)?
                }
                None => {
                    self.missing.push(format!("{name} {shape:?}"));
                    return self.problem(placeholder(self.dtype, &self.device)?);
                }
                Some(t) if t.dims() != shape => {
                    self.wrong_shape
                        .push(format!("{name}: expected {shape:?}, found {:?}", t.dims()));
                    return self.problem(placeholder(self.dtype, &self.device)?);
                }
                Some(t) => t.to_dtype(self.dtype)?.to_device(&self.device)?,
            },
        };
        let var = Var::from_tensor(&t)?;
        let out = if self.frozen.as_ref().is_some_and(|f| f(name)) {
            var.as_tensor().detach()
        } else {
            var.as_tensor().clone()
        };
        self.params.vars.insert(name.to_string(), var);
        Ok(out)
    }

    /// After a missing or wrongly shaped tensor: the placeholder, or the error once
    /// there are too many problems to go on.
    fn problem(&self, placeholder: Tensor) -> Result<Tensor> {
        if self.missing.len() + self.wrong_shape.len() >= MAX_PROBLEMS {
            return Err(Error::Model(format!(
                "{} (stopped after {MAX_PROBLEMS} problems: the config does not describe these weights)",
                self.problems().join("; ")
            )));
        }
        Ok(placeholder)
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = vec![];
        if !self.missing.is_empty() {
            problems.push(format!("missing tensors: {}", self.missing.join(", ")));
        }
        if !self.wrong_shape.is_empty() {
            problems.push(format!("wrong shapes: {}", self.wrong_shape.join("; ")));
        }
        problems
    }

    /// Drop tensors that a checkpoint may carry but the model derives (a tied output
    /// head, attention-mask buffers...).
    pub fn ignore(&mut self, name: &str) {
        if let Source::Load(map) = &mut self.source {
            map.remove(name);
        }
    }

    /// The collected parameters, or an error listing every missing, unexpected or
    /// wrongly shaped tensor.
    pub fn finish(self) -> Result<Params> {
        let mut problems = self.problems();
        if let Source::Load(rest) = &self.source {
            if !rest.is_empty() {
                let mut names: Vec<_> = rest.keys().cloned().collect();
                names.sort();
                problems.push(format!("unexpected tensors: {}", names.join(", ")));
            }
        }
        if problems.is_empty() {
            Ok(self.params)
        } else {
            Err(Error::Model(problems.join("; ")))
        }
    }
}

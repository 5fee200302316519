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
pub struct ParamBuilder {
    source: Source,
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

    /// Keep parameters in `dtype` (f32 by default; f64 for gradient checks).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    fn with_source(source: Source, device: &Device) -> Self {
        ParamBuilder {
            source,
            device: device.clone(),
            dtype: DType::F32,
            params: Params::default(),
            missing: vec![],
            wrong_shape: vec![],
        }
    }

    /// The parameter `name` of shape `shape`. Problems with a loaded checkpoint are
    /// collected and reported together by [`ParamBuilder::finish`]; until then a
    /// placeholder of the right shape is returned.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let t = match &mut self.source {
            Source::Init(rng) => {
                let n: usize = shape.iter().product();
                let data: Vec<f32> = match init {
                    Init::Zeros => vec![0.0; n],
                    Init::Ones => vec![1.0; n],
                    Init::Normal { std } => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
                };
                Tensor::from_vec(data, shape, &self.device)?.to_dtype(self.dtype)?
            }
            Source::Load(map) => match map.remove(name) {
                None => {
                    self.missing.push(format!("{name} {shape:?}"));
                    Tensor::zeros(shape, self.dtype, &self.device)?
                }
                Some(t) if t.dims() != shape => {
                    self.wrong_shape
                        .push(format!("{name}: expected {shape:?}, found {:?}", t.dims()));
                    Tensor::zeros(shape, self.dtype, &self.device)?
                }
                Some(t) => t.to_dtype(self.dtype)?.to_device(&self.device)?,
            },
        };
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.params.vars.insert(name.to_string(), var);
        Ok(out)
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
        let mut problems = vec![];
        if !self.missing.is_empty() {
            problems.push(format!("missing tensors: {}", self.missing.join(", ")));
        }
        if !self.wrong_shape.is_empty() {
            problems.push(format!("wrong shapes: {}", self.wrong_shape.join("; ")));
        }
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

//! Applications built on the models: the glue between data, model and metrics.

pub mod classify;

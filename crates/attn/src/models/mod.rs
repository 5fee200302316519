//! Model families, one file each. Configs deserialise from Hugging Face `config.json`
//! and parameters carry HF tensor names.

pub mod gpt2;

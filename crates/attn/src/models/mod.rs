//! Model families, one file each. Configs deserialise from Hugging Face `config.json`
//! and parameters carry HF tensor names, so loading a checkpoint is a lookup.

pub mod bert;
pub mod gpt2;
pub mod llama;
pub mod marian;
pub mod t5;

use crate::generate::Session;
use crate::Result;

/// Writes an f32 config value (a dropout rate) as the shortest decimal that reads back
/// as it: `0.1`, not the `0.10000000149011612` that widening it to f64 gives.
pub(crate) fn short_f32<S: serde::Serializer>(
    x: &f32,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(x.to_string().parse::<f64>().unwrap_or(*x as f64))
}

/// What generation and perplexity need from a decoder-only language model.
pub trait CausalLm {
    /// Logits `[len, vocab]` (row-major) at every position of each sequence, each read
    /// from its start.
    fn logits_all(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>>;
    /// A decoding session: tokens go in, the next token's logits come out.
    fn session(&self) -> Box<dyn Session + '_>;
    /// The longest sequence the model accepts.
    fn context(&self) -> usize;
    fn vocab_size(&self) -> usize;
    fn n_layer(&self) -> usize;
    fn bos(&self) -> Option<u32>;
    fn eos(&self) -> Option<u32>;
}

#[cfg(test)]
mod config_tests {
    /// Dropout rates reach config.json as the decimals they were given (f32 widened to
    /// f64 would write 0.10000000149011612), and read back equal.
    #[test]
    fn dropout_rates_are_written_as_given() {
        let mut g = super::gpt2::Gpt2Config::new(50, 16, 8, 1, 2);
        g.set_dropout(0.1);
        let mut t = super::t5::T5Config::v1_1(10, 8, 1, 2, 16);
        t.dropout_rate = 0.3;
        let (gj, tj) = (g.to_hf_json(), t.to_hf_json());
        for key in ["resid_pdrop", "embd_pdrop", "attn_pdrop"] {
            assert_eq!(gj[key].as_f64(), Some(0.1), "{key}: {}", gj[key]);
        }
        assert_eq!(
            tj["dropout_rate"].as_f64(),
            Some(0.3),
            "{}",
            tj["dropout_rate"]
        );
        let back: super::t5::T5Config = serde_json::from_value(tj).unwrap();
        assert_eq!(back.dropout_rate, 0.3f32);
    }
}

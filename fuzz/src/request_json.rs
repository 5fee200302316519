//! Target `request_json`: the body of a request to `attn-serve`, from bytes to what the
//! handlers hand the model, without HTTP: JSON parsing as the server's `read_json` does
//! it, `api::Fields`, `api::gen_params` (with the completions' and the chat's default
//! lengths), `chat::parse_messages`, the chat prompt rendered with the simple template
//! and with two Jinja templates of the kind models ship, and the prompt and input
//! strings tokenized with a byte-level BPE tokenizer (what `encode_prompt` and the
//! embeddings handler do).

use attn::tokenizer::Tokenizer;
use attn_serve::api::{gen_params, Fields};
use attn_serve::chat::{parse_messages, ChatTemplate};
use serde_json::Value;

use crate::scratch::Scratch;

/// ChatML, as Qwen and many fine-tunes use it.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Llama 2's: a system prompt folded into the first turn, roles that must alternate
/// (`raise_exception` otherwise).
pub const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

/// The server's default `--max-tokens-limit`.
pub const MAX_TOKENS_LIMIT: usize = 1024;

pub struct Target {
    templates: Vec<ChatTemplate>,
    tokenizer: Tokenizer,
}

impl Default for Target {
    fn default() -> Self {
        Self::new()
    }
}

impl Target {
    pub fn new() -> Target {
        let scratch = Scratch::new("request");
        let mut templates = vec![ChatTemplate::load(scratch.path()).expect("simple template")];
        for t in [CHATML, LLAMA2] {
            let cfg = serde_json::json!({
                "bos_token": "<s>",
                "eos_token": {"content": "</s>"},
                "chat_template": t,
            });
            scratch.write("tokenizer_config.json", cfg.to_string().as_bytes());
            templates.push(ChatTemplate::load(scratch.path()).expect("a chat template"));
        }
        let text = "User: Hello there!\nAssistant: General Kenobi. \u{1F642}\n".repeat(8);
        let tokenizer = Tokenizer::train_bpe(&text, 300).expect("a BPE tokenizer");
        Target {
            templates,
            tokenizer,
        }
    }

    /// Feed one request body; returns whether it was a JSON object with valid sampling
    /// parameters.
    pub fn run(&self, data: &[u8]) -> bool {
        let Ok(body) = serde_json::from_slice::<Value>(data) else {
            return false;
        };
        let Ok(f) = Fields::of(&body) else {
            return false;
        };
        let _ = f.str("model");
        let completions = gen_params(&f, 16, MAX_TOKENS_LIMIT);
        let chat = gen_params(&f, 256, MAX_TOKENS_LIMIT);
        let _ = gen_params(&f, usize::MAX, usize::MAX);
        for key in ["prompt", "input"] {
            match f.get(key) {
                Some(Value::String(s)) => self.encode(s),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .for_each(|s| self.encode(s)),
                _ => {}
            }
        }
        let _ = f.str("encoding_format");
        if let Ok(messages) = parse_messages(f.get("messages")) {
            for t in &self.templates {
                if let Ok(prompt) = t.render(&messages) {
                    self.encode(&prompt);
                }
            }
        }
        completions.is_ok() && chat.is_ok()
    }

    fn encode(&self, text: &str) {
        let _ = self.tokenizer.encode(text);
        let _ = self.tokenizer.encode_for_model(text, 16);
    }
}

//! Turning chat messages into a prompt.
//!
//! When the model folder's `tokenizer_config.json` has a `chat_template` (a Jinja
//! template, as transformers uses), it is rendered with `messages`,
//! `add_generation_prompt = true`, `bos_token` and `eos_token` (when that is one token of
//! the tokenizer, it also ends the answer). Otherwise the simple
//! template below is used, and generation also stops at `"\nUser:"`:
//!
//! ```text
//! System: {content}\n        (for each message, its role capitalised)
//! User: {content}\n
//! Assistant: {content}\n
//! Assistant:
//! ```

use std::path::Path;

use serde_json::Value;

use crate::api::ApiError;

/// The stop string added when the simple template is in use.
pub const SIMPLE_STOP: &str = "\nUser:";

pub struct ChatTemplate {
    jinja: Option<(minijinja::Environment<'static>, String, String)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

fn token_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// Read `tokenizer_config.json` of `dir`, if it has a template.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join("tokenizer_config.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(ChatTemplate { jinja: None });
        };
        let cfg: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default", else the first.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        let Some(template) = template else {
            return Ok(ChatTemplate { jinja: None });
        };
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", template)
            .map_err(|e| format!("{}: chat_template does not parse: {e}", path.display()))?;
        let bos = token_text(cfg.get("bos_token"));
        let eos = token_text(cfg.get("eos_token"));
        Ok(ChatTemplate {
            jinja: Some((env, bos, eos)),
        })
    }

    pub fn is_simple(&self) -> bool {
        self.jinja.is_none()
    }

    /// The template's `eos_token` text, when it has one.
    pub fn eos_token(&self) -> Option<&str> {
        self.jinja
            .as_ref()
            .map(|(_, _, eos)| eos.as_str())
            .filter(|e| !e.is_empty())
    }

    pub fn render(&self, messages: &[Message]) -> Result<String, ApiError> {
        match &self.jinja {
            Some((env, bos, eos)) => {
                let t = env
                    .get_template("chat")
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => bos,
                    eos_token => eos,
                })
                .map_err(|e| {
                    ApiError::invalid("messages", format!("the chat template failed: {e}"))
                })
            }
            None => {
                let mut s = String::new();
                for m in messages {
                    let mut role = m.role.clone();
                    if let Some(first) = role.get_mut(0..1) {
                        first.make_ascii_uppercase();
                    }
                    s.push_str(&format!("{role}: {}\n", m.content));
                }
                s.push_str("Assistant:");
                Ok(s)
            }
        }
    }
}

/// Parse OpenAI's `messages`: a non-empty list of `{role, content}` where content is a
/// string or a list of `{"type": "text", "text": ...}` parts.
pub fn parse_messages(v: Option<&Value>) -> Result<Vec<Message>, ApiError> {
    let Some(Value::Array(items)) = v else {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must be a list of messages",
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .filter(|r| matches!(*r, "system" | "developer" | "user" | "assistant" | "tool"))
            .ok_or_else(|| {
                ApiError::invalid(
                    &param,
                    "each message needs a role: system, user or assistant",
                )
            })?;
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                &param,
                                "only text content parts are supported",
                            ))
                        }
                    }
                }
                s
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    &param,
                    "'content' must be a string or a list of text parts",
                ))
            }
        };
        let role = if role == "developer" { "system" } else { role };
        out.push(Message {
            role: role.to_string(),
            content,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_template_and_jinja_template() {
        let simple = ChatTemplate { jinja: None };
        let msgs = parse_messages(Some(&serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
        ])))
        .unwrap();
        assert_eq!(
            simple.render(&msgs).unwrap(),
            "System: Be brief.\nUser: Hi\nAssistant:"
        );
        let dir = std::env::temp_dir().join(format!("attn-serve-chat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"bos_token": "<s>", "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"}"#,
        )
        .unwrap();
        let t = ChatTemplate::load(&dir).unwrap();
        assert_eq!(
            t.render(&msgs).unwrap(),
            "<s>[system]Be brief.[user]Hi[assistant]"
        );
        std::fs::remove_dir_all(&dir).ok();
        assert!(parse_messages(Some(
            &serde_json::json!([{"role": "wizard", "content": "x"}])
        ))
        .is_err());
    }

    /// A template in the style HF Llama-2-chat folders ship (written here): the system
    /// message folded into the first user turn, `bos_token`/`eos_token` around each
    /// exchange, `raise_exception` when roles do not alternate, and the special tokens
    /// given as objects in tokenizer_config.json.
    #[test]
    fn llama_style_template_with_eos_and_exceptions() {
        let template = concat!(
            "{% if messages[0]['role'] == 'system' %}",
            "{% set sys = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}",
            "{% set msgs = messages[1:] %}",
            "{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}",
            "{% for m in msgs %}",
            "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}",
            "{{ raise_exception('roles must alternate user/assistant/user/...') }}",
            "{% endif %}",
            "{% if m['role'] == 'user' %}",
            "{{ bos_token + '[INST] ' + (sys if loop.first else '') + m['content'] + ' [/INST]' }}",
            "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}",
            "{% endfor %}"
        );
        let cfg = serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": {"content": "</s>", "lstrip": false},
            "chat_template": template,
        });
        let dir = std::env::temp_dir().join(format!("attn-serve-llama-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
        let t = ChatTemplate::load(&dir).unwrap();
        assert!(!t.is_simple());
        let msgs = parse_messages(Some(&serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"}
        ])))
        .unwrap();
        assert_eq!(
            t.render(&msgs).unwrap(),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Bye [/INST]"
        );
        let bad = parse_messages(Some(&serde_json::json!([
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"}
        ])))
        .unwrap();
        let e = t.render(&bad).unwrap_err().body().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

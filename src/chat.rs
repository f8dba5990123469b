//! Chat templates: a model's Jinja `chat_template` (tokenizer_config.json, or GGUF's
//! `tokenizer.chat_template`) rendered with minijinja the way transformers renders it:
//! `trim_blocks` and `lstrip_blocks`, Python string and dict methods (minijinja-contrib's
//! pycompat), and the helpers HF templates call — `raise_exception`, `tojson` (as
//! Python's `json.dumps(ensure_ascii=False)`, not HTML-escaped), `strftime_now`.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind as JinjaErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::tokenizer::Tokenizer;

/// The chat template of the embedded model. tiny-moe is a text model trained on
/// paragraphs that end with `<|endoftext|>`, so a conversation is paragraphs: each
/// system or user message followed by a blank line (which opens the answer), each
/// answer closed by the end-of-text token.
pub const EMBEDDED_TEMPLATE: &str = "{%- for message in messages %}{{ message.content }}\
{% if message.role == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n\\n' }}{% endif %}{% endfor %}";

/// One chat message. `content` stays JSON: a string, or a list of parts
/// (`[{"type": "text", "text": ...}]`), as templates expect.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: serde_json::Value,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A parsed chat template with the special tokens it may print.
pub struct ChatTemplate {
    env: Environment<'static>,
    pub bos_token: String,
    pub eos_token: String,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Parses `source`; errors name the template and the line.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| Error::Config(format!("the model's chat template does not parse: {e:#}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// `source` with the model's BOS and first EOS token strings (empty when unknown).
    pub fn for_model(source: &str, config: &ModelConfig, tokenizer: &Tokenizer) -> Result<Self> {
        let token = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        Self::new(
            source,
            &token(config.bos_token_id),
            &token(config.eos_token_ids.first().copied()),
        )
    }

    /// The prompt for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt`. A template's `raise_exception` (e.g. "roles must
    /// alternate") comes back as bad input with its message.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Config(format!("{e:#}")))?;
        let context = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        template.render(context).map_err(|e| {
            if e.kind() == JinjaErrorKind::InvalidOperation && e.detail().is_some_and(|d| d.starts_with(RAISED)) {
                let detail = e.detail().unwrap_or_default();
                Error::Config(format!("chat template: {}", &detail[RAISED.len()..]))
            } else {
                Error::Config(format!("rendering the chat template failed: {e:#}"))
            }
        })
    }
}

const RAISED: &str = "raised: ";

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        JinjaErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

fn strftime_now(format: String) -> String {
    chrono::Local::now().format(&format).to_string()
}

/// `json.dumps(value, ensure_ascii=False, indent=indent)`: Python's separators
/// (`", "` and `": "` without indent), keys in the order given.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(JinjaErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_python_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_separator = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(key).unwrap_or_default());
                out.push_str(": ");
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(turns: &[(&str, &str)]) -> Vec<ChatMessage> {
        turns
            .iter()
            .map(|(role, content)| ChatMessage {
                role: role.to_string(),
                content: serde_json::Value::String(content.to_string()),
                extra: Default::default(),
            })
            .collect()
    }

    #[test]
    fn the_embedded_template_renders_paragraphs_and_opens_the_answer() {
        let t = ChatTemplate::new(EMBEDDED_TEMPLATE, "", "<|endoftext|>").unwrap();
        let text = t
            .render(
                &messages(&[
                    ("system", "Be brief."),
                    ("user", "What is Rust?"),
                    ("assistant", "A language."),
                    ("user", "Why?"),
                ]),
                true,
            )
            .unwrap();
        assert_eq!(text, "Be brief.\n\nWhat is Rust?\n\nA language.<|endoftext|>Why?\n\n");
    }

    #[test]
    fn hf_helpers_work_as_in_transformers() {
        // The shape of Qwen's / Llama 3's templates: pycompat methods, tojson, raise_exception,
        // strftime_now, trim_blocks/lstrip_blocks.
        let source = r#"{{ bos_token }}
{%- if messages[0].role != 'system' %}{{ raise_exception('a system message must come first') }}{% endif %}
{% for m in messages %}
    {% if m.name is defined %}[{{ m.name.keys() | list | join }}]{% endif %}
<|{{ m.role }}|>{{ m.content | trim }}|{{ m.content.startswith('Hi') }}|{{ m.content.upper() }}
{% endfor %}
{%- if strftime_now('%Y') | length == 4 %}ok{% endif %}"#;
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let mut msgs = messages(&[("system", "Hi <b>"), ("user", " x ")]);
        msgs[0].extra.insert("name".into(), serde_json::json!({"é": [1, "<"]}));
        // Extra keys are flattened into the message, as OpenAI sends them.
        let text = t.render(&msgs, false).unwrap();
        assert_eq!(text, "<s>[é]<|system|>Hi <b>|True|HI <B>\n<|user|>x|False| X \nok");
        let json = ChatTemplate::new("{{ messages[0] | tojson }}", "", "").unwrap();
        assert_eq!(
            json.render(&msgs[..1], false).unwrap(),
            r#"{"role": "system", "content": "Hi <b>", "name": {"é": [1, "<"]}}"#
        );
        let err = t.render(&messages(&[("user", "hello")]), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: chat template: a system message must come first"
        );
    }

    #[test]
    fn real_templates_render_as_their_models_expect() {
        // Qwen2-Instruct's ChatML template (a default system prompt when none is given).
        let qwen = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}\
{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let t = ChatTemplate::new(qwen, "", "<|im_end|>").unwrap();
        assert_eq!(
            t.render(&messages(&[("user", "Hi")]), true).unwrap(),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        // Mixtral-Instruct's: [INST] turns, and an error when roles do not alternate.
        let mixtral = "{{ bos_token }}{% for message in messages %}\
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}\
{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}\
{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}\
{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(mixtral, "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(
                &messages(&[("user", "Hi"), ("assistant", "Hello"), ("user", "Why?")]),
                true
            )
            .unwrap(),
            "<s>[INST] Hi [/INST]Hello</s>[INST] Why? [/INST]"
        );
        let err = t.render(&messages(&[("user", "a"), ("user", "b")]), true).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("Conversation roles must alternate user/assistant/user/assistant/..."),
            "{err}"
        );
    }

    #[test]
    fn a_broken_template_is_an_error_naming_the_problem() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "").err().unwrap();
        assert!(err.to_string().contains("chat template does not parse"), "{err}");
    }
}

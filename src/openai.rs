//! OpenAI API shapes, shared by `webmoe serve` and the browser API: requests as
//! clients send them, validated into what the engine runs, responses and stream
//! chunks, errors, and the text of a generation with stop strings cut out.

use std::convert::Infallible;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::chat::{ChatMessage, ChatTemplate};
use crate::model::generate::SamplingParams;
use crate::model::tokenizer::{DecodeWindow, Tokenizer};

/// A 4xx/5xx answer in OpenAI's error shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// `stop`: one string or a list of up to 4.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields `/v1/chat/completions` and `/v1/completions` share.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<i64>,
    /// Generate past end-of-sequence tokens (as vLLM and llama.cpp's server allow):
    /// for benchmarks that need every response to be `max_tokens` long.
    #[serde(default)]
    pub ignore_eos: bool,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub common: Common,
}

/// `prompt`: a string, or token ids.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

impl ChatRequest {
    /// The prompt's token ids: the messages through `template`, tokenized with no
    /// special tokens added (the template holds them).
    pub fn prompt_ids(&self, template: &ChatTemplate, tokenizer: &Tokenizer) -> Result<Vec<u32>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages must not be empty", Some("messages")));
        }
        let bad = |e: crate::Error| ApiError::invalid(e.to_string(), Some("messages"));
        let prompt = template.render(&self.messages, true).map_err(bad)?;
        tokenizer.encode_plain(&prompt).map_err(bad)
    }
}

#[derive(Deserialize, Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(flatten)]
    pub common: Common,
}

impl CompletionRequest {
    /// The prompt's token ids (text tokenized as the model's tokenizer does, or ids).
    pub fn prompt_ids(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>, ApiError> {
        let bad = |e: crate::Error| ApiError::invalid(e.to_string(), Some("prompt"));
        match &self.prompt {
            Prompt::Text(text) => tokenizer.encode(text).map_err(bad),
            Prompt::Texts(texts) if texts.len() == 1 => tokenizer.encode(&texts[0]).map_err(bad),
            Prompt::Texts(_) => Err(ApiError::invalid(
                "only one prompt per request is supported",
                Some("prompt"),
            )),
            Prompt::Ids(ids) => Ok(ids.clone()),
        }
    }
}

/// What a request asks the engine for, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stops: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

impl Settings {
    /// The tokens that end a generation: the model's end-of-sequence tokens, or none
    /// with `ignore_eos`.
    pub fn stop_ids(&self, eos_token_ids: &[u32]) -> Vec<u32> {
        if self.ignore_eos {
            Vec::new()
        } else {
            eos_token_ids.to_vec()
        }
    }
}

impl Common {
    /// Checks the parameters (OpenAI's ranges) and the model name.
    pub fn settings(&self, served_model: &str) -> Result<Settings, ApiError> {
        if let Some(model) = &self.model {
            if model != served_model {
                return Err(ApiError {
                    status: 404,
                    message: format!("The model `{model}` does not exist; this server serves `{served_model}`."),
                    kind: "invalid_request_error",
                    param: Some("model"),
                    code: Some("model_not_found"),
                });
            }
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => None,
            Some(n) if n < 1 => {
                return Err(ApiError::invalid(
                    format!("max_tokens must be at least 1, not {n}"),
                    Some("max_tokens"),
                ))
            }
            Some(n) => Some(n as usize),
        };
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid(
                    format!("only n = 1 is supported, not {n}"),
                    Some("n"),
                ));
            }
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                format!("temperature must be between 0 and 2, not {temperature}"),
                Some("temperature"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                format!("top_p must be in (0, 1], not {top_p}"),
                Some("top_p"),
            ));
        }
        let top_k = self.top_k.unwrap_or(0);
        if top_k < 0 {
            return Err(ApiError::invalid(
                format!("top_k must not be negative, not {top_k}"),
                Some("top_k"),
            ));
        }
        let stops = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stops.len() > 4 || stops.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop takes at most 4 non-empty strings",
                Some("stop"),
            ));
        }
        let seed = match self.seed {
            Some(s) => s as u64,
            None => rand::random(),
        };
        Ok(Settings {
            max_tokens,
            sampling: SamplingParams {
                temperature: temperature as f32,
                top_k: top_k as usize,
                top_p: top_p as f32,
                seed,
            },
            stops,
            stream: self.stream,
            include_usage: self.stream_options.as_ref().is_some_and(|o| o.include_usage),
            ignore_eos: self.ignore_eos,
        })
    }
}

/// The text of a generation as tokens arrive: whole characters only, and never a
/// piece of a stop string; the text ends before the first stop string.
pub struct TextAssembler {
    window: DecodeWindow,
    tokens: usize,
    text: String,
    emitted: usize,
    stops: Vec<String>,
    /// A stop string was found: the text is final.
    pub stopped: bool,
}

impl TextAssembler {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            window: DecodeWindow::default(),
            tokens: 0,
            text: String::new(),
            emitted: 0,
            stops,
            stopped: false,
        }
    }

    /// Adds a token (`decode` turns a window of recent ids into text, see
    /// [`DecodeWindow`]) and returns the text that can be sent now.
    pub fn push(&mut self, id: u32, decode: impl Fn(&[u32]) -> String) -> String {
        if self.stopped {
            return String::new();
        }
        self.tokens += 1;
        let pushed = self.window.push(id, |ids| Ok::<_, Infallible>(decode(ids)));
        let Some(piece) = pushed.unwrap_or_else(|never| match never {}) else {
            // Part of a multi-byte character (or no text): wait for the rest.
            return String::new();
        };
        self.text.push_str(&piece);
        let hold = self.stops.iter().map(|s| s.len()).max().unwrap_or(1).saturating_sub(1);
        let search_from = floor_boundary(&self.text, self.emitted.saturating_sub(hold));
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.text[search_from..].find(s.as_str()).map(|p| search_from + p))
            .min();
        let end = match found {
            Some(p) => {
                self.stopped = true;
                self.text.truncate(p);
                p
            }
            None => floor_boundary(&self.text, self.text.len().saturating_sub(hold)),
        };
        self.take(end)
    }

    /// The rest of the text, at the end of the generation.
    pub fn finish(&mut self) -> String {
        let end = self.text.len();
        self.take(end)
    }

    fn take(&mut self, end: usize) -> String {
        if end <= self.emitted {
            return String::new();
        }
        let piece = self.text[self.emitted..end].to_string();
        self.emitted = end;
        piece
    }

    /// Tokens generated (including any that completed a stop string).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Which endpoint a response is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Api {
    Chat,
    Completion,
}

/// Builds one request's response objects as its tokens arrive: stream chunks (the
/// first chat chunk carries the role), the final chunk, the usage chunk, and the
/// whole (non-streamed) response.
pub struct Reply {
    pub api: Api,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub prompt_tokens: usize,
    pub assembler: TextAssembler,
    first: bool,
}

impl Reply {
    pub fn new(api: Api, id: String, created: u64, model: String, prompt_tokens: usize, stops: Vec<String>) -> Self {
        Self {
            api,
            id,
            created,
            model,
            prompt_tokens,
            assembler: TextAssembler::new(stops),
            first: true,
        }
    }

    pub fn object(&self, stream: bool) -> &'static str {
        match (self.api, stream) {
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
            (Api::Completion, _) => "text_completion",
        }
    }

    pub fn usage(&self) -> Value {
        usage(self.prompt_tokens, self.assembler.tokens())
    }

    /// Adds a token; returns the chunk to stream for it, if any text (or the first
    /// chunk) is due. `assembler.stopped` tells when a stop string ended the text.
    pub fn token_chunk(&mut self, token: u32, decode: impl Fn(&[u32]) -> String) -> Option<Value> {
        let text = self.assembler.push(token, decode);
        if text.is_empty() && !self.first {
            return None;
        }
        Some(self.chunk(&text, None))
    }

    /// The chunks that end a stream: any held-back text, the finish reason, and the
    /// usage when asked for.
    pub fn closing_chunks(&mut self, finish: &str, include_usage: bool) -> Vec<Value> {
        let mut chunks = Vec::new();
        let rest = self.assembler.finish();
        if !rest.is_empty() || self.first {
            chunks.push(self.chunk(&rest, None));
        }
        chunks.push(self.chunk("", Some(finish)));
        if include_usage {
            chunks.push(
                json!({"id": self.id, "object": self.object(true), "created": self.created,
                "model": self.model, "choices": [], "usage": self.usage()}),
            );
        }
        chunks
    }

    fn chunk(&mut self, text: &str, finish: Option<&str>) -> Value {
        let first = std::mem::replace(&mut self.first, false);
        let choice = match self.api {
            Api::Chat => {
                let delta = match (first, finish) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, Some(_)) if text.is_empty() => json!({}),
                    _ => json!({"content": text}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Api::Completion => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created,
               "model": self.model, "choices": [choice]})
    }

    /// The whole response, at the end.
    pub fn complete(&mut self, finish: &str) -> Value {
        self.assembler.finish();
        let text = self.assembler.text();
        let choice = match self.api {
            Api::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                                "logprobs": null, "finish_reason": finish}),
            Api::Completion => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created,
               "model": self.model, "choices": [choice], "usage": self.usage()})
    }
}

/// A response id like OpenAI's (`chatcmpl-…`, `cmpl-…`).
pub fn response_id(api: Api, random: u64) -> String {
    let prefix = if api == Api::Chat { "chatcmpl" } else { "cmpl" };
    format!("{prefix}-{random:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_bytes<'a>(pieces: &'a [&'a str]) -> impl Fn(&[u32]) -> String + 'a {
        move |ids: &[u32]| ids.iter().map(|&i| pieces[i as usize]).collect()
    }

    #[test]
    fn stop_strings_are_cut_even_across_tokens_and_never_sent_in_part() {
        let pieces = ["Hel", "lo ", "wor", "ld", "!!"];
        let mut a = TextAssembler::new(vec!["world".into()]);
        let decode = decode_bytes(&pieces);
        let mut sent = String::new();
        for id in 0..5u32 {
            sent += &a.push(id, &decode);
            assert!(!sent.contains("wor"), "{sent:?}");
            if a.stopped {
                break;
            }
        }
        sent += &a.finish();
        assert!(a.stopped);
        assert_eq!(sent, "Hello ");
        assert_eq!(a.text(), "Hello ");
        assert_eq!(a.tokens(), 4);
    }

    #[test]
    fn without_stops_text_flows_at_once_and_waits_for_whole_characters() {
        let mut a = TextAssembler::new(Vec::new());
        let decode = |ids: &[u32]| {
            if ids.len() == 1 {
                "a\u{fffd}".to_string()
            } else {
                "aé".to_string()
            }
        };
        assert_eq!(a.push(0, decode), "");
        assert_eq!(a.push(1, decode), "aé");
        assert_eq!(a.finish(), "");
    }

    #[test]
    fn parameters_are_checked_like_openai() {
        let bad = |c: Common| c.settings("m").unwrap_err();
        assert_eq!(
            bad(Common {
                max_tokens: Some(-1),
                ..Default::default()
            })
            .status,
            400
        );
        assert_eq!(
            bad(Common {
                model: Some("gpt-4".into()),
                ..Default::default()
            })
            .status,
            404
        );
        assert_eq!(
            bad(Common {
                n: Some(2),
                ..Default::default()
            })
            .param,
            Some("n")
        );
        assert_eq!(
            bad(Common {
                temperature: Some(3.0),
                ..Default::default()
            })
            .param,
            Some("temperature")
        );
        assert_eq!(
            bad(Common {
                top_p: Some(0.0),
                ..Default::default()
            })
            .param,
            Some("top_p")
        );
        let ok = Common {
            stop: Some(Stop::One("x".into())),
            temperature: Some(0.0),
            ..Default::default()
        }
        .settings("m")
        .unwrap();
        assert!(ok.sampling.is_greedy());
        assert_eq!(ok.stops, vec!["x".to_string()]);
    }
}

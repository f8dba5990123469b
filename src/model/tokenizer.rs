//! tokenizer.json through the `tokenizers` crate, with BOS/EOS handling.

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Parses tokenizer.json bytes; `source` names the file in errors.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Config(format!("{source}: not a valid tokenizer.json: {e}")))?;
        Ok(Self { inner })
    }

    /// Token ids of `text`. BOS (and any other special tokens) come from the
    /// tokenizer's own post-processor, as with transformers' `add_special_tokens=True`:
    /// Mixtral's adds `<s>`, Qwen's adds none.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token ids of `text` without special tokens added (a rendered chat template
    /// already holds them, as transformers' `apply_chat_template` assumes).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Config(format!("tokenizing the prompt failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The token string of `id` (e.g. `</s>`, `<|im_end|>`), for chat templates.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Config(format!("detokenizing failed: {e}")))
    }
}

/// Turns a growing list of ids into text pieces for streaming: each call returns
/// the text added since the last call (whole characters only).
#[derive(Default)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{fffd}') || text.len() < self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(String::new());
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(piece)
    }
}

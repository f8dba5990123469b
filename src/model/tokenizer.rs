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

/// Incremental detokenization: the text each new id adds, decoding only a short
/// window of recent ids (those not yet turned into text, after the ids of the last
/// piece as context for decoders that look at the previous token, such as
/// SentencePiece's leading space). Decoding every id so far at each step, as before,
/// made a generation of n tokens cost O(n²) in the detokenizer.
///
/// Hand-written rather than `tokenizers`' `DecodeStream`: that borrows the tokenizer
/// (the wasm API and the server keep a stream beside it across calls) and fails the
/// stream when a new id changes text already sent; here the text past what was sent
/// flows on.
#[derive(Default)]
pub struct DecodeWindow {
    ids: Vec<u32>,
    /// `ids[..context]` produced `context_text`, already sent.
    context: usize,
    context_text: String,
}

impl DecodeWindow {
    /// Adds `id`; returns the text it completes (`None` while it ends inside a
    /// character or adds no text). `decode` turns a window of ids into text.
    pub fn push<E>(
        &mut self,
        id: u32,
        mut decode: impl FnMut(&[u32]) -> std::result::Result<String, E>,
    ) -> std::result::Result<Option<String>, E> {
        self.ids.push(id);
        let text = decode(&self.ids)?;
        if text == self.context_text {
            // Ids that add no text (special tokens, skipped) would otherwise pile up
            // in the window, each step decoding them all again.
            self.ids.truncate(self.context);
            return Ok(None);
        }
        if text.ends_with('\u{fffd}') || text.len() <= self.context_text.len() {
            return Ok(None);
        }
        let mut start = self.context_text.len();
        while !text.is_char_boundary(start) {
            start += 1;
        }
        let piece = text[start..].to_string();
        self.ids.drain(..self.context);
        self.context = self.ids.len();
        self.context_text = decode(&self.ids)?;
        Ok(Some(piece))
    }
}

/// Turns a growing list of ids into text pieces for streaming: each call returns
/// the text added since the last call (whole characters only).
#[derive(Default)]
pub struct TextStream {
    window: DecodeWindow,
}

impl TextStream {
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        Ok(self.window.push(id, |ids| tokenizer.decode(ids))?.unwrap_or_default())
    }
}

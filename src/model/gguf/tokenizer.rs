//! A `tokenizers` tokenizer from GGUF `tokenizer.ggml.*` metadata.

use std::collections::BTreeMap;

use super::file::MetaValue;
use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;

/// A `tokenizers` tokenizer from `tokenizer.ggml.*` (byte-level BPE, llama.cpp's
/// "gpt2" model with the GPT-2 pre-tokenizer); `None` when the file has none.
pub fn tokenizer_of(meta: &BTreeMap<String, MetaValue>, source: &str) -> Result<Option<Tokenizer>> {
    let Some(MetaValue::Str(model)) = meta.get("tokenizer.ggml.model") else {
        return Ok(None);
    };
    let strings = |key: &str| -> Vec<String> {
        match meta.get(key) {
            Some(MetaValue::Array(v)) => v
                .iter()
                .filter_map(|x| match x {
                    MetaValue::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens");
    let types: Vec<i64> = match meta.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(v)) => v.iter().map(|x| x.as_f64().unwrap_or(1.0) as i64).collect(),
        _ => Vec::new(),
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i.into())).collect();
    let (normalizer, pre_tokenizer, decoder, bpe) = match model.as_str() {
        "gpt2" => {
            let (pre_tokenizer, ignore_merges) = bpe_pre_tokenizer(meta, source)?;
            let bpe = serde_json::json!({"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": ignore_merges, "vocab": vocab,
                "merges": strings("tokenizer.ggml.merges")});
            let decoder = serde_json::json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (serde_json::Value::Null, pre_tokenizer, decoder, bpe)
        }
        "llama" => {
            // SentencePiece BPE as transformers' LlamaTokenizerFast has it: a space
            // prefix, spaces as U+2581, byte fallback, and merges derived from the
            // pieces' scores (transformers' SentencePieceExtractor).
            let scores: Vec<f64> = match meta.get("tokenizer.ggml.scores") {
                Some(MetaValue::Array(v)) => v.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect(),
                _ => vec![0.0; tokens.len()],
            };
            let unk = meta
                .get("tokenizer.ggml.unknown_token_id")
                .and_then(MetaValue::as_u64)
                .and_then(|id| tokens.get(id as usize).cloned());
            let bpe = serde_json::json!({"type": "BPE", "dropout": null, "unk_token": unk,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab,
                "merges": sentencepiece_merges(&tokens, &scores, &types)});
            let add_space = !matches!(meta.get("tokenizer.ggml.add_space_prefix"), Some(MetaValue::Bool(false)));
            let mut normalizers = Vec::new();
            if add_space {
                normalizers.push(serde_json::json!({"type": "Prepend", "prepend": "\u{2581}"}));
            }
            normalizers.push(serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
            let mut decoders = vec![
                serde_json::json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                serde_json::json!({"type": "ByteFallback"}),
                serde_json::json!({"type": "Fuse"}),
            ];
            if add_space {
                decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                serde_json::json!({"type": "Sequence", "normalizers": normalizers}),
                serde_json::Value::Null,
                serde_json::json!({"type": "Sequence", "decoders": decoders}),
                bpe,
            )
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{source}: tokenizer.ggml.model `{other}` (webmoe builds `gpt2` byte-level BPE and `llama` SentencePiece tokenizers); give --prompt-ids instead"
            )))
        }
    };
    // Control (3) and user-defined (4) tokens are special, as transformers has them.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": types.get(i) == Some(&3)})
        })
        .collect();
    let add_bos = matches!(meta.get("tokenizer.ggml.add_bos_token"), Some(MetaValue::Bool(true)));
    let bos = meta
        .get("tokenizer.ggml.bos_token_id")
        .and_then(MetaValue::as_u64)
        .and_then(|id| tokens.get(id as usize).map(|t| (id, t.clone())));
    let post_processor = match (add_bos, bos) {
        (true, Some((id, token))) => serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {token.clone(): {"id": token, "ids": [id], "tokens": [token]}}
        }),
        _ => serde_json::Value::Null,
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": bpe
    });
    Tokenizer::from_bytes(json.to_string().as_bytes(), &format!("{source} (tokenizer.ggml.*)")).map(Some)
}

/// The pre-tokenizer of a byte-level BPE GGUF tokenizer by llama.cpp's
/// `tokenizer.ggml.pre` name (as those models' Hugging Face tokenizers split text), and
/// whether words found whole in the vocabulary skip the merges (Llama 3).
fn bpe_pre_tokenizer(meta: &BTreeMap<String, MetaValue>, source: &str) -> Result<(serde_json::Value, bool)> {
    let pre = match meta.get("tokenizer.ggml.pre") {
        Some(MetaValue::Str(p)) => p.as_str(),
        _ => "default",
    };
    // llama.cpp's pre-tokenizer names, as the Hugging Face tokenizers of those models
    // split text before byte-level BPE.
    let split = |regex: &str| {
        serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
        ]})
    };
    Ok(match pre {
        // GPT-2's regex (OLMoE's GPT-NeoX tokenizer uses it too).
        "default" | "gpt-2" | "gpt2" | "olmo" => (
            serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            false,
        ),
        // Qwen2 / Qwen3: one digit per piece.
        "qwen2" => (split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), false),
        // Llama 3: up to three digits per piece.
        "llama-bpe" | "llama3" => (split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), true),
        other => {
            return Err(Error::Unsupported(format!(
                "{source}: tokenizer.ggml.pre `{other}` (webmoe knows default/gpt-2, olmo, qwen2 and llama-bpe); give --prompt-ids instead"
            )))
        }
    })
}

/// BPE merges of a SentencePiece vocabulary, as transformers' `SentencePieceExtractor`
/// derives them: every split of a piece into two pieces of the vocabulary, ordered by
/// the merged piece's score (highest first), the splits of one piece by their ids.
fn sentencepiece_merges(tokens: &[String], scores: &[f64], types: &[i64]) -> Vec<String> {
    let index: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f64, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        // Unknown (2), control (3) and byte (6) tokens are never the result of a merge.
        if matches!(types.get(id), Some(2) | Some(3) | Some(6)) {
            continue;
        }
        let mut local: Vec<(usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| Some((*index.get(&piece[..at])?, *index.get(&piece[at..])?)))
            .collect();
        local.sort();
        let score = scores.get(id).copied().unwrap_or(0.0);
        merges.extend(local.into_iter().map(|(l, r)| (score, l, r)));
    }
    // Stable: equal scores keep the vocabulary order.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges
        .into_iter()
        .map(|(_, l, r)| format!("{} {}", tokens[l], tokens[r]))
        .collect()
}

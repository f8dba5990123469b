//! `config.json` of a Hugging Face MoE checkpoint, parsed into one [`ModelConfig`] for
//! the generic decoder.
//!
//! Family facts, checked against transformers 5.23.0
//! (`transformers/models/<family>/configuration_<family>.py` and `modeling_<family>.py`,
//! plus `modeling_rope_utils.py` and `conversion_mapping.py`):
//!
//! - **Mixtral** (`configuration_mixtral.py`, `modeling_mixtral.py`): experts
//!   `num_local_experts` (attribute_map: `num_experts`), expert ffn `intermediate_size`;
//!   the router (`MixtralTopKRouter`) takes softmax over all experts, top-k, then divides
//!   by the sum: the same as top-k on the logits then softmax over those k. No attention
//!   biases (`bias=False`; `attention_bias` is not read). `head_dim` is
//!   `config.head_dim or hidden_size // num_attention_heads` (`null` = derived).
//!   Defaults: num_key_value_heads 8, rms_norm_eps 1e-5, `default_theta` 1e6, bos 1,
//!   eos 2. `sliding_window` (default null) masks keys more than that many positions
//!   back.
//! - **Qwen2-MoE** (`configuration_qwen2_moe.py`, `modeling_qwen2_moe.py`): experts
//!   `num_experts`, expert ffn `moe_intermediate_size`, dense ffn `intermediate_size`;
//!   softmax over all experts, top-k, renormalised when `norm_topk_prob` (default false);
//!   q/k/v biases when `qkv_bias` (default true; `attention_bias` is not read), no o_proj
//!   bias; a shared expert of `shared_expert_intermediate_size` scaled by
//!   sigmoid(`shared_expert_gate` [1, d]). Layer i is sparse when
//!   `i not in mlp_only_layers and num_experts > 0 and (i + 1) % decoder_sparse_step == 0`
//!   (defaults 1 and []). `head_dim = getattr(config, "head_dim", hidden // heads)`.
//!   Defaults: num_key_value_heads 16, rms_norm_eps 1e-6, theta 1e4, no bos/eos. The
//!   sliding window applies only with `use_sliding_window` (default false).
//! - **Qwen3-MoE** (`configuration_qwen3_moe.py`, `modeling_qwen3_moe.py`): like
//!   Qwen2-MoE's routing (`norm_topk_prob`, default false) and sparse-layer rule, no
//!   shared expert; q_norm/k_norm are RMSNorms over `head_dim` per head ("unlike olmo,
//!   only on the head dim"); `attention_bias` (default false) puts biases on q, k, v
//!   *and* o. transformers 5.23 saves the expert count as `num_local_experts`
//!   (attribute_map), hub configs have `num_experts`. Defaults: num_key_value_heads 4,
//!   rms_norm_eps 1e-6, theta 1e4.
//! - **OLMoE** (`configuration_olmoe.py`, `modeling_olmoe.py`): experts `num_experts`,
//!   expert ffn `intermediate_size`; softmax, top-k, `norm_topk_prob` (default false).
//!   q_norm = RMSNorm(hidden_size) and k_norm = RMSNorm((hidden / heads) * kv_heads),
//!   applied to the whole q / k projection *before* the reshape into heads; then
//!   `clip_qkv` (default None) clamps q, k and v to [-clip, clip]. `attention_bias`
//!   (default false) biases q, k, v and o. Defaults: num_key_value_heads = heads,
//!   rms_norm_eps 1e-5, theta 1e4, eos 50279.
//! - **GraniteMoE** (`configuration_granitemoe.py`, `modeling_granitemoe.py`): experts
//!   `num_local_experts`, ffn `intermediate_size`; the router takes top-k of the logits
//!   then softmax over those k; embeddings are multiplied by `embedding_multiplier`, each
//!   residual branch by `residual_multiplier`, the attention scale *is*
//!   `attention_multiplier` (not 1/sqrt(head_dim)), and logits are divided by
//!   `logits_scaling` (all default 1.0). `attention_bias` biases q, k, v and o.
//!   Defaults: num_key_value_heads = heads, rms_norm_eps 1e-6, theta 1e4, bos 1, eos 2.
//! - RoPE (`modeling_rope_utils.py`): `rope_parameters` (transformers 5) or the legacy
//!   `rope_scaling` dict, else top-level `rope_theta` / `partial_rotary_factor`, else
//!   the class's `default_theta`; rotated dims = `int(head_dim * partial_rotary_factor)`.
//!   Only `rope_type` (or legacy `type`) "default" is supported.
//!
//! Sizes (hidden_size, layers, heads, vocab, experts, top-k, ffn sizes,
//! max_position_embeddings) are required: a missing one is an error naming the field.
//! Other fields take the family's transformers default when absent.
//!
//! Not supported, and refused with an error rather than computed wrongly: attention
//! biases on o_proj (`attention_bias: true` for Qwen3-MoE, OLMoE, GraniteMoE), RoPE
//! scaling variants, odd rotary dims. A sliding window (Mixtral `sliding_window`,
//! Qwen `use_sliding_window`) caps `max_position_embeddings` at the window, where
//! windowed attention equals full attention, so longer contexts are refused clearly.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gpu::DType;
use crate::moe::{MoeConfig, SharedExpertConfig};
use crate::ops::routing::{RoutingConfig, TopKOrder};

pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "OlmoeForCausalLM",
    "GraniteMoeForCausalLM",
];

/// Architectures the MoE layer can already route for but the decoder does not run yet.
const PLANNED_ARCHITECTURES: &[&str] = &["DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "GptOssForCausalLM"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
    Olmoe,
    GraniteMoe,
}

impl Family {
    /// The family of an `architectures[0]` value.
    pub fn from_architecture(name: &str) -> Option<Self> {
        Some(match name {
            "MixtralForCausalLM" => Family::Mixtral,
            "Qwen2MoeForCausalLM" => Family::Qwen2Moe,
            "Qwen3MoeForCausalLM" => Family::Qwen3Moe,
            "OlmoeForCausalLM" => Family::Olmoe,
            "GraniteMoeForCausalLM" => Family::GraniteMoe,
            _ => return None,
        })
    }

    fn defaults(self) -> Defaults {
        match self {
            Family::Mixtral => Defaults {
                kv_heads: Some(8),
                rms_norm_eps: 1e-5,
                rope_theta: 1.0e6,
                bos: Some(1),
                eos: Some(2),
            },
            Family::Qwen2Moe => Defaults {
                kv_heads: Some(16),
                rms_norm_eps: 1e-6,
                rope_theta: 1.0e4,
                bos: None,
                eos: None,
            },
            Family::Qwen3Moe => Defaults {
                kv_heads: Some(4),
                rms_norm_eps: 1e-6,
                rope_theta: 1.0e4,
                bos: None,
                eos: None,
            },
            Family::Olmoe => Defaults {
                kv_heads: None,
                rms_norm_eps: 1e-5,
                rope_theta: 1.0e4,
                bos: None,
                eos: Some(50279),
            },
            Family::GraniteMoe => Defaults {
                kv_heads: None,
                rms_norm_eps: 1e-6,
                rope_theta: 1.0e4,
                bos: Some(1),
                eos: Some(2),
            },
        }
    }
}

/// transformers' class defaults for fields absent from config.json.
struct Defaults {
    /// `None`: as many as the attention heads.
    kv_heads: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: f64,
    bos: Option<u32>,
    eos: Option<u32>,
}

/// Where q/k RMSNorms apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Over each head's head_dim; weights `[head_dim]` (Qwen3-MoE).
    PerHead,
    /// Over the whole q / k projection; weights `[heads * head_dim]` and
    /// `[kv_heads * head_dim]` (OLMoE).
    Full,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    /// `architectures[0]`.
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Longest context (capped at the sliding window, where there is one).
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// Rotated dimensions of each head (head_dim * partial_rotary_factor, even).
    pub rotary_dim: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projection biases (Qwen2-MoE `qkv_bias`).
    pub attention_bias: bool,
    pub qk_norm: QkNorm,
    /// OLMoE: clamp q, k, v to [-clip, clip].
    pub clip_qkv: Option<f32>,
    /// The routed experts (and Qwen2-MoE's shared expert); f32 weights, decode path
    /// for up to 4 tokens.
    pub moe: MoeConfig,
    /// Intermediate size of dense (non-MoE) layers (0 when a Qwen config without
    /// `intermediate_size` has none).
    pub dense_ffn: usize,
    /// Per layer: MoE (true) or dense MLP.
    pub sparse_layers: Vec<bool>,
    /// GraniteMoE; 1.0 elsewhere.
    pub embedding_multiplier: f32,
    /// GraniteMoE; 1.0 elsewhere.
    pub residual_multiplier: f32,
    /// Multiplies q.k: GraniteMoE's attention_multiplier, else 1/sqrt(head_dim).
    pub attention_scale: f32,
    /// Logits are divided by this (GraniteMoE); 1.0 elsewhere.
    pub logits_scaling: f32,
    pub bos_token_id: Option<u32>,
    /// `eos_token_id`, an id or a list of ids in HF configs.
    pub eos_token_ids: Vec<u32>,
    /// `dtype` (transformers 5) or `torch_dtype` (4.x).
    pub torch_dtype: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize, Default)]
struct RopeParameters {
    rope_theta: Option<f64>,
    partial_rotary_factor: Option<f64>,
    rope_type: Option<String>,
    /// Legacy name of rope_type in `rope_scaling`.
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The fields webmoe reads; everything optional so missing ones get named errors.
#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    partial_rotary_factor: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<RopeParameters>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    qkv_bias: Option<bool>,
    clip_qkv: Option<f64>,
    num_local_experts: Option<usize>,
    num_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    moe_intermediate_size: Option<usize>,
    shared_expert_intermediate_size: Option<usize>,
    norm_topk_prob: Option<bool>,
    decoder_sparse_step: Option<usize>,
    mlp_only_layers: Option<Vec<usize>>,
    embedding_multiplier: Option<f64>,
    residual_multiplier: Option<f64>,
    attention_multiplier: Option<f64>,
    logits_scaling: Option<f64>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

/// The product of `factors` (named `what` in the error), without overflow.
fn product(factors: &[usize], what: &str, bad: &dyn Fn(String) -> Error) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or_else(|| bad(format!("{what} ({factors:?}) overflows")))
}

impl ModelConfig {
    /// Reads `dir/config.json` (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &std::path::Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses config.json text; `source` names the file in errors.
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let bad = |m: String| Error::Config(format!("{source}: {m}"));
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let Some(fields) = value.as_object() else {
            return Err(bad("expected a JSON object".into()));
        };
        let raw: RawConfig = match serde_json::from_value(value.clone()) {
            Ok(raw) => raw,
            Err(e) => {
                // Name the field: the first one that fails on its own.
                let culprit = fields.iter().find(|(k, v)| {
                    let one = serde_json::json!({ k.as_str(): v });
                    serde_json::from_value::<RawConfig>(one).is_err()
                });
                return Err(match culprit {
                    Some((k, v)) => bad(format!("field `{k}` has an invalid value {v}: {e}")),
                    None => bad(format!("invalid config: {e}")),
                });
            }
        };
        let present = |key: &str| fields.contains_key(key);
        let need = |v: Option<usize>, field: &str| v.ok_or_else(|| bad(format!("missing required field `{field}`")));
        let positive = |v: usize, field: &str| {
            if v == 0 {
                Err(bad(format!("`{field}` must be positive")))
            } else {
                Ok(v)
            }
        };

        let architecture = match raw.architectures.as_ref().and_then(|a| a.first()) {
            Some(a) => a.clone(),
            None => {
                let hint = raw
                    .model_type
                    .as_deref()
                    .map(|t| format!(" (model_type is `{t}`)"))
                    .unwrap_or_default();
                return Err(bad(format!(
                    "missing required field `architectures`{hint}; supported: {}",
                    SUPPORTED_ARCHITECTURES.join(", ")
                )));
            }
        };
        let Some(family) = Family::from_architecture(&architecture) else {
            let planned = if PLANNED_ARCHITECTURES.contains(&architecture.as_str()) {
                " It is planned: the MoE layer supports its routing, the decoder does not run it yet."
            } else {
                ""
            };
            return Err(bad(format!(
                "architecture `{architecture}` is not supported; supported: {} (DeepSeek-V2/V3 and gpt-oss are planned).{planned}",
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        };
        let defaults = family.defaults();
        let qwen = matches!(family, Family::Qwen2Moe | Family::Qwen3Moe);

        // Attention geometry.
        let hidden_size = positive(need(raw.hidden_size, "hidden_size")?, "hidden_size")?;
        let num_heads = positive(need(raw.num_attention_heads, "num_attention_heads")?, "num_attention_heads")?;
        let num_layers = positive(need(raw.num_hidden_layers, "num_hidden_layers")?, "num_hidden_layers")?;
        let vocab_size = positive(need(raw.vocab_size, "vocab_size")?, "vocab_size")?;
        let max_positions = positive(
            need(raw.max_position_embeddings, "max_position_embeddings")?,
            "max_position_embeddings",
        )?;
        let num_kv_heads = match raw.num_key_value_heads {
            Some(n) => n,
            // Explicit null: as many as the heads (the families' __post_init__).
            None if present("num_key_value_heads") => num_heads,
            None => defaults.kv_heads.unwrap_or(num_heads),
        };
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads = {num_heads} must be a positive multiple of num_key_value_heads = {num_kv_heads}"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(0) => return Err(bad("`head_dim` must be positive".into())),
            Some(h) => h,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(bad(format!(
                    "hidden_size = {hidden_size} is not divisible by num_attention_heads = {num_heads} (and no head_dim is given)"
                )))
            }
        };
        if family == Family::Olmoe && (hidden_size % num_heads != 0 || head_dim != hidden_size / num_heads) {
            return Err(bad(format!(
                "OLMoE's q_norm has hidden_size = {hidden_size} weights, so head_dim ({head_dim}) must be hidden_size / num_attention_heads ({num_heads})"
            )));
        }
        let q_width = product(&[num_heads, head_dim], "num_attention_heads * head_dim", &bad)?;
        product(&[q_width, hidden_size], "q_proj size", &bad)?;
        product(&[vocab_size, hidden_size], "vocab_size * hidden_size", &bad)?;

        // RoPE.
        for key in ["rope_parameters", "rope_scaling"] {
            if let Some(serde_json::Value::Object(m)) = fields.get(key) {
                if m.values().any(|v| v.is_object()) {
                    return Err(bad(format!("`{key}` per layer type is not supported yet")));
                }
            }
        }
        let rope = match (raw.rope_parameters, raw.rope_scaling) {
            (Some(p), _) => p,
            (None, Some(s)) => s,
            (None, None) => RopeParameters::default(),
        };
        let kind = rope.rope_type.as_deref().or(rope.kind.as_deref()).unwrap_or("default");
        if kind != "default" {
            return Err(bad(format!(
                "rope_type `{kind}` is not supported yet (only default RoPE; no YaRN, linear, dynamic, llama3 scaling)"
            )));
        }
        let partial = rope.partial_rotary_factor.or(raw.partial_rotary_factor).unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(bad(format!("partial_rotary_factor = {partial} must be in (0, 1]")));
        }
        // int(head_dim * partial_rotary_factor), as transformers computes it.
        let rotary_dim = (head_dim as f64 * partial) as usize;
        if rotary_dim == 0 || rotary_dim % 2 != 0 {
            return Err(bad(format!(
                "head_dim {head_dim} x partial_rotary_factor {partial} = {rotary_dim} rotary dims; an even, positive number is needed"
            )));
        }
        let rope_theta = rope.rope_theta.or(raw.rope_theta).unwrap_or(defaults.rope_theta);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(bad(format!("rope_theta = {rope_theta} must be positive")));
        }
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(defaults.rms_norm_eps);
        if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
            return Err(bad(format!("rms_norm_eps = {rms_norm_eps} must be a non-negative number")));
        }

        // Sliding window: exact as long as the context does not exceed it.
        let window = match family {
            Family::Mixtral => raw.sliding_window,
            Family::Qwen2Moe | Family::Qwen3Moe if raw.use_sliding_window == Some(true) => raw.sliding_window,
            _ => None,
        };
        let max_position_embeddings = match window {
            Some(w) if w > 0 => max_positions.min(w),
            _ => max_positions,
        };

        // Experts. transformers may save either name of the expert count (attribute_map).
        let (canonical, alias) = match family {
            Family::Mixtral | Family::GraniteMoe => (raw.num_local_experts, raw.num_experts),
            _ => (raw.num_experts, raw.num_local_experts),
        };
        if let (Some(a), Some(b)) = (canonical, alias) {
            if a != b {
                return Err(bad(format!(
                    "num_experts = {} and num_local_experts = {} disagree",
                    raw.num_experts.unwrap_or(0),
                    raw.num_local_experts.unwrap_or(0)
                )));
            }
        }
        let experts_field = match family {
            Family::Mixtral | Family::GraniteMoe => "num_local_experts",
            _ => "num_experts",
        };
        let num_experts = positive(need(canonical.or(alias), experts_field)?, experts_field)?;
        let top_k = need(raw.num_experts_per_tok, "num_experts_per_tok")?;
        if top_k == 0 || top_k > num_experts {
            return Err(bad(format!(
                "num_experts_per_tok (top_k) = {top_k} must be between 1 and {experts_field} = {num_experts}"
            )));
        }
        let expert_ffn = if qwen {
            positive(need(raw.moe_intermediate_size, "moe_intermediate_size")?, "moe_intermediate_size")?
        } else {
            positive(need(raw.intermediate_size, "intermediate_size")?, "intermediate_size")?
        };
        product(&[num_experts, 2, expert_ffn, hidden_size], "experts' gate_up size", &bad)?;
        let order = match family {
            Family::Mixtral | Family::GraniteMoe => TopKOrder::TopKThenSoftmax,
            _ => TopKOrder::ScoreThenTopK,
        };
        let mut routing = RoutingConfig::softmax_top_k(num_experts, top_k, false);
        routing.order = order;
        routing.renormalize = order == TopKOrder::ScoreThenTopK && raw.norm_topk_prob.unwrap_or(false);
        let shared_expert = match family {
            Family::Qwen2Moe => {
                let ffn = need(raw.shared_expert_intermediate_size, "shared_expert_intermediate_size")?;
                let ffn = positive(ffn, "shared_expert_intermediate_size")?;
                product(&[ffn, hidden_size], "shared expert size", &bad)?;
                Some(SharedExpertConfig { ffn, gated: true })
            }
            _ => None,
        };
        let moe = MoeConfig {
            hidden_size,
            expert_ffn,
            routing,
            capacity_factor: None,
            shared_expert,
            weight_dtype: DType::F32,
            decode_max_tokens: 4,
        };
        moe.validate().map_err(|e| bad(e.to_string()))?;

        // Which layers are MoE.
        let sparse_layers: Vec<bool> = if qwen {
            let step = raw.decoder_sparse_step.unwrap_or(1);
            if step == 0 {
                return Err(bad("`decoder_sparse_step` must be positive".into()));
            }
            let dense = raw.mlp_only_layers.clone().unwrap_or_default();
            (0..num_layers)
                .map(|i| !dense.contains(&i) && (i + 1) % step == 0)
                .collect()
        } else {
            vec![true; num_layers]
        };
        let dense_ffn = match raw.intermediate_size {
            Some(f) => positive(f, "intermediate_size")?,
            None if sparse_layers.iter().all(|s| *s) => 0,
            None => {
                return Err(bad(
                    "missing required field `intermediate_size` (the ffn size of the dense layers)".into(),
                ))
            }
        };
        product(&[dense_ffn, hidden_size], "dense ffn size", &bad)?;

        // Attention extras.
        let attention_bias = match family {
            Family::Mixtral => false,
            Family::Qwen2Moe => raw.qkv_bias.unwrap_or(true),
            Family::Qwen3Moe | Family::Olmoe | Family::GraniteMoe => {
                if raw.attention_bias == Some(true) {
                    return Err(bad(format!(
                        "attention_bias = true (biases on q, k, v and o_proj in {architecture}) is not supported yet"
                    )));
                }
                false
            }
        };
        let clip_qkv = match (family, raw.clip_qkv) {
            (Family::Olmoe, Some(c)) if c.is_finite() && c > 0.0 => Some(c as f32),
            (Family::Olmoe, Some(c)) => return Err(bad(format!("clip_qkv = {c} must be positive"))),
            _ => None,
        };
        let granite = family == Family::GraniteMoe;
        let multiplier = |v: Option<f64>, field: &str| -> Result<f32> {
            let v = if granite { v.unwrap_or(1.0) } else { 1.0 };
            if !v.is_finite() || (field == "logits_scaling" && v == 0.0) {
                return Err(bad(format!("`{field}` = {v} must be a finite, non-zero number")));
            }
            Ok(v as f32)
        };
        let attention_scale = if granite {
            multiplier(raw.attention_multiplier, "attention_multiplier")?
        } else {
            1.0 / (head_dim as f32).sqrt()
        };

        let bos_token_id = match raw.bos_token_id {
            Some(id) => Some(id),
            None if present("bos_token_id") => None,
            None => defaults.bos,
        };
        let eos_token_ids = match raw.eos_token_id {
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
            None if present("eos_token_id") => vec![],
            None => defaults.eos.into_iter().collect(),
        };
        Ok(Self {
            family,
            architecture,
            vocab_size,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta: rope_theta as f32,
            rotary_dim,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias,
            qk_norm: match family {
                Family::Qwen3Moe => QkNorm::PerHead,
                Family::Olmoe => QkNorm::Full,
                _ => QkNorm::None,
            },
            clip_qkv,
            moe,
            dense_ffn,
            sparse_layers,
            embedding_multiplier: multiplier(raw.embedding_multiplier, "embedding_multiplier")?,
            residual_multiplier: multiplier(raw.residual_multiplier, "residual_multiplier")?,
            attention_scale,
            logits_scaling: multiplier(raw.logits_scaling, "logits_scaling")?,
            bos_token_id,
            eos_token_ids,
            torch_dtype: raw.dtype.or(raw.torch_dtype),
        })
    }
}

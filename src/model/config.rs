//! `config.json` of a Hugging Face MoE checkpoint, parsed into one `ModelConfig`
//! for the generic decoder: the fields every family shares are read here, with the
//! defaults most families have; each family's module ([`crate::model::families`])
//! then applies what it does differently. Shared facts (transformers 5.23/5.24):
//! - head_dim = `head_dim` or hidden_size / num_attention_heads; rope theta from
//!   `rope_parameters.rope_theta` (transformers 5) or `rope_theta`, partial rotary from
//!   `partial_rotary_factor` in either place; RoPE scaling (linear, llama3, yarn) from
//!   `rope_parameters` or the legacy `rope_scaling` (modeling_rope_utils.py).
//! - experts: `num_experts`, `num_local_experts`, `n_routed_experts` or
//!   `moe_num_experts`; top-k: `num_experts_per_tok` or `moe_k`.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::families;
use crate::moe::MoeConfig;
use crate::ops::rope::{yarn_mscale, RopeScaling};

pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "OlmoeForCausalLM",
    "GraniteMoeForCausalLM",
    "GptOssForCausalLM",
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
    "Glm4MoeForCausalLM",
    "Ernie4_5_MoeForCausalLM",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
    Olmoe,
    GraniteMoe,
    GptOss,
    DeepseekV2,
    DeepseekV3,
    Glm4Moe,
    Ernie45Moe,
}

/// Where q/k RMSNorms apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Over each head's head_dim (Qwen3-MoE).
    PerHead,
    /// Over the whole q / k projection (OLMoE).
    Full,
}

/// Multi-head latent attention (DeepSeek-V2/V3): keys and values of every head come
/// from one compressed latent per position, plus a RoPE key shared by the heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaConfig {
    /// Queries through a low-rank `q_a_proj` -> RMSNorm -> `q_b_proj`; `None`: `q_proj`.
    pub q_lora_rank: Option<usize>,
    /// Width of the compressed latent (the cached part besides the RoPE key).
    pub kv_lora_rank: usize,
    /// Per head: query/key dims without RoPE, with RoPE, and value dims.
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// Rotated dimensions of each head (head_dim * partial_rotary_factor).
    pub rotary_dim: usize,
    /// Frequency scaling of RoPE (`rope_parameters` / `rope_scaling`).
    pub rope_scaling: RopeScaling,
    /// RoPE on interleaved pairs (2i, 2i + 1) instead of halves (i, i + rot/2): GGUF
    /// files of llama-style models, whose q/k rows llama.cpp's converter permuted.
    pub rope_interleaved: bool,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub qk_norm: QkNorm,
    pub clip_qkv: Option<f32>,
    pub moe: MoeConfig,
    /// Intermediate size of dense (non-MoE) layers.
    pub dense_ffn: usize,
    /// Per layer: MoE (true) or dense MLP.
    pub sparse_layers: Vec<bool>,
    pub embedding_multiplier: f32,
    pub residual_multiplier: f32,
    pub attention_scale: f32,
    pub logits_scaling: f32,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub torch_dtype: Option<String>,
    /// Experts stored one tensor per expert under Qwen-style names whatever the family
    /// (GGUF files, whose stacked expert tensors are viewed per expert).
    pub per_expert_names: bool,
    /// Per layer: the sliding window of its attention (gpt-oss's `layer_types`), or
    /// `None` for full causal attention.
    pub attention_windows: Vec<Option<usize>>,
    /// A learned sink logit per head and layer (`self_attn.sinks`, gpt-oss).
    pub attention_sinks: bool,
    /// `o_proj` has a bias too (gpt-oss's `attention_bias` covers q, k, v and o).
    pub output_bias: bool,
    /// Routed experts stored as Hugging Face's MXFP4 (`*_blocks` + `*_scales`,
    /// `quantization_config.quant_method = "mxfp4"`).
    pub experts_mxfp4: bool,
    /// Multi-head latent attention instead of grouped-query attention; `head_dim` is
    /// then the query/key head width (nope + rope) and `rotary_dim` the RoPE part.
    pub mla: Option<MlaConfig>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize, Default, Clone)]
pub(crate) struct RopeParameters {
    pub(crate) rope_theta: Option<f64>,
    pub(crate) partial_rotary_factor: Option<f64>,
    pub(crate) rope_type: Option<String>,
    /// The legacy `rope_scaling` spelling of rope_type.
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) factor: Option<f64>,
    pub(crate) low_freq_factor: Option<f64>,
    pub(crate) high_freq_factor: Option<f64>,
    pub(crate) original_max_position_embeddings: Option<f64>,
    pub(crate) beta_fast: Option<f64>,
    pub(crate) beta_slow: Option<f64>,
    pub(crate) attention_factor: Option<f64>,
    pub(crate) mscale: Option<f64>,
    pub(crate) mscale_all_dim: Option<f64>,
    pub(crate) truncate: Option<bool>,
}

impl RopeParameters {
    /// The scaling these parameters ask for (`max_positions`: the config's
    /// max_position_embeddings, YaRN's default original length).
    fn scaling(&self, source: &str, max_positions: usize) -> Result<RopeScaling> {
        let kind = self.rope_type.as_deref().or(self.kind.as_deref()).unwrap_or("default");
        let need = |v: Option<f64>, field: &str| {
            v.ok_or_else(|| Error::Config(format!("{source}: rope_type `{kind}` needs `{field}`")))
        };
        Ok(match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: need(self.factor, "factor")? as f32,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: need(self.factor, "factor")? as f32,
                low_freq_factor: need(self.low_freq_factor, "low_freq_factor")? as f32,
                high_freq_factor: need(self.high_freq_factor, "high_freq_factor")? as f32,
                original_max_positions: need(
                    self.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )? as f32,
            },
            "yarn" => {
                let original = self.original_max_position_embeddings.unwrap_or(max_positions as f64);
                let factor = self.factor.unwrap_or(max_positions as f64 / original);
                let mscale = yarn_mscale;
                let attention_factor = match (self.attention_factor, self.mscale, self.mscale_all_dim) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                };
                RopeScaling::Yarn {
                    factor,
                    original_max_positions: original,
                    beta_fast: self.beta_fast.filter(|b| *b != 0.0).unwrap_or(32.0),
                    beta_slow: self.beta_slow.filter(|b| *b != 0.0).unwrap_or(1.0),
                    attention_factor,
                    truncate: self.truncate.unwrap_or(true),
                }
            }
            // transformers scales by the config's max_position_embeddings (any
            // `original_max_position_embeddings` is not read for this type).
            "dynamic" => {
                let factor = need(self.factor, "factor")?;
                if factor < 1.0 {
                    return Err(Error::Config(format!(
                        "{source}: rope_type `dynamic` needs factor >= 1, not {factor}"
                    )));
                }
                RopeScaling::DynamicNtk {
                    factor: factor as f32,
                    max_positions: max_positions as f32,
                }
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "{source}: rope_type `{other}` is not supported (default, linear, dynamic, llama3 and yarn are)"
                )))
            }
        })
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct QuantizationConfig {
    pub(crate) quant_method: Option<String>,
}

/// The fields webmoe reads; everything optional so missing ones get named errors.
#[derive(Deserialize)]
pub(crate) struct RawConfig {
    pub(crate) architectures: Option<Vec<String>>,
    pub(crate) vocab_size: Option<usize>,
    pub(crate) hidden_size: Option<usize>,
    pub(crate) intermediate_size: Option<usize>,
    pub(crate) num_hidden_layers: Option<usize>,
    pub(crate) num_attention_heads: Option<usize>,
    pub(crate) num_key_value_heads: Option<usize>,
    pub(crate) head_dim: Option<usize>,
    pub(crate) max_position_embeddings: Option<usize>,
    pub(crate) rms_norm_eps: Option<f64>,
    pub(crate) rope_theta: Option<f64>,
    pub(crate) partial_rotary_factor: Option<f64>,
    pub(crate) rope_parameters: Option<RopeParameters>,
    pub(crate) rope_scaling: Option<RopeParameters>,
    pub(crate) tie_word_embeddings: Option<bool>,
    pub(crate) attention_bias: Option<bool>,
    pub(crate) qkv_bias: Option<bool>,
    pub(crate) clip_qkv: Option<f64>,
    pub(crate) num_local_experts: Option<usize>,
    pub(crate) num_experts: Option<usize>,
    pub(crate) num_experts_per_tok: Option<usize>,
    pub(crate) moe_intermediate_size: Option<usize>,
    pub(crate) shared_expert_intermediate_size: Option<usize>,
    pub(crate) decoder_sparse_step: Option<usize>,
    pub(crate) mlp_only_layers: Option<Vec<usize>>,
    pub(crate) embedding_multiplier: Option<f64>,
    pub(crate) residual_multiplier: Option<f64>,
    pub(crate) attention_multiplier: Option<f64>,
    pub(crate) logits_scaling: Option<f64>,
    pub(crate) bos_token_id: Option<u32>,
    pub(crate) eos_token_id: Option<OneOrMany>,
    pub(crate) torch_dtype: Option<String>,
    pub(crate) dtype: Option<String>,
    pub(crate) layer_types: Option<Vec<String>>,
    pub(crate) sliding_window: Option<usize>,
    pub(crate) swiglu_limit: Option<f64>,
    pub(crate) swiglu_alpha: Option<f64>,
    pub(crate) quantization_config: Option<QuantizationConfig>,
    pub(crate) n_routed_experts: Option<usize>,
    pub(crate) n_shared_experts: Option<usize>,
    pub(crate) first_k_dense_replace: Option<usize>,
    pub(crate) moe_layer_freq: Option<usize>,
    pub(crate) q_lora_rank: Option<usize>,
    pub(crate) kv_lora_rank: Option<usize>,
    pub(crate) qk_nope_head_dim: Option<usize>,
    pub(crate) qk_rope_head_dim: Option<usize>,
    pub(crate) v_head_dim: Option<usize>,
    pub(crate) topk_method: Option<String>,
    pub(crate) scoring_func: Option<String>,
    pub(crate) n_group: Option<usize>,
    pub(crate) topk_group: Option<usize>,
    pub(crate) routed_scaling_factor: Option<f64>,
    pub(crate) norm_topk_prob: Option<bool>,
    pub(crate) use_qk_norm: Option<bool>,
    pub(crate) moe_num_experts: Option<usize>,
    pub(crate) moe_k: Option<usize>,
    pub(crate) moe_num_shared_experts: Option<usize>,
    pub(crate) moe_layer_start_index: Option<i64>,
    pub(crate) moe_layer_end_index: Option<i64>,
    pub(crate) moe_layer_interval: Option<usize>,
    pub(crate) use_bias: Option<bool>,
}

impl ModelConfig {
    /// The longest context the model is made for: max_position_embeddings, or for
    /// dynamic NTK, which exists to stretch it, that times the factor.
    pub fn context_limit(&self) -> usize {
        match self.rope_scaling {
            RopeScaling::DynamicNtk { factor, .. } => (self.max_position_embeddings as f64 * factor as f64) as usize,
            _ => self.max_position_embeddings,
        }
    }

    /// Reads `dir/config.json` (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &std::path::Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(path.display(), e))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses config.json text; `source` names the file in errors.
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("{source}: invalid config.json: {e}")))?;
        let bad = |m: String| Error::Config(format!("{source}: {m}"));
        let need = |v: Option<usize>, field: &str| v.ok_or_else(|| bad(format!("missing required field `{field}`")));

        let architecture = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .ok_or_else(|| bad("missing required field `architectures`".into()))?;
        let family = match architecture.as_str() {
            "MixtralForCausalLM" => Family::Mixtral,
            "Qwen2MoeForCausalLM" => Family::Qwen2Moe,
            "Qwen3MoeForCausalLM" => Family::Qwen3Moe,
            "OlmoeForCausalLM" => Family::Olmoe,
            "GraniteMoeForCausalLM" => Family::GraniteMoe,
            "GptOssForCausalLM" => Family::GptOss,
            "DeepseekV2ForCausalLM" => Family::DeepseekV2,
            "DeepseekV3ForCausalLM" => Family::DeepseekV3,
            "Glm4MoeForCausalLM" => Family::Glm4Moe,
            "Ernie4_5_MoeForCausalLM" => Family::Ernie45Moe,
            other => {
                return Err(Error::Unsupported(format!(
                    "{source}: architecture `{other}` is not supported; supported: {}",
                    SUPPORTED_ARCHITECTURES.join(", ")
                )))
            }
        };
        // transformers 5 writes `rope_parameters`; older configs `rope_scaling`.
        let rope = raw
            .rope_parameters
            .clone()
            .or(raw.rope_scaling.clone())
            .unwrap_or_default();

        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let vocab_size = need(raw.vocab_size, "vocab_size")?;
        let intermediate_size = need(raw.intermediate_size, "intermediate_size")?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads = {num_heads} must be a positive multiple of num_key_value_heads = {num_kv_heads}"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(h) => h,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(bad(format!(
                    "hidden_size {hidden_size} is not divisible by {num_heads} heads"
                )))
            }
        };
        let partial = rope.partial_rotary_factor.or(raw.partial_rotary_factor).unwrap_or(1.0);
        let rotary_dim = ((head_dim as f64 * partial) as usize) & !1;
        if head_dim == 0 || rotary_dim == 0 || rotary_dim > head_dim {
            return Err(bad(format!(
                "head_dim {head_dim} with partial_rotary_factor {partial} leaves no rotary dims"
            )));
        }
        let rope_theta = rope.rope_theta.or(raw.rope_theta).unwrap_or(1.0e4) as f32;

        // transformers 5 may save either name for any family (attribute_map).
        let num_experts = need(
            raw.num_experts
                .or(raw.num_local_experts)
                .or(raw.n_routed_experts)
                .or(raw.moe_num_experts),
            "num_experts (or num_local_experts, n_routed_experts, moe_num_experts)",
        )?;
        let top_k = need(raw.num_experts_per_tok.or(raw.moe_k), "num_experts_per_tok (or moe_k)")?;
        let mut moe = MoeConfig::new(hidden_size, intermediate_size, num_experts, top_k);
        moe.routing.renormalize = raw.norm_topk_prob.unwrap_or(false);
        let eos_token_ids = match &raw.eos_token_id {
            None => vec![],
            Some(OneOrMany::One(id)) => vec![*id],
            Some(OneOrMany::Many(ids)) => ids.clone(),
        };
        let max_position_embeddings = need(raw.max_position_embeddings, "max_position_embeddings")?;
        // What most families are; each family's module changes what it does differently.
        let mut config = Self {
            family,
            architecture,
            vocab_size,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta,
            rotary_dim,
            rope_scaling: rope.scaling(source, max_position_embeddings)?,
            rope_interleaved: false,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias: raw.attention_bias.unwrap_or(false),
            qk_norm: QkNorm::None,
            clip_qkv: None,
            moe,
            dense_ffn: intermediate_size,
            sparse_layers: vec![true; num_layers],
            embedding_multiplier: 1.0,
            residual_multiplier: 1.0,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            logits_scaling: 1.0,
            bos_token_id: raw.bos_token_id,
            eos_token_ids,
            torch_dtype: raw.torch_dtype.clone().or(raw.dtype.clone()),
            per_expert_names: false,
            attention_windows: vec![None; num_layers],
            attention_sinks: false,
            output_bias: false,
            experts_mxfp4: false,
            mla: None,
        };
        families::configure(&raw, &rope, &mut config, source)?;
        config.moe.validate().map_err(|e| bad(e.to_string()))?;
        Ok(config)
    }
}

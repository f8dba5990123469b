//! Qwen2-MoE, Qwen3-MoE and OLMoE (`Qwen2MoeForCausalLM`, `Qwen3MoeForCausalLM`,
//! `OlmoeForCausalLM`), checked against transformers 5.23; they share Qwen's tensor
//! names (`mlp.gate`, `mlp.experts.N.{gate,up,down}_proj`, `mlp.shared_expert*`):
//! - Qwen2-MoE: `qkv_bias` (default true); a shared expert of
//!   `shared_expert_intermediate_size` gated by sigmoid; experts of
//!   `moe_intermediate_size`; layer i is sparse when i is not in `mlp_only_layers` and
//!   (i + 1) % `decoder_sparse_step` == 0.
//! - Qwen3-MoE: per-head q/k RMSNorm over head_dim; `norm_topk_prob`; the same
//!   expert size and sparse rule.
//! - OLMoE: q/k RMSNorm over the whole projection, then `clip_qkv` clamps q, k, v;
//!   experts of `intermediate_size`.

use crate::error::{Error, Result};
use crate::model::config::{Family, ModelConfig, QkNorm, RawConfig, RopeParameters};
use crate::model::names::{ExpertTensors, MoeNames};
use crate::moe::SharedExpertConfig;

pub(crate) fn configure(raw: &RawConfig, _rope: &RopeParameters, config: &mut ModelConfig, source: &str) -> Result<()> {
    let need = |v: Option<usize>, field: &str| {
        v.ok_or_else(|| Error::Config(format!("{source}: missing required field `{field}`")))
    };
    match config.family {
        Family::Olmoe => {
            config.qk_norm = QkNorm::Full;
            config.clip_qkv = raw.clip_qkv.map(|c| c as f32);
            return Ok(());
        }
        Family::Qwen2Moe => {
            config.attention_bias = raw.qkv_bias.or(raw.attention_bias).unwrap_or(true);
            config.moe.shared_expert = Some(SharedExpertConfig {
                ffn: need(raw.shared_expert_intermediate_size, "shared_expert_intermediate_size")?,
                gated: true,
            });
        }
        _ => config.qk_norm = QkNorm::PerHead,
    }
    config.moe.expert_ffn = need(raw.moe_intermediate_size, "moe_intermediate_size")?;
    let step = raw.decoder_sparse_step.unwrap_or(1).max(1);
    let dense = raw.mlp_only_layers.clone().unwrap_or_default();
    config.sparse_layers = (0..config.num_layers)
        .map(|i| !dense.contains(&i) && (i + 1) % step == 0)
        .collect();
    Ok(())
}

/// Qwen's per-expert names; DeepSeek, GLM-4-MoE and ERNIE-4.5-MoE use them too, with
/// `shared` = `shared_experts`.
pub fn moe_names(layer_prefix: &str, shared: &str) -> MoeNames {
    MoeNames::new(
        layer_prefix,
        format!("{layer_prefix}.mlp.gate.weight"),
        ExpertTensors::PerExpert {
            prefix: format!("{layer_prefix}.mlp.experts"),
            gate: "gate_proj.weight",
            up: "up_proj.weight",
            down: "down_proj.weight",
        },
        shared,
    )
}

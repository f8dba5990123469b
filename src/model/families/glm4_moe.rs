//! GLM-4-MoE (`Glm4MoeForCausalLM`: GLM-4.5, GLM-4.5-Air), checked against
//! transformers 5.24's modeling_glm4_moe.py: grouped-query attention with q/k/v biases
//! (`attention_bias`; o_proj has none) and, with `use_qk_norm`, an RMSNorm over each
//! head's head_dim after the biases and before RoPE; partial RoPE by halves on the
//! first `head_dim * partial_rotary_factor` dims; layers below
//! `first_k_dense_replace` dense (`intermediate_size`), the rest MoE with ungated
//! shared experts of `n_shared_experts * moe_intermediate_size`; DeepSeek-V3 routing:
//! sigmoid scores, `e_score_correction_bias` for choosing only, the `topk_group` best
//! of `n_group` groups (scored by their two best), weights renormalised when
//! `norm_topk_prob`, times `routed_scaling_factor`. The router weight and bias are
//! f32 even in bf16 checkpoints. Experts and names as DeepSeek's.

use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, QkNorm, RawConfig, RopeParameters};
use crate::moe::SharedExpertConfig;
use crate::ops::routing::{GroupLimit, GroupScore, RoutingConfig, Scoring, TopKOrder};

/// Reads GLM-4-MoE's own fields into `config` (the generic ones are already set).
pub(crate) fn configure(raw: &RawConfig, _rope: &RopeParameters, config: &mut ModelConfig, source: &str) -> Result<()> {
    let bad = |m: String| Error::Config(format!("{source}: {m}"));
    config.moe.expert_ffn = raw
        .moe_intermediate_size
        .ok_or_else(|| bad("missing required field `moe_intermediate_size`".into()))?;
    if raw.use_qk_norm.unwrap_or(false) {
        config.qk_norm = QkNorm::PerHead;
    }
    let first_dense = raw.first_k_dense_replace.unwrap_or(0);
    config.sparse_layers = (0..config.num_layers).map(|i| i >= first_dense).collect();
    let shared = raw.n_shared_experts.unwrap_or(0);
    config.moe.shared_expert = (shared > 0).then_some(SharedExpertConfig {
        ffn: shared * config.moe.expert_ffn,
        gated: false,
    });
    let (e, k) = (config.moe.num_experts(), config.moe.top_k());
    let mut routing = RoutingConfig::softmax_top_k(e, k, raw.norm_topk_prob.unwrap_or(false));
    routing.order = TopKOrder::ScoreThenTopK;
    routing.scoring = Scoring::Sigmoid;
    routing.scaling = raw.routed_scaling_factor.unwrap_or(1.0) as f32;
    let n_group = raw.n_group.unwrap_or(1);
    routing.group_limit = (n_group > 1).then_some(GroupLimit {
        n_group,
        topk_group: raw.topk_group.unwrap_or(n_group),
        score: GroupScore::TopTwoSum,
    });
    routing.validate().map_err(|e| bad(e.to_string()))?;
    config.moe.routing = routing;
    config.moe.validate().map_err(|e| bad(e.to_string()))?;
    Ok(())
}

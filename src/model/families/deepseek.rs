//! DeepSeek-V2 / V2-Lite / V3 (`DeepseekV2ForCausalLM`, `DeepseekV3ForCausalLM`),
//! checked against transformers 5.24's modeling_deepseek_v2.py / _v3.py:
//! - attention: multi-head latent attention ([`crate::model::attention`]): queries from
//!   `q_proj`, or `q_a_proj` -> RMSNorm -> `q_b_proj` when `q_lora_rank` is set;
//!   `kv_a_proj_with_mqa` gives the latent (first `kv_lora_rank`) and one RoPE key
//!   shared by the heads; `kv_b_proj` holds per head `qk_nope_head_dim` key rows then
//!   `v_head_dim` value rows. RoPE on interleaved pairs. The two low-rank norms use
//!   eps 1e-6 whatever `rms_norm_eps` says. Softmax scale
//!   `qk_head_dim^-0.5 * mscale(factor, mscale_all_dim)^2` under YaRN.
//! - layers below `first_k_dense_replace` are dense (`intermediate_size`); later ones
//!   are MoE when `i % moe_layer_freq == 0`, with ungated shared experts of
//!   `n_shared_experts * moe_intermediate_size` (`mlp.shared_experts.*`).
//! - routing, V2: softmax over all experts; `group_limited_greedy` keeps the
//!   `topk_group` groups with the best single score; weights are the probabilities
//!   times `routed_scaling_factor` (renormalised instead, unscaled, when
//!   `norm_topk_prob`, as DeepSeek's own code does; every released V2 sets it false).
//!   V3: sigmoid; `e_score_correction_bias` is added for choosing only; groups scored
//!   by the sum of their two best; weights are the unbiased scores, renormalised when
//!   `norm_topk_prob`, times `routed_scaling_factor`.

use crate::error::{Error, Result};
use crate::model::config::{Family, MlaConfig, ModelConfig, RawConfig, RopeParameters};
use crate::moe::SharedExpertConfig;
use crate::ops::rope::{yarn_mscale, RopeScaling};
use crate::ops::routing::{GroupLimit, GroupScore, RoutingConfig, Scoring, TopKOrder};

/// The eps of `q_a_layernorm` and `kv_a_layernorm` (transformers builds them without
/// the config's `rms_norm_eps`).
pub const LOW_RANK_NORM_EPS: f32 = 1e-6;

/// Reads DeepSeek's own fields into `config` (the generic ones are already set).
pub(crate) fn configure(raw: &RawConfig, rope: &RopeParameters, config: &mut ModelConfig, source: &str) -> Result<()> {
    let bad = |m: String| Error::Config(format!("{source}: {m}"));
    let need = |v: Option<usize>, field: &str| v.ok_or_else(|| bad(format!("missing required field `{field}`")));
    let v3 = config.family == Family::DeepseekV3;
    config.moe.expert_ffn = need(raw.moe_intermediate_size, "moe_intermediate_size")?;
    let mla = MlaConfig {
        q_lora_rank: raw.q_lora_rank.filter(|r| *r > 0),
        kv_lora_rank: need(raw.kv_lora_rank, "kv_lora_rank")?,
        qk_nope_head_dim: need(raw.qk_nope_head_dim, "qk_nope_head_dim")?,
        qk_rope_head_dim: need(raw.qk_rope_head_dim, "qk_rope_head_dim")?,
        v_head_dim: need(raw.v_head_dim, "v_head_dim")?,
    };
    for (field, n) in [
        ("kv_lora_rank", mla.kv_lora_rank),
        ("qk_nope_head_dim", mla.qk_nope_head_dim),
        ("v_head_dim", mla.v_head_dim),
    ] {
        if n == 0 {
            return Err(bad(format!("`{field}` must be positive")));
        }
    }
    if mla.qk_rope_head_dim == 0 || !mla.qk_rope_head_dim.is_multiple_of(2) {
        return Err(bad(format!(
            "`qk_rope_head_dim` = {} must be a positive even number",
            mla.qk_rope_head_dim
        )));
    }
    let qk_head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim;
    config.mla = Some(mla);
    config.head_dim = qk_head_dim;
    config.rotary_dim = mla.qk_rope_head_dim;
    config.num_kv_heads = config.num_heads;
    config.rope_interleaved = true;
    config.attention_scale = (qk_head_dim as f32).powf(-0.5);
    if let (RopeScaling::Yarn { factor, .. }, Some(all)) = (&config.rope_scaling, rope.mscale_all_dim) {
        if all != 0.0 {
            let mscale = yarn_mscale(*factor, all) as f32;
            config.attention_scale *= mscale * mscale;
        }
    }

    // Dense first layers, then MoE every moe_layer_freq layers.
    let first_dense = raw.first_k_dense_replace.unwrap_or(0);
    let every = raw.moe_layer_freq.unwrap_or(1).max(1);
    config.sparse_layers = (0..config.num_layers)
        .map(|i| i >= first_dense && i % every == 0)
        .collect();
    let shared = raw.n_shared_experts.unwrap_or(0);
    config.moe.shared_expert = (shared > 0).then_some(SharedExpertConfig {
        ffn: shared * config.moe.expert_ffn,
        gated: false,
    });

    // Routing.
    let (e, k) = (config.moe.num_experts(), config.moe.top_k());
    let normalize = raw.norm_topk_prob.unwrap_or(false);
    let scaling = raw.routed_scaling_factor.unwrap_or(1.0) as f32;
    let method = raw
        .topk_method
        .as_deref()
        .unwrap_or(if v3 { "noaux_tc" } else { "greedy" });
    let scoring = raw
        .scoring_func
        .as_deref()
        .unwrap_or(if v3 { "sigmoid" } else { "softmax" });
    let mut routing = RoutingConfig::softmax_top_k(e, k, false);
    routing.order = TopKOrder::ScoreThenTopK;
    routing.scoring = match scoring {
        "softmax" => Scoring::Softmax,
        "sigmoid" => Scoring::Sigmoid,
        other => {
            return Err(bad(format!(
                "scoring_func `{other}` is not supported (softmax, sigmoid)"
            )))
        }
    };
    let group = |score| -> Result<Option<GroupLimit>> {
        Ok(Some(GroupLimit {
            n_group: need(raw.n_group, "n_group")?,
            topk_group: need(raw.topk_group, "topk_group")?,
            score,
        }))
    };
    routing.group_limit = match method {
        "greedy" => None,
        "group_limited_greedy" => group(GroupScore::Max)?,
        "noaux_tc" => group(GroupScore::TopTwoSum)?,
        other => {
            return Err(bad(format!(
                "topk_method `{other}` is not supported (greedy, group_limited_greedy, noaux_tc)"
            )))
        }
    };
    if v3 {
        routing.renormalize = normalize;
        routing.scaling = scaling;
    } else if normalize && k > 1 {
        routing.renormalize = true;
    } else {
        routing.scaling = scaling;
    }
    routing.validate().map_err(|e| bad(e.to_string()))?;
    config.moe.routing = routing;
    config.moe.validate().map_err(|e| bad(e.to_string()))?;
    Ok(())
}

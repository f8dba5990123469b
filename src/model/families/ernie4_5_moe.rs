//! ERNIE-4.5-MoE (`Ernie4_5_MoeForCausalLM`: ERNIE-4.5-21B-A3B, -300B-A47B), checked
//! against transformers 5.24's modeling_ernie4_5_moe.py: grouped-query attention
//! without biases (`use_bias` false in every release; true is refused) and RoPE on
//! interleaved pairs over the whole head; layer i is MoE when `(i + 1) %
//! moe_layer_interval == 0` and `moe_layer_start_index <= i <= moe_layer_end_index`
//! (-1: the last layer), else dense (`intermediate_size`); `moe_num_experts` experts,
//! `moe_k` per token, `moe_num_shared_experts * moe_intermediate_size` of ungated
//! shared experts; routing: softmax over all experts, the top k of the probabilities
//! plus `moe_statics.e_score_correction_bias` (`[1, E]`), weights the unbiased
//! probabilities renormalised. Tied embeddings in the released models.

use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, RawConfig, RopeParameters};
use crate::moe::SharedExpertConfig;
use crate::ops::routing::{RoutingConfig, TopKOrder};

/// Reads ERNIE-4.5-MoE's own fields into `config` (the generic ones are already set).
pub(crate) fn configure(raw: &RawConfig, _rope: &RopeParameters, config: &mut ModelConfig, source: &str) -> Result<()> {
    let bad = |m: String| Error::Config(format!("{source}: {m}"));
    config.moe.expert_ffn = raw
        .moe_intermediate_size
        .ok_or_else(|| bad("missing required field `moe_intermediate_size`".into()))?;
    if raw.use_bias.unwrap_or(false) {
        return Err(Error::Unsupported(format!(
            "{source}: `use_bias` = true (biases on every projection) is not supported; released ERNIE-4.5 models have none"
        )));
    }
    config.rope_interleaved = true;
    let layers = config.num_layers as i64;
    let start = raw.moe_layer_start_index.unwrap_or(0);
    let end = match raw.moe_layer_end_index.unwrap_or(-1) {
        -1 => layers - 1,
        end => end,
    };
    let every = raw.moe_layer_interval.unwrap_or(1);
    if every == 0 || start < 0 || end >= layers {
        return Err(bad(format!(
            "MoE layers {start}..={end} every {every} do not fit {layers} layers (moe_layer_start_index, moe_layer_end_index, moe_layer_interval)"
        )));
    }
    config.sparse_layers = (0..layers)
        .map(|i| (i + 1) % every as i64 == 0 && start <= i && i <= end)
        .collect();
    let shared = raw.moe_num_shared_experts.unwrap_or(0);
    config.moe.shared_expert = (shared > 0).then_some(SharedExpertConfig {
        ffn: shared * config.moe.expert_ffn,
        gated: false,
    });
    let (e, k) = (config.moe.num_experts(), config.moe.top_k());
    let mut routing = RoutingConfig::softmax_top_k(e, k, true);
    routing.order = TopKOrder::ScoreThenTopK;
    routing.validate().map_err(|e| bad(e.to_string()))?;
    config.moe.routing = routing;
    config.moe.validate().map_err(|e| bad(e.to_string()))?;
    Ok(())
}

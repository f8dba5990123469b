//! GraniteMoE (`GraniteMoeForCausalLM`), checked against transformers 5.23:
//! `embedding_multiplier`, `residual_multiplier`, `attention_multiplier` (the attention
//! scale), `logits_scaling` (logits divided by it); router top-k on logits then
//! softmax; experts fused: `block_sparse_moe.input_linear` `[E, 2 ffn, d]` (gate rows,
//! then up rows) and `output_linear` `[E, d, ffn]`, router `block_sparse_moe.router.layer`.

use crate::error::Result;
use crate::model::config::{ModelConfig, RawConfig, RopeParameters};
use crate::model::names::{ExpertTensors, MoeNames};
use crate::ops::routing::TopKOrder;

pub(crate) fn configure(
    raw: &RawConfig,
    _rope: &RopeParameters,
    config: &mut ModelConfig,
    _source: &str,
) -> Result<()> {
    config.moe.routing.order = TopKOrder::TopKThenSoftmax;
    let multiplier = |v: Option<f64>| v.unwrap_or(1.0) as f32;
    config.embedding_multiplier = multiplier(raw.embedding_multiplier);
    config.residual_multiplier = multiplier(raw.residual_multiplier);
    config.logits_scaling = multiplier(raw.logits_scaling);
    config.attention_scale = multiplier(raw.attention_multiplier);
    Ok(())
}

pub fn moe_names(layer_prefix: &str) -> MoeNames {
    let m = format!("{layer_prefix}.block_sparse_moe");
    MoeNames::new(
        layer_prefix,
        format!("{m}.router.layer.weight"),
        ExpertTensors::Fused {
            input: format!("{m}.input_linear.weight"),
            output: format!("{m}.output_linear.weight"),
        },
        "shared_expert",
    )
}

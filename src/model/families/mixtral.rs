//! Mixtral (`MixtralForCausalLM`), checked against transformers 5.23: experts
//! `num_local_experts` of `intermediate_size`; router softmax -> top-k -> renormalise
//! (= top-k on logits then softmax); default rope theta 1e6; tensors
//! `block_sparse_moe.gate` and `block_sparse_moe.experts.N.{w1 (gate), w3 (up), w2 (down)}`.

use crate::error::Result;
use crate::model::config::{ModelConfig, RawConfig, RopeParameters};
use crate::model::names::{ExpertTensors, MoeNames};
use crate::ops::routing::TopKOrder;

pub(crate) fn configure(raw: &RawConfig, rope: &RopeParameters, config: &mut ModelConfig, _source: &str) -> Result<()> {
    config.moe.routing.order = TopKOrder::TopKThenSoftmax;
    if rope.rope_theta.or(raw.rope_theta).is_none() {
        config.rope_theta = 1.0e6;
    }
    Ok(())
}

pub fn moe_names(layer_prefix: &str) -> MoeNames {
    MoeNames::new(
        layer_prefix,
        format!("{layer_prefix}.block_sparse_moe.gate.weight"),
        ExpertTensors::PerExpert {
            prefix: format!("{layer_prefix}.block_sparse_moe.experts"),
            gate: "w1.weight",
            up: "w3.weight",
            down: "w2.weight",
        },
        "shared_expert",
    )
}

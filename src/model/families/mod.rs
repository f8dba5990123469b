//! One module per model family that needs more than the generic decoder's switches:
//! its config mapping and tensor names in one place.
pub mod deepseek;
pub mod ernie4_5_moe;
pub mod glm4_moe;
pub mod gpt_oss;

use crate::model::config::{Family, ModelConfig};
use crate::ops::routing::Scoring;

/// The tensor holding layer `layer_prefix`'s router selection bias (added to the
/// scores that choose experts, not to the weights) and its shape, for the families
/// that have one: DeepSeek-V3 and GLM-4-MoE (`mlp.gate.e_score_correction_bias`
/// `[E]`), ERNIE-4.5-MoE (`mlp.moe_statics.e_score_correction_bias` `[1, E]`).
pub fn selection_bias(config: &ModelConfig, layer_prefix: &str) -> Option<(String, Vec<usize>)> {
    let e = config.moe.num_experts();
    match config.family {
        Family::DeepseekV3 if config.moe.routing.scoring == Scoring::Sigmoid => {
            Some((format!("{layer_prefix}.mlp.gate.e_score_correction_bias"), vec![e]))
        }
        Family::Glm4Moe => Some((format!("{layer_prefix}.mlp.gate.e_score_correction_bias"), vec![e])),
        Family::Ernie45Moe => Some((
            format!("{layer_prefix}.mlp.moe_statics.e_score_correction_bias"),
            vec![1, e],
        )),
        _ => None,
    }
}

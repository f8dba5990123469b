//! One module per model family: its config mapping (what it does differently from
//! the generic decoder's defaults) and its tensor names.
pub mod deepseek;
pub mod ernie4_5_moe;
pub mod glm4_moe;
pub mod gpt_oss;
pub mod granitemoe;
pub mod mixtral;
pub mod qwen_moe;

use crate::error::{Error, Result};
use crate::model::config::{Family, ModelConfig, RawConfig, RopeParameters};
use crate::model::names::MoeNames;
use crate::ops::routing::Scoring;

/// Applies `config`'s family's own fields of `raw` (the generic ones are set).
pub(crate) fn configure(raw: &RawConfig, rope: &RopeParameters, config: &mut ModelConfig, source: &str) -> Result<()> {
    let quant_method = raw.quantization_config.as_ref().and_then(|q| q.quant_method.as_deref());
    if let (Some(method), false) = (quant_method, config.family == Family::GptOss) {
        return Err(Error::Config(format!(
            "{source}: quantization_config.quant_method `{method}` is not supported for {}",
            config.architecture
        )));
    }
    match config.family {
        Family::Mixtral => mixtral::configure(raw, rope, config, source),
        Family::Qwen2Moe | Family::Qwen3Moe | Family::Olmoe => qwen_moe::configure(raw, rope, config, source),
        Family::GraniteMoe => granitemoe::configure(raw, rope, config, source),
        Family::GptOss => gpt_oss::configure(raw, rope, config, source),
        Family::DeepseekV2 | Family::DeepseekV3 => deepseek::configure(raw, rope, config, source),
        Family::Glm4Moe => glm4_moe::configure(raw, rope, config, source),
        Family::Ernie45Moe => ernie4_5_moe::configure(raw, rope, config, source),
    }
}

/// The MoE tensor names of the layer at `layer_prefix` in `family`'s checkpoints.
pub fn moe_names(family: Family, layer_prefix: &str) -> MoeNames {
    match family {
        Family::Mixtral => mixtral::moe_names(layer_prefix),
        Family::GraniteMoe => granitemoe::moe_names(layer_prefix),
        Family::GptOss => gpt_oss::moe_names(layer_prefix),
        Family::Qwen2Moe | Family::Qwen3Moe | Family::Olmoe => qwen_moe::moe_names(layer_prefix, "shared_expert"),
        Family::DeepseekV2 | Family::DeepseekV3 | Family::Glm4Moe | Family::Ernie45Moe => {
            qwen_moe::moe_names(layer_prefix, "shared_experts")
        }
    }
}

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

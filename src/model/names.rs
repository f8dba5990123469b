//! Hugging Face tensor names of each family's checkpoints: one place that says where
//! every weight of the generic decoder is stored.

use crate::model::config::Family;
use crate::model::families::gpt_oss;

pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
pub const LM_HEAD: &str = "lm_head.weight";
pub const FINAL_NORM: &str = "model.norm.weight";

/// The prefix of layer `i`'s tensors.
pub fn layer(i: usize) -> String {
    format!("model.layers.{i}")
}

/// How a family stores its routed experts.
pub enum ExpertTensors {
    /// One `[out, in]` tensor per expert and kind: `{prefix}.{e}.{suffix}`.
    PerExpert {
        prefix: String,
        gate: &'static str,
        up: &'static str,
        down: &'static str,
    },
    /// GraniteMoE: `input` is `[E, 2 ffn, d]` (gate rows, then up rows, per expert),
    /// `output` is `[E, d, ffn]`.
    Fused { input: String, output: String },
    /// gpt-oss: `[E, in, out]` tensors with interleaved gate/up columns, biases, and
    /// an MXFP4 form ([`crate::model::families::gpt_oss`]).
    GptOss(gpt_oss::ExpertNames),
}

impl ExpertTensors {
    /// The name of expert `e`'s tensor for a per-expert layout and `suffix`.
    pub fn expert(prefix: &str, e: usize, suffix: &str) -> String {
        format!("{prefix}.{e}.{suffix}")
    }
}

/// The tensor names of one MoE block.
pub struct MoeNames {
    pub router: String,
    pub experts: ExpertTensors,
    /// Shared expert (Qwen2-MoE) gate/up/down and its sigmoid gate.
    pub shared_gate: String,
    pub shared_up: String,
    pub shared_down: String,
    pub shared_expert_gate: String,
}

/// The MoE block names of layer `i` of `family`; `per_expert` asks for one tensor per
/// expert under Qwen-style names whatever the family (GGUF files).
pub fn moe(family: Family, i: usize, per_expert: bool) -> MoeNames {
    let p = layer(i);
    let family = if per_expert { Family::Qwen3Moe } else { family };
    let (router, experts) = match family {
        Family::Mixtral => (
            format!("{p}.block_sparse_moe.gate.weight"),
            ExpertTensors::PerExpert {
                prefix: format!("{p}.block_sparse_moe.experts"),
                gate: "w1.weight",
                up: "w3.weight",
                down: "w2.weight",
            },
        ),
        Family::GraniteMoe => (
            format!("{p}.block_sparse_moe.router.layer.weight"),
            ExpertTensors::Fused {
                input: format!("{p}.block_sparse_moe.input_linear.weight"),
                output: format!("{p}.block_sparse_moe.output_linear.weight"),
            },
        ),
        Family::GptOss => {
            let names = gpt_oss::expert_names(&p);
            (names.router.clone(), ExpertTensors::GptOss(names))
        }
        Family::Qwen2Moe
        | Family::Qwen3Moe
        | Family::Olmoe
        | Family::DeepseekV2
        | Family::DeepseekV3
        | Family::Glm4Moe
        | Family::Ernie45Moe => (
            format!("{p}.mlp.gate.weight"),
            ExpertTensors::PerExpert {
                prefix: format!("{p}.mlp.experts"),
                gate: "gate_proj.weight",
                up: "up_proj.weight",
                down: "down_proj.weight",
            },
        ),
    };
    // Qwen2-MoE has one `shared_expert`, DeepSeek `shared_experts` (fused into one MLP).
    let shared = match family {
        Family::DeepseekV2 | Family::DeepseekV3 | Family::Glm4Moe | Family::Ernie45Moe => "shared_experts",
        _ => "shared_expert",
    };
    MoeNames {
        router,
        experts,
        shared_gate: format!("{p}.mlp.{shared}.gate_proj.weight"),
        shared_up: format!("{p}.mlp.{shared}.up_proj.weight"),
        shared_down: format!("{p}.mlp.{shared}.down_proj.weight"),
        shared_expert_gate: format!("{p}.mlp.shared_expert_gate.weight"),
    }
}

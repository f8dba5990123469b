//! Hugging Face tensor names of each family's checkpoints: one place that says where
//! every weight of the generic decoder is stored.

use crate::model::config::Family;
use crate::model::families::{self, gpt_oss};

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

impl MoeNames {
    /// Names with the shared expert under `{layer_prefix}.mlp.{shared}` (Qwen2-MoE's
    /// `shared_expert`, DeepSeek's `shared_experts`) and its gate at
    /// `mlp.shared_expert_gate`.
    pub fn new(layer_prefix: &str, router: String, experts: ExpertTensors, shared: &str) -> Self {
        let p = layer_prefix;
        Self {
            router,
            experts,
            shared_gate: format!("{p}.mlp.{shared}.gate_proj.weight"),
            shared_up: format!("{p}.mlp.{shared}.up_proj.weight"),
            shared_down: format!("{p}.mlp.{shared}.down_proj.weight"),
            shared_expert_gate: format!("{p}.mlp.shared_expert_gate.weight"),
        }
    }
}

/// The MoE block names of layer `i` of `family` (each family's module says them);
/// `per_expert` asks for one tensor per expert under Qwen-style names whatever the
/// family (GGUF files).
pub fn moe(family: Family, i: usize, per_expert: bool) -> MoeNames {
    let family = if per_expert { Family::Qwen3Moe } else { family };
    families::moe_names(family, &layer(i))
}

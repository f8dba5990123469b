//! gpt-oss (`GptOssForCausalLM`), checked against transformers 5.24's
//! modeling_gpt_oss.py and integrations/mxfp4.py:
//! - attention: q/k/v/o with biases, a learned sink logit per head
//!   (`self_attn.sinks`, unscaled, in the softmax but without a value), and
//!   `layer_types` alternating `sliding_attention` (window `sliding_window`: a token
//!   sees the last `sliding_window` positions, itself included) and `full_attention`;
//!   YaRN RoPE by halves.
//! - router: `mlp.router.weight` `[E, d]` + `mlp.router.bias`; top-k of the logits,
//!   softmax over those k.
//! - experts: `mlp.experts.gate_up_proj` `[E, d, 2 ffn]` (applied as `x @ W`, gate and
//!   up columns interleaved: gate = `[..., ::2]`, up = `[..., 1::2]`) with
//!   `gate_up_proj_bias` `[E, 2 ffn]`, `down_proj` `[E, ffn, d]` with
//!   `down_proj_bias` `[E, d]`; activation `g' sigmoid(alpha g') (u' + 1)` with
//!   `g' = min(g, limit)`, `u' = clamp(u, -limit, limit)` (alpha 1.702, limit
//!   `swiglu_limit`, 7). MXFP4 checkpoints store the experts transposed back to
//!   `[E, out, in]` as `*_blocks` `[E, out, in / 32, 16]` (e2m1, element 2j in the low
//!   nibble of byte j) and `*_scales` `[E, out, in / 32]` (e8m0, bias 127).

use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, RawConfig, RopeParameters};
use crate::model::names::{ExpertTensors, MoeNames};
use crate::ops::expert_matmul::Activation;
use crate::ops::routing::TopKOrder;

/// Reads gpt-oss's own fields into `config` (the generic ones are already set).
pub(crate) fn configure(raw: &RawConfig, _rope: &RopeParameters, config: &mut ModelConfig, source: &str) -> Result<()> {
    let bad = |m: String| Error::Config(format!("{source}: {m}"));
    config.moe.routing.order = TopKOrder::TopKThenSoftmax;
    config.rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-5) as f32;
    let layers = config.num_layers;
    config.attention_windows = match &raw.layer_types {
        None => vec![None; layers],
        Some(types) => {
            if types.len() != layers {
                return Err(bad(format!(
                    "layer_types has {} entries for num_hidden_layers = {layers}",
                    types.len()
                )));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(None),
                    "sliding_attention" => match raw.sliding_window {
                        Some(w) if w > 0 => Ok(Some(w)),
                        _ => Err(bad(
                            "layer_types has sliding_attention but sliding_window is missing or 0".into(),
                        )),
                    },
                    other => Err(bad(format!(
                        "layer_types entry `{other}` is not supported (full_attention, sliding_attention)"
                    ))),
                })
                .collect::<Result<_>>()?
        }
    };
    config.attention_sinks = true;
    config.output_bias = config.attention_bias;
    config.moe.activation = Activation::ClampedSwiglu {
        alpha: raw.swiglu_alpha.unwrap_or(1.702) as f32,
        limit: raw.swiglu_limit.unwrap_or(7.0) as f32,
    };
    config.experts_mxfp4 = match raw.quantization_config.as_ref().and_then(|q| q.quant_method.as_deref()) {
        None => false,
        Some("mxfp4") => true,
        Some(other) => {
            return Err(bad(format!(
                "quantization_config.quant_method `{other}` is not supported for gpt-oss (mxfp4 is)"
            )))
        }
    };
    if config.experts_mxfp4 {
        for (what, n) in [
            ("hidden_size", config.hidden_size),
            ("intermediate_size", config.moe.expert_ffn),
        ] {
            if !n.is_multiple_of(32) {
                return Err(bad(format!("{what} = {n} is not a whole number of MXFP4 blocks of 32")));
            }
        }
    }
    Ok(())
}

/// The names of layer `i`'s gpt-oss MoE tensors.
pub struct ExpertNames {
    pub router: String,
    pub router_bias: String,
    /// `[E, d, 2 ffn]` (bf16/f32 checkpoints); `_blocks` / `_scales` appended for MXFP4.
    pub gate_up: String,
    pub gate_up_bias: String,
    /// `[E, ffn, d]`
    pub down: String,
    pub down_bias: String,
}

pub fn expert_names(layer_prefix: &str) -> ExpertNames {
    let m = format!("{layer_prefix}.mlp");
    ExpertNames {
        router: format!("{m}.router.weight"),
        router_bias: format!("{m}.router.bias"),
        gate_up: format!("{m}.experts.gate_up_proj"),
        gate_up_bias: format!("{m}.experts.gate_up_proj_bias"),
        down: format!("{m}.experts.down_proj"),
        down_bias: format!("{m}.experts.down_proj_bias"),
    }
}

/// The MoE names of the layer at `layer_prefix`.
pub fn moe_names(layer_prefix: &str) -> MoeNames {
    let names = expert_names(layer_prefix);
    MoeNames::new(
        layer_prefix,
        names.router.clone(),
        ExpertTensors::GptOss(names),
        "shared_expert",
    )
}

/// Gate and up biases stored apart (`[E, ffn]` each), as GGUF files hold them (Hugging
/// Face checkpoints interleave them in `gate_up_proj_bias`).
pub fn split_bias_names(layer_prefix: &str) -> (String, String) {
    let m = format!("{layer_prefix}.mlp.experts");
    (format!("{m}.gate_proj_bias"), format!("{m}.up_proj_bias"))
}

/// The attention sink logits of layer `i` (`[heads]`).
pub fn sinks_name(layer_prefix: &str) -> String {
    format!("{layer_prefix}.self_attn.sinks")
}

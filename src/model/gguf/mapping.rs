//! GGUF metadata and tensors mapped onto the generic decoder: config, names, views.

use std::collections::BTreeMap;

use super::file::{ggml_type, GgufFile, GgufTensor, MetaValue};
use super::tokenizer::tokenizer_of;
use crate::error::{Error, Result};
use crate::model::attention;
use crate::model::config::{Family, MlaConfig, ModelConfig, QkNorm};
use crate::model::families::{self, gpt_oss};
use crate::model::names::{self, ExpertTensors};
use crate::model::safetensors_io::{ShardHeader, TensorInfo};
use crate::model::tokenizer::Tokenizer;
use crate::moe::{MoeConfig, SharedExpertConfig};
use crate::ops::expert_matmul::Activation;
use crate::ops::rope::{yarn_mscale, RopeScaling};
use crate::ops::routing::{GroupLimit, GroupScore, RoutingConfig, Scoring, TopKOrder};

/// The engine's view of GGUF files: config, checkpoint shards under decoder names, tokenizer.
pub struct GgufModel {
    pub config: ModelConfig,
    pub shards: Vec<ShardHeader>,
    pub tokenizer: Option<Tokenizer>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// Why there is no tokenizer, when the file has one webmoe cannot build.
    pub tokenizer_error: Option<String>,
}

/// Maps split GGUF files (`-00001-of-0000N`, in order) to a config, a checkpoint and a tokenizer.
pub fn gguf_checkpoint(files: &[GgufFile]) -> Result<GgufModel> {
    let first = files
        .first()
        .ok_or_else(|| Error::Config("no GGUF file given".into()))?;
    let meta = &first.metadata;
    let source = &first.name;
    let config = config_of(files, meta, source)?;
    let mut shards = Vec::with_capacity(files.len());
    for file in files {
        let mut tensors = Vec::new();
        for t in &file.tensors {
            tensors.extend(decoder_tensors(t, &config)?);
        }
        tensors.sort_by_key(|t: &TensorInfo| (t.start, t.name.clone()));
        shards.push(ShardHeader {
            name: file.name.clone(),
            data_start: file.data_start,
            file_len: file.file_len,
            tensors,
        });
    }
    // A tokenizer webmoe cannot build leaves the model usable with token ids.
    let (tokenizer, tokenizer_error) = match tokenizer_of(meta, source) {
        Ok(t) => (t, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let chat_template = match meta.get("tokenizer.chat_template") {
        Some(MetaValue::Str(t)) => Some(t.clone()),
        _ => None,
    };
    Ok(GgufModel {
        config,
        shards,
        tokenizer,
        chat_template,
        tokenizer_error,
    })
}

fn info(name: String, t: &GgufTensor, shape: Vec<usize>, start: u64, len: u64) -> TensorInfo {
    let (type_name, format) = ggml_type(t.ggml_type);
    TensorInfo {
        name,
        dtype: type_name.to_string(),
        format,
        shape,
        start,
        len,
    }
}

/// The decoder's tensors held by GGUF tensor `t` (stacked experts give one view per
/// expert); tensors the decoder does not read map to nothing.
fn decoder_tensors(t: &GgufTensor, c: &ModelConfig) -> Result<Vec<TensorInfo>> {
    let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
    let whole = |name: &str| Ok(vec![info(name.to_string(), t, shape.clone(), t.start, t.len)]);
    match t.name.as_str() {
        "token_embd.weight" => return whole(names::EMBED_TOKENS),
        "output.weight" => return whole(names::LM_HEAD),
        "output_norm.weight" => return whole(names::FINAL_NORM),
        _ => {}
    }
    let Some(rest) = t.name.strip_prefix("blk.") else {
        return Ok(Vec::new());
    };
    let Some((layer, key)) = rest.split_once('.') else {
        return Ok(Vec::new());
    };
    let Ok(i) = layer.parse::<usize>() else {
        return Ok(Vec::new());
    };
    let p = names::layer(i);
    let moe = names::moe(c.family, i, true);
    let name = match key {
        "attn_norm.weight" => format!("{p}.input_layernorm.weight"),
        "ffn_norm.weight" | "post_attention_norm.weight" => format!("{p}.post_attention_layernorm.weight"),
        "attn_output.bias" => format!("{p}.self_attn.o_proj.bias"),
        "attn_q_a.weight" => format!("{p}.self_attn.q_a_proj.weight"),
        "attn_q_a_norm.weight" => format!("{p}.self_attn.q_a_layernorm.weight"),
        "attn_q_b.weight" => format!("{p}.self_attn.q_b_proj.weight"),
        "attn_kv_a_mqa.weight" => format!("{p}.self_attn.kv_a_proj_with_mqa.weight"),
        "attn_kv_a_norm.weight" => format!("{p}.self_attn.kv_a_layernorm.weight"),
        "attn_kv_b.weight" => format!("{p}.self_attn.kv_b_proj.weight"),
        "attn_k_b.weight" => attention::absorbed_k_name(&p),
        "attn_v_b.weight" => attention::absorbed_v_name(&p),
        "exp_probs_b.bias" => match families::selection_bias(c, &p) {
            Some((name, _)) => name,
            None => format!("{p}.mlp.gate.e_score_correction_bias"),
        },
        "attn_sinks.weight" => gpt_oss::sinks_name(&p),
        "ffn_gate_inp.bias" => gpt_oss::expert_names(&p).router_bias,
        "ffn_gate_exps.bias" => gpt_oss::split_bias_names(&p).0,
        "ffn_up_exps.bias" => gpt_oss::split_bias_names(&p).1,
        "ffn_down_exps.bias" => gpt_oss::expert_names(&p).down_bias,
        "attn_q.weight" => format!("{p}.self_attn.q_proj.weight"),
        "attn_k.weight" => format!("{p}.self_attn.k_proj.weight"),
        "attn_v.weight" => format!("{p}.self_attn.v_proj.weight"),
        "attn_output.weight" => format!("{p}.self_attn.o_proj.weight"),
        "attn_q.bias" => format!("{p}.self_attn.q_proj.bias"),
        "attn_k.bias" => format!("{p}.self_attn.k_proj.bias"),
        "attn_v.bias" => format!("{p}.self_attn.v_proj.bias"),
        "attn_q_norm.weight" => format!("{p}.self_attn.q_norm.weight"),
        "attn_k_norm.weight" => format!("{p}.self_attn.k_norm.weight"),
        "ffn_gate.weight" => format!("{p}.mlp.gate_proj.weight"),
        "ffn_up.weight" => format!("{p}.mlp.up_proj.weight"),
        "ffn_down.weight" => format!("{p}.mlp.down_proj.weight"),
        "ffn_gate_inp.weight" => moe.router.clone(),
        "ffn_gate_shexp.weight" => moe.shared_gate.clone(),
        "ffn_up_shexp.weight" => moe.shared_up.clone(),
        "ffn_down_shexp.weight" => moe.shared_down.clone(),
        "ffn_gate_inp_shexp.weight" => {
            // [d] in GGUF, [1, d] in Hugging Face checkpoints.
            return Ok(vec![info(
                moe.shared_expert_gate.clone(),
                t,
                vec![1, shape[0]],
                t.start,
                t.len,
            )]);
        }
        "ffn_gate_exps.weight" | "ffn_up_exps.weight" | "ffn_down_exps.weight" => {
            let ExpertTensors::PerExpert { prefix, gate, up, down } = &moe.experts else {
                return Ok(Vec::new());
            };
            let suffix = match key {
                "ffn_gate_exps.weight" => gate,
                "ffn_up_exps.weight" => up,
                _ => down,
            };
            if shape.len() != 3 || shape[0] == 0 {
                return Err(Error::Shape {
                    what: format!("GGUF tensor `{}` (experts, out, in)", t.name),
                    expected: vec![c.moe.num_experts(), 0, 0],
                    actual: shape,
                });
            }
            let per_expert = t.len / shape[0] as u64;
            return Ok((0..shape[0])
                .map(|e| {
                    let name = ExpertTensors::expert(prefix, e, suffix);
                    info(
                        name,
                        t,
                        shape[1..].to_vec(),
                        t.start + e as u64 * per_expert,
                        per_expert,
                    )
                })
                .collect());
        }
        _ => return Ok(Vec::new()),
    };
    whole(&name)
}

/// Metadata lookups naming the key and file in errors.
struct Meta<'a> {
    meta: &'a BTreeMap<String, MetaValue>,
    arch: &'a str,
    source: &'a str,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta.get(&format!("{}.{key}", self.arch))
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| {
                Error::Config(format!(
                    "{}: metadata `{}.{key}` is not an unsigned integer",
                    self.source, self.arch
                ))
            }),
        }
    }

    fn need(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| {
            Error::Config(format!(
                "{}: missing required metadata `{}.{key}`",
                self.source, self.arch
            ))
        })
    }

    fn f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
    }

    /// An error about metadata `key`, naming the file.
    fn bad(&self, key: &str, problem: &str) -> Error {
        Error::Config(format!("{}: metadata `{}.{key}` {problem}", self.source, self.arch))
    }
}

fn config_of(files: &[GgufFile], meta: &BTreeMap<String, MetaValue>, source: &str) -> Result<ModelConfig> {
    let arch = match meta.get("general.architecture") {
        Some(MetaValue::Str(a)) => a.as_str(),
        _ => return Err(Error::Config(format!("{source}: missing `general.architecture`"))),
    };
    let m = Meta { meta, arch, source };
    let family = match arch {
        "llama" if m.usize("expert_count")?.unwrap_or(0) > 0 => Family::Mixtral,
        "qwen2moe" => Family::Qwen2Moe,
        "qwen3moe" => Family::Qwen3Moe,
        "olmoe" => Family::Olmoe,
        "granitemoe" => Family::GraniteMoe,
        "gpt-oss" => Family::GptOss,
        // llama.cpp's gating function 2 is sigmoid: DeepSeek-V3's router.
        "deepseek2" if m.usize("expert_gating_func")? == Some(2) => Family::DeepseekV3,
        "deepseek2" => Family::DeepseekV2,
        "glm4moe" => Family::Glm4Moe,
        "ernie4_5-moe" => Family::Ernie45Moe,
        other => {
            return Err(Error::Unsupported(format!(
                "{source}: GGUF architecture `{other}` (webmoe reads llama with experts (Mixtral), qwen2moe, qwen3moe, olmoe, granitemoe, gpt-oss, deepseek2, glm4moe and ernie4_5-moe)"
            )))
        }
    };
    let tensor = |name: &str| files.iter().flat_map(|f| &f.tensors).find(|t| t.name == name);
    let hidden_size = m.need("embedding_length")?;
    let num_heads = m.need("attention.head_count")?;
    let num_kv_heads = m.usize("attention.head_count_kv")?.unwrap_or(num_heads);
    let num_layers = m.need("block_count")?;
    let head_dim = m
        .usize("attention.key_length")?
        .unwrap_or(hidden_size / num_heads.max(1));
    let vocab_size = match m.usize("vocab_size")? {
        Some(v) => v,
        None => tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| Error::Config(format!("{source}: no vocab_size and no token_embd.weight")))?
            as usize,
    };
    let experts = m.need("expert_count")?;
    let top_k = m.need("expert_used_count")?;
    let expert_ffn = match m.usize("expert_feed_forward_length")? {
        Some(f) => f,
        None => m.need("feed_forward_length")?,
    };
    let dense_ffn = m.usize("feed_forward_length")?.unwrap_or(0);
    let rotary_dim = m.usize("rope.dimension_count")?.unwrap_or(head_dim);
    // Norm of the top-k weights: llama.cpp's `expert_weights_norm`, else the family's practice.
    let renormalize = match m.get("expert_weights_norm") {
        Some(MetaValue::Bool(b)) => *b,
        _ => family == Family::Qwen3Moe,
    };
    let mut routing = RoutingConfig::softmax_top_k(experts, top_k, renormalize);
    if matches!(family, Family::Mixtral | Family::GraniteMoe | Family::GptOss) {
        routing.order = TopKOrder::TopKThenSoftmax;
    }
    let shared_expert = match m.usize("expert_shared_feed_forward_length")? {
        Some(ffn) if ffn > 0 => Some(SharedExpertConfig {
            ffn,
            gated: tensor("blk.0.ffn_gate_inp_shexp.weight").is_some()
                || files
                    .iter()
                    .flat_map(|f| &f.tensors)
                    .any(|t| t.name.ends_with("ffn_gate_inp_shexp.weight")),
        }),
        _ => None,
    };
    let mut moe = MoeConfig::new(hidden_size, expert_ffn, experts, top_k);
    moe.routing = routing;
    moe.shared_expert = shared_expert;
    let gpt_oss = family == Family::GptOss;
    if gpt_oss {
        // llama.cpp hard-codes gpt-oss's SwiGLU constants.
        moe.activation = Activation::ClampedSwiglu {
            alpha: 1.702,
            limit: 7.0,
        };
    }
    moe.validate().map_err(|e| Error::Config(format!("{source}: {e}")))?;
    // A layer is sparse when it has a router.
    let sparse_layers = (0..num_layers)
        .map(|i| tensor(&format!("blk.{i}.ffn_gate_inp.weight")).is_some())
        .collect();
    let has = |key: &str| files.iter().flat_map(|f| &f.tensors).any(|t| t.name.ends_with(key));
    let qk_norm = if !has("attn_q_norm.weight") {
        QkNorm::None
    } else if tensor("blk.0.attn_q_norm.weight").is_some_and(|t| t.dims[0] as usize == head_dim)
        && matches!(family, Family::Qwen3Moe | Family::Glm4Moe)
    {
        QkNorm::PerHead
    } else {
        QkNorm::Full
    };
    let granite = family == Family::GraniteMoe;
    let eos = |key: &str| meta.get(key).and_then(MetaValue::as_u64).map(|v| v as u32);
    let max_position_embeddings = m.need("context_length")?;
    let rope_scaling = rope_scaling_of(&m, family)?;
    let attention_windows = if gpt_oss {
        gpt_oss_windows(&m, num_layers)?
    } else {
        vec![None; num_layers]
    };
    let mut config = ModelConfig {
        family,
        architecture: format!("{arch} (GGUF)"),
        vocab_size,
        hidden_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings,
        rms_norm_eps: m.f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6) as f32,
        rope_theta: m.f64("rope.freq_base").unwrap_or(10000.0) as f32,
        rotary_dim,
        // llama.cpp's converter permutes q/k rows of llama-style models for its
        // interleaved RoPE; the decoder then rotates interleaved pairs too.
        rope_scaling,
        rope_interleaved: matches!(family, Family::Mixtral | Family::GraniteMoe),
        tie_word_embeddings: tensor("output.weight").is_none(),
        attention_bias: has("attn_q.bias"),
        qk_norm,
        clip_qkv: m.f64("attention.clamp_kqv").map(|v| v as f32),
        moe,
        dense_ffn,
        sparse_layers,
        embedding_multiplier: if granite {
            m.f64("embedding_scale").unwrap_or(1.0) as f32
        } else {
            1.0
        },
        residual_multiplier: if granite {
            m.f64("residual_scale").unwrap_or(1.0) as f32
        } else {
            1.0
        },
        attention_scale: match (granite, m.f64("attention.scale")) {
            (true, Some(s)) => s as f32,
            _ => 1.0 / (head_dim as f32).sqrt(),
        },
        logits_scaling: if granite {
            m.f64("logit_scale").unwrap_or(1.0) as f32
        } else {
            1.0
        },
        bos_token_id: eos("tokenizer.ggml.bos_token_id"),
        eos_token_ids: eos("tokenizer.ggml.eos_token_id").into_iter().collect(),
        torch_dtype: None,
        per_expert_names: true,
        attention_windows,
        attention_sinks: gpt_oss,
        output_bias: has("attn_output.bias"),
        experts_mxfp4: false,
        mla: None,
    };
    match family {
        Family::DeepseekV2 | Family::DeepseekV3 => deepseek2(&m, &mut config)?,
        // GLM-4-MoE: sigmoid routing whatever the file says; NEOX RoPE (halves).
        Family::Glm4Moe => shared_and_routing(&m, &mut config, Scoring::Sigmoid)?,
        // ERNIE-4.5-MoE: softmax, always renormalised; RoPE on interleaved pairs.
        Family::Ernie45Moe => {
            config.rope_interleaved = true;
            shared_and_routing(&m, &mut config, Scoring::Softmax)?;
            config.moe.routing.renormalize = true;
        }
        _ => {}
    }
    Ok(config)
}

/// llama.cpp's `deepseek2` as it runs it: MLA dims from `attention.kv_lora_rank`,
/// `q_lora_rank` (absent or 0: `attn_q`), `key_length_mla` (nope + rope) and
/// `value_length_mla`; RoPE on interleaved pairs; routing by `expert_gating_func`
/// with groups scored by the sum of their two best whenever `expert_group_count` > 1,
/// `expert_weights_norm` and `expert_weights_scale`; `expert_shared_count` ungated
/// shared experts; YaRN's mscale from `rope.scaling.yarn_log_multiplier` (0.1 x
/// mscale_all_dim): softmax scale mscale(f, m)^2 / sqrt(nope + rope), and no
/// magnitude on cos/sin when the key is there (transformers' V2 with mscale !=
/// mscale_all_dim, and its group_limited_greedy, cannot be written in GGUF).
fn deepseek2(m: &Meta, c: &mut ModelConfig) -> Result<()> {
    let rope = m.need("rope.dimension_count")?;
    let key = m.need("attention.key_length_mla")?;
    if rope == 0 || rope >= key || !rope.is_multiple_of(2) {
        return Err(m.bad(
            "attention.key_length_mla",
            &format!("= {key} leaves no room for {rope} RoPE dims (rope.dimension_count)"),
        ));
    }
    let mla = MlaConfig {
        q_lora_rank: m.usize("attention.q_lora_rank")?.filter(|r| *r > 0),
        kv_lora_rank: m.need("attention.kv_lora_rank")?,
        qk_nope_head_dim: key - rope,
        qk_rope_head_dim: rope,
        v_head_dim: m.need("attention.value_length_mla")?,
    };
    c.mla = Some(mla);
    c.head_dim = key;
    c.rotary_dim = rope;
    c.num_kv_heads = c.num_heads;
    c.rope_interleaved = true;
    let log_multiplier = m.f64("rope.scaling.yarn_log_multiplier");
    let mut scale = (key as f32).powf(-0.5);
    if let RopeScaling::Yarn {
        factor,
        attention_factor,
        ..
    } = &mut c.rope_scaling
    {
        let mscale = yarn_mscale(*factor, log_multiplier.map_or(1.0, |l| l / 0.1));
        scale *= (mscale * mscale) as f32;
        if log_multiplier.is_some() {
            *attention_factor = 1.0;
        }
    }
    c.attention_scale = scale;
    shared_and_routing(m, c, Scoring::Softmax)
}

/// llama.cpp's shared experts and routing for deepseek2, glm4moe and ernie4_5-moe:
/// `expert_shared_count` ungated shared experts (of
/// `expert_shared_feed_forward_length`, else that many times the expert size);
/// `expert_gating_func` (1 softmax, 2 sigmoid; `default` when absent), the selection
/// bias `exp_probs_b`, groups scored by the sum of their two best whenever
/// `expert_group_count` > 1, `expert_weights_norm` and `expert_weights_scale`.
fn shared_and_routing(m: &Meta, c: &mut ModelConfig, default: Scoring) -> Result<()> {
    let shared = m.usize("expert_shared_count")?.unwrap_or(0);
    let shared_ffn = m
        .usize("expert_shared_feed_forward_length")?
        .unwrap_or(shared * c.moe.expert_ffn);
    c.moe.shared_expert = (shared > 0).then_some(SharedExpertConfig {
        ffn: shared_ffn,
        gated: false,
    });
    let routing = &mut c.moe.routing;
    routing.scoring = match m.usize("expert_gating_func")? {
        None => default,
        Some(1) => Scoring::Softmax,
        Some(2) => Scoring::Sigmoid,
        Some(other) => {
            return Err(m.bad(
                "expert_gating_func",
                &format!("= {other} is not supported (1 softmax, 2 sigmoid)"),
            ))
        }
    };
    routing.order = TopKOrder::ScoreThenTopK;
    let groups = m.usize("expert_group_count")?.unwrap_or(1);
    routing.group_limit = (groups > 1).then_some(GroupLimit {
        n_group: groups,
        topk_group: m.usize("expert_group_used_count")?.unwrap_or(groups),
        score: GroupScore::TopTwoSum,
    });
    routing.renormalize = matches!(m.get("expert_weights_norm"), Some(MetaValue::Bool(true)));
    routing.scaling = match m.f64("expert_weights_scale") {
        Some(s) if s != 0.0 => s as f32,
        _ => 1.0,
    };
    c.moe
        .validate()
        .map_err(|e| Error::Config(format!("{}: {e}", m.source)))
}

/// RoPE scaling from `rope.scaling.*`. YaRN's attention factor is transformers'
/// default `0.1 ln(factor) + 1` (what llama.cpp's kernel applies for gpt-oss); its
/// correction range is not rounded for gpt-oss, whose configs all say
/// `truncate: false` (a flag GGUF has no key for; llama.cpp always rounds).
fn rope_scaling_of(m: &Meta, family: Family) -> Result<RopeScaling> {
    let kind = match m.get("rope.scaling.type") {
        None => return Ok(RopeScaling::None),
        Some(MetaValue::Str(s)) => s.as_str(),
        Some(_) => return Err(m.bad("rope.scaling.type", "is not a string")),
    };
    let factor = || {
        m.f64("rope.scaling.factor").ok_or_else(|| {
            m.bad(
                "rope.scaling.factor",
                &format!("is missing (rope.scaling.type is `{kind}`)"),
            )
        })
    };
    Ok(match kind {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: factor()? as f32,
        },
        "yarn" => {
            let factor = factor()?;
            RopeScaling::Yarn {
                factor,
                original_max_positions: m.need("rope.scaling.original_context_length")? as f64,
                beta_fast: m.f64("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                beta_slow: m.f64("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                attention_factor: yarn_mscale(factor, 1.0),
                truncate: family != Family::GptOss,
            }
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{}: rope.scaling.type `{other}` is not supported (none, linear, yarn)",
                m.source
            )))
        }
    })
}

/// gpt-oss's sliding layers: `attention.sliding_window_pattern` (one bool per layer)
/// when present, else llama.cpp's default of the even layers.
fn gpt_oss_windows(m: &Meta, layers: usize) -> Result<Vec<Option<usize>>> {
    let window = m.need("attention.sliding_window")?;
    if window == 0 {
        return Err(m.bad("attention.sliding_window", "must be positive"));
    }
    let sliding: Vec<bool> = match m.get("attention.sliding_window_pattern") {
        Some(MetaValue::Array(values)) => values
            .iter()
            .map(|v| match v {
                MetaValue::Bool(b) => Ok(*b),
                _ => Err(m.bad("attention.sliding_window_pattern", "must hold booleans")),
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(m.bad("attention.sliding_window_pattern", "must be an array")),
        None => (0..layers).map(|i| i % 2 == 0).collect(),
    };
    if sliding.len() != layers {
        return Err(m.bad(
            "attention.sliding_window_pattern",
            &format!("has {} entries for {layers} layers", sliding.len()),
        ));
    }
    Ok(sliding.into_iter().map(|s| s.then_some(window)).collect())
}

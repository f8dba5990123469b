//! Models made up in code: a plain config for a family and seeded random weights,
//! for tests and for benchmarking real shapes without their checkpoints.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::config::{Family, ModelConfig, QkNorm};
use crate::model::families;
use crate::model::load::{load_model, LoadOptions};
use crate::model::model::Model;
use crate::model::names::{self, ExpertTensors};
use crate::model::safetensors_io::TensorStore;
use crate::model::weights::{AttentionWeights, FeedForwardWeights, LayerWeights, MlaWeights, ModelWeights};
use crate::moe::{MoeConfig, MoeWeights};

/// Attention and vocabulary sizes of a synthetic model.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
}

/// A config of `family` with no family extras switched on (callers set those).
pub fn synthetic_config(family: Family, dims: Dims, moe: MoeConfig) -> ModelConfig {
    ModelConfig {
        family,
        architecture: format!("{family:?} (synthetic)"),
        vocab_size: dims.vocab,
        hidden_size: moe.hidden_size,
        num_layers: dims.layers,
        num_heads: dims.heads,
        num_kv_heads: dims.kv_heads,
        head_dim: dims.head_dim,
        max_position_embeddings: dims.max_positions,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rotary_dim: dims.head_dim,
        rope_scaling: Default::default(),
        rope_interleaved: false,
        tie_word_embeddings: false,
        attention_bias: false,
        qk_norm: QkNorm::None,
        clip_qkv: None,
        dense_ffn: moe.expert_ffn * 2,
        sparse_layers: vec![true; dims.layers],
        embedding_multiplier: 1.0,
        residual_multiplier: 1.0,
        attention_scale: 1.0 / (dims.head_dim as f32).sqrt(),
        logits_scaling: 1.0,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
        torch_dtype: None,
        per_expert_names: false,
        attention_windows: vec![None; dims.layers],
        attention_sinks: false,
        output_bias: false,
        experts_mxfp4: false,
        mla: None,
        moe,
    }
}

/// `1 + v` for each v (norm weights near one).
fn around_one(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|v| 1.0 + v).collect()
}

/// Seeded random weights for every tensor `config` needs.
pub fn random_weights(c: &ModelConfig, seed: u64) -> ModelWeights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut random = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-s..s)).collect() };
    let (d, hd) = (c.hidden_size, c.head_dim);
    let (qw, kvw) = (c.num_heads * hd, c.num_kv_heads * hd);
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let mut norm = |n: usize| random(n, 0.5).into_iter().map(|v| 1.0 + v).collect::<Vec<_>>();
        let input_norm = norm(d);
        let post_attention_norm = norm(d);
        let (q_norm, k_norm) = match c.qk_norm {
            QkNorm::None => (None, None),
            QkNorm::PerHead => (Some(norm(hd)), Some(norm(hd))),
            QkNorm::Full => (Some(norm(qw)), Some(norm(kvw))),
        };
        let bias = c.attention_bias;
        let attention = if let Some(m) = c.mla {
            let (heads, qk) = (c.num_heads, m.qk_nope_head_dim + m.qk_rope_head_dim);
            let l = m.kv_lora_rank;
            AttentionWeights {
                o: random(d * heads * m.v_head_dim, 0.3),
                mla: Some(MlaWeights {
                    q: m.q_lora_rank.is_none().then(|| random(heads * qk * d, 0.3)),
                    q_a: m.q_lora_rank.map(|r| {
                        (
                            random(r * d, 0.3),
                            around_one(random(r, 0.5)),
                            random(heads * qk * r, 0.3),
                        )
                    }),
                    kv_a: random((l + m.qk_rope_head_dim) * d, 0.3),
                    kv_a_norm: around_one(random(l, 0.5)),
                    kv_b: random(heads * (m.qk_nope_head_dim + m.v_head_dim) * l, 0.3),
                }),
                ..Default::default()
            }
        } else {
            AttentionWeights {
                q: random(qw * d, 0.3),
                k: random(kvw * d, 0.3),
                v: random(kvw * d, 0.3),
                o: random(d * qw, 0.3),
                q_bias: bias.then(|| random(qw, 0.3)),
                k_bias: bias.then(|| random(kvw, 0.3)),
                v_bias: bias.then(|| random(kvw, 0.3)),
                q_norm,
                k_norm,
                o_bias: c.output_bias.then(|| random(d, 0.3)),
                sinks: c.attention_sinks.then(|| random(c.num_heads, 1.5)),
                mla: None,
            }
        };
        let ffn = if c.sparse_layers[i] {
            let moe = MoeWeights::random(
                &c.moe,
                seed.wrapping_add(1 + i as u64),
                families::selection_bias(c, "").is_some(),
            );
            FeedForwardWeights::Moe(Box::new(if c.family == Family::GptOss {
                moe.with_random_biases(&c.moe, seed.wrapping_add(100 + i as u64))
            } else {
                moe
            }))
        } else {
            let f = c.dense_ffn;
            FeedForwardWeights::Dense {
                gate: random(f * d, 0.3),
                up: random(f * d, 0.3),
                down: random(d * f, 0.3),
            }
        };
        layers.push(LayerWeights {
            input_norm,
            attention,
            post_attention_norm,
            ffn,
        });
    }
    ModelWeights {
        embed_tokens: random(c.vocab_size * d, 1.0),
        final_norm: random(d, 0.5).into_iter().map(|v| 1.0 + v).collect(),
        lm_head: (!c.tie_word_embeddings).then(|| random(c.vocab_size * d, 0.3)),
        layers,
    }
}

/// `weights` as a safetensors checkpoint of f32 tensors under the family's Hugging Face
/// names (what [`crate::model::weights::ModelWeights::load`] reads back).
pub fn checkpoint_bytes(c: &ModelConfig, weights: &ModelWeights) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    let (d, hd) = (c.hidden_size, c.head_dim);
    let (qw, kvw) = (c.num_heads * hd, c.num_kv_heads * hd);
    tensors.push((names::EMBED_TOKENS.into(), vec![c.vocab_size, d], &weights.embed_tokens));
    if let Some(head) = &weights.lm_head {
        tensors.push((names::LM_HEAD.into(), vec![c.vocab_size, d], head));
    }
    tensors.push((names::FINAL_NORM.into(), vec![d], &weights.final_norm));
    // Granite's fused expert tensors are built here and outlive the list.
    let mut fused: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (i, layer) in weights.layers.iter().enumerate() {
        let p = names::layer(i);
        let a = &layer.attention;
        let gqa = c.mla.is_none();
        let entries: Vec<(String, Vec<usize>, &[f32])> = [
            ("input_layernorm.weight", vec![d], Some(&layer.input_norm)),
            (
                "post_attention_layernorm.weight",
                vec![d],
                Some(&layer.post_attention_norm),
            ),
            ("self_attn.q_proj.weight", vec![qw, d], gqa.then_some(&a.q)),
            ("self_attn.k_proj.weight", vec![kvw, d], gqa.then_some(&a.k)),
            ("self_attn.v_proj.weight", vec![kvw, d], gqa.then_some(&a.v)),
            ("self_attn.o_proj.weight", vec![d, a.o.len() / d], Some(&a.o)),
            ("self_attn.q_proj.bias", vec![qw], a.q_bias.as_ref()),
            ("self_attn.k_proj.bias", vec![kvw], a.k_bias.as_ref()),
            ("self_attn.v_proj.bias", vec![kvw], a.v_bias.as_ref()),
            ("self_attn.o_proj.bias", vec![d], a.o_bias.as_ref()),
            ("self_attn.sinks", vec![c.num_heads], a.sinks.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, shape, v)| v.map(|v| (format!("{p}.{name}"), shape, v.as_slice())))
        .collect();
        tensors.extend(entries);
        if let (Some(m), Some(w)) = (c.mla, &a.mla) {
            let (heads, qk, l) = (c.num_heads, m.qk_nope_head_dim + m.qk_rope_head_dim, m.kv_lora_rank);
            let mut mla: Vec<(&str, Vec<usize>, &[f32])> = vec![
                ("kv_a_proj_with_mqa.weight", vec![l + m.qk_rope_head_dim, d], &w.kv_a),
                ("kv_a_layernorm.weight", vec![l], &w.kv_a_norm),
                (
                    "kv_b_proj.weight",
                    vec![heads * (m.qk_nope_head_dim + m.v_head_dim), l],
                    &w.kv_b,
                ),
            ];
            if let Some(q) = &w.q {
                mla.push(("q_proj.weight", vec![heads * qk, d], q));
            }
            if let Some((qa, qn, qb)) = &w.q_a {
                let r = qn.len();
                mla.push(("q_a_proj.weight", vec![r, d], qa));
                mla.push(("q_a_layernorm.weight", vec![r], qn));
                mla.push(("q_b_proj.weight", vec![heads * qk, r], qb));
            }
            tensors.extend(
                mla.into_iter()
                    .map(|(n, shape, v)| (format!("{p}.self_attn.{n}"), shape, v)),
            );
        }
        let entries: Vec<(String, Vec<usize>, &[f32])> = [
            (
                "self_attn.q_norm.weight",
                vec![a.q_norm.as_ref().map_or(0, |v| v.len())],
                a.q_norm.as_ref(),
            ),
            (
                "self_attn.k_norm.weight",
                vec![a.k_norm.as_ref().map_or(0, |v| v.len())],
                a.k_norm.as_ref(),
            ),
        ]
        .into_iter()
        .filter_map(|(name, shape, v)| v.map(|v| (format!("{p}.{name}"), shape, v.as_slice())))
        .collect();
        tensors.extend(entries);
        match &layer.ffn {
            FeedForwardWeights::Dense { gate, up, down } => {
                let f = c.dense_ffn;
                tensors.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d], gate));
                tensors.push((format!("{p}.mlp.up_proj.weight"), vec![f, d], up));
                tensors.push((format!("{p}.mlp.down_proj.weight"), vec![d, f], down));
            }
            FeedForwardWeights::Moe(moe) => {
                let (f, e) = (c.moe.expert_ffn, c.moe.num_experts());
                let n = names::moe(c.family, i, c.per_expert_names);
                tensors.push((n.router.clone(), vec![e, d], &moe.router));
                if let (Some(bias), Some((name, shape))) = (&moe.selection_bias, families::selection_bias(c, &p)) {
                    tensors.push((name, shape, bias));
                }
                match &n.experts {
                    ExpertTensors::PerExpert { prefix, gate, up, down } => {
                        for x in 0..e {
                            let one = |suffix: &str| ExpertTensors::expert(prefix, x, suffix);
                            tensors.push((one(gate), vec![f, d], &moe.gate[x * f * d..(x + 1) * f * d]));
                            tensors.push((one(up), vec![f, d], &moe.up[x * f * d..(x + 1) * f * d]));
                            tensors.push((one(down), vec![d, f], &moe.down[x * d * f..(x + 1) * d * f]));
                        }
                    }
                    ExpertTensors::Fused { input, output } => {
                        let mut joined = Vec::with_capacity(2 * e * f * d);
                        for x in 0..e {
                            joined.extend_from_slice(&moe.gate[x * f * d..(x + 1) * f * d]);
                            joined.extend_from_slice(&moe.up[x * f * d..(x + 1) * f * d]);
                        }
                        fused.push((input.clone(), vec![e, 2 * f, d], joined));
                        tensors.push((output.clone(), vec![e, d, f], &moe.down));
                    }
                    ExpertTensors::GptOss(g) => {
                        // [E, d, 2f] with gate/up columns interleaved, [E, f, d]: x @ W.
                        let mut gate_up = vec![0.0; e * d * 2 * f];
                        let mut down = vec![0.0; e * f * d];
                        for x in 0..e {
                            for n in 0..f {
                                for k in 0..d {
                                    let at = (x * d + k) * 2 * f + 2 * n;
                                    gate_up[at] = moe.gate[(x * f + n) * d + k];
                                    gate_up[at + 1] = moe.up[(x * f + n) * d + k];
                                    down[(x * f + n) * d + k] = moe.down[(x * d + k) * f + n];
                                }
                            }
                        }
                        fused.push((g.gate_up.clone(), vec![e, d, 2 * f], gate_up));
                        fused.push((g.down.clone(), vec![e, f, d], down));
                        let b = moe.expert_biases.as_ref().expect("gpt-oss experts have biases");
                        let interleaved: Vec<f32> = (0..e * f).flat_map(|i| [b.gate[i], b.up[i]]).collect();
                        fused.push((g.gate_up_bias.clone(), vec![e, 2 * f], interleaved));
                        tensors.push((g.down_bias.clone(), vec![e, d], &b.down));
                        let router_bias = moe.router_bias.as_ref().expect("gpt-oss routers have biases");
                        tensors.push((g.router_bias.clone(), vec![e], router_bias));
                    }
                }
                if let Some(s) = &moe.shared {
                    let sf = s.gate.len() / d;
                    tensors.push((n.shared_gate.clone(), vec![sf, d], &s.gate));
                    tensors.push((n.shared_up.clone(), vec![sf, d], &s.up));
                    tensors.push((n.shared_down.clone(), vec![d, sf], &s.down));
                    if let Some(g) = &s.gate_weight {
                        tensors.push((n.shared_expert_gate.clone(), vec![1, d], g));
                    }
                }
            }
        }
    }
    for (name, shape, values) in &fused {
        tensors.push((name.clone(), shape.clone(), values));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, bytemuck::cast_slice(v).to_vec()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Config(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::Config(format!("serializing a synthetic checkpoint: {e}")))
}

/// Loads `weights` onto the GPU through the checkpoint path, storing matrices as
/// `config.moe.weight_format` (tests and benchmarks of made-up models).
pub fn model_from_weights(
    ctx: &GpuContext,
    config: &ModelConfig,
    weights: &ModelWeights,
    max_context: usize,
) -> Result<Model> {
    let store = TensorStore::from_bytes(vec![(
        "synthetic.safetensors".into(),
        checkpoint_bytes(config, weights)?,
    )])?;
    let format = config.moe.weight_format;
    let options = LoadOptions {
        max_context: Some(max_context),
        weight_format: (!format.is_quantized()).then_some(format),
        quantize: format.is_quantized().then_some(format),
        // f32 caches: these models are checked against the f32 CPU forward.
        kv_cache: Some(crate::gpu::DType::F32),
    };
    Ok(load_model(ctx, config.clone(), &store, None, options, &mut |_, _| {})?.model)
}

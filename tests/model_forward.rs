//! The generic decoder on the GPU against its CPU reference, per family
//! configuration, and KV-cache consistency (prefill at once vs token by token).

mod common;

use common::*;
use rand_chacha::ChaCha8Rng;
use webmoe::model::config::{Family, ModelConfig, QkNorm};
use webmoe::model::reference::forward_reference;
use webmoe::model::transformer::{LogitsFor, Transformer};
use webmoe::model::weights::{AttentionWeights, FeedForwardWeights, LayerWeights, ModelWeights};
use webmoe::moe::{MoeConfig, MoeWeights, SharedExpertConfig, SharedExpertWeights};
use webmoe::ops::routing::TopKOrder;
use webmoe::GpuContext;

/// A tiny config of `family` with its distinguishing features switched on.
fn tiny_config(family: Family) -> ModelConfig {
    let (d, heads, kv_heads, head_dim) = (48, 4, 2, 12);
    let mut moe = MoeConfig::new(d, 20, 8, 2);
    let mut c = ModelConfig {
        family,
        architecture: format!("{family:?}"),
        vocab_size: 97,
        hidden_size: d,
        num_layers: 2,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        max_position_embeddings: 64,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rotary_dim: head_dim,
        tie_word_embeddings: false,
        attention_bias: false,
        qk_norm: QkNorm::None,
        clip_qkv: None,
        moe,
        dense_ffn: 40,
        sparse_layers: vec![true, true],
        embedding_multiplier: 1.0,
        residual_multiplier: 1.0,
        attention_scale: 1.0 / (head_dim as f32).sqrt(),
        logits_scaling: 1.0,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        torch_dtype: None,
    };
    match family {
        Family::Mixtral => {
            moe.routing.order = TopKOrder::TopKThenSoftmax;
        }
        Family::Qwen2Moe => {
            c.attention_bias = true;
            moe.shared_expert = Some(SharedExpertConfig { ffn: 28, gated: true });
            c.sparse_layers = vec![false, true];
        }
        Family::Qwen3Moe => {
            c.qk_norm = QkNorm::PerHead;
            moe.routing.renormalize = true;
        }
        Family::Olmoe => {
            c.qk_norm = QkNorm::Full;
            c.clip_qkv = Some(0.8);
        }
        Family::GraniteMoe => {
            moe.routing.order = TopKOrder::TopKThenSoftmax;
            c.tie_word_embeddings = true;
            c.embedding_multiplier = 12.0;
            c.residual_multiplier = 0.22;
            c.attention_scale = 0.015625;
            c.logits_scaling = 8.0;
            c.rotary_dim = head_dim / 2;
        }
    }
    c.moe = moe;
    c
}

fn random_model(rng: &mut ChaCha8Rng, c: &ModelConfig) -> ModelWeights {
    let (d, hd) = (c.hidden_size, c.head_dim);
    let (qw, kvw) = (c.num_heads * hd, c.num_kv_heads * hd);
    let norm =
        |rng: &mut ChaCha8Rng, n: usize| random_vec(rng, n, 0.5).into_iter().map(|v| 1.0 + v).collect::<Vec<_>>();
    let layers = (0..c.num_layers)
        .map(|i| {
            let (e, f) = (c.moe.num_experts(), c.moe.expert_ffn);
            let ffn = if c.sparse_layers[i] {
                FeedForwardWeights::Moe(MoeWeights {
                    router: random_vec(rng, e * d, 0.5),
                    selection_bias: None,
                    gate: random_vec(rng, e * f * d, 0.3),
                    up: random_vec(rng, e * f * d, 0.3),
                    down: random_vec(rng, e * d * f, 0.3),
                    shared: c.moe.shared_expert.map(|s| SharedExpertWeights {
                        gate: random_vec(rng, s.ffn * d, 0.3),
                        up: random_vec(rng, s.ffn * d, 0.3),
                        down: random_vec(rng, d * s.ffn, 0.3),
                        gate_weight: Some(random_vec(rng, d, 0.3)),
                    }),
                })
            } else {
                FeedForwardWeights::Dense {
                    gate: random_vec(rng, c.dense_ffn * d, 0.3),
                    up: random_vec(rng, c.dense_ffn * d, 0.3),
                    down: random_vec(rng, d * c.dense_ffn, 0.3),
                }
            };
            let (qn, kn) = match c.qk_norm {
                QkNorm::None => (None, None),
                QkNorm::PerHead => (Some(norm(rng, hd)), Some(norm(rng, hd))),
                QkNorm::Full => (Some(norm(rng, qw)), Some(norm(rng, kvw))),
            };
            LayerWeights {
                input_norm: norm(rng, d),
                attention: AttentionWeights {
                    q: random_vec(rng, qw * d, 0.3),
                    k: random_vec(rng, kvw * d, 0.3),
                    v: random_vec(rng, kvw * d, 0.3),
                    o: random_vec(rng, d * qw, 0.3),
                    q_bias: c.attention_bias.then(|| random_vec(rng, qw, 0.3)),
                    k_bias: c.attention_bias.then(|| random_vec(rng, kvw, 0.3)),
                    v_bias: c.attention_bias.then(|| random_vec(rng, kvw, 0.3)),
                    q_norm: qn,
                    k_norm: kn,
                },
                post_attention_norm: norm(rng, d),
                ffn,
            }
        })
        .collect();
    ModelWeights {
        embed_tokens: random_vec(rng, c.vocab_size * d, 1.0),
        layers,
        final_norm: norm(rng, d),
        lm_head: (!c.tie_word_embeddings).then(|| random_vec(rng, c.vocab_size * d, 0.3)),
    }
}

const FAMILIES: [Family; 5] = [
    Family::Mixtral,
    Family::Qwen2Moe,
    Family::Qwen3Moe,
    Family::Olmoe,
    Family::GraniteMoe,
];

fn model(ctx: &GpuContext, family: Family, seed: u64) -> (ModelConfig, ModelWeights, Transformer) {
    let config = tiny_config(family);
    let weights = random_model(&mut rng(seed), &config);
    let model = Transformer::new(ctx, config.clone(), &weights, 32).unwrap();
    (config, weights, model)
}

#[test]
fn gpu_forward_matches_cpu_reference_for_every_family() {
    let ctx = context();
    let ids: Vec<u32> = vec![1, 17, 42, 5, 96, 0, 33, 8, 8, 60, 2];
    for (i, family) in FAMILIES.into_iter().enumerate() {
        let (config, weights, model) = model(&ctx, family, 10 + i as u64);
        let want = forward_reference(&config, &weights, &ids);
        let got = pollster::block_on(model.logits(&ctx, &ids, 0, LogitsFor::All)).unwrap();
        assert_close(&format!("{family:?} logits"), &got, &want, 1e-4);
    }
}

#[test]
fn kv_cache_prefill_equals_token_by_token() {
    let ctx = context();
    let ids: Vec<u32> = vec![3, 9, 27, 81, 50, 7, 1];
    for (i, family) in FAMILIES.into_iter().enumerate() {
        let (config, _, model) = model(&ctx, family, 20 + i as u64);
        let all = pollster::block_on(model.logits(&ctx, &ids, 0, LogitsFor::All)).unwrap();
        for (pos, &id) in ids.iter().enumerate() {
            let step = pollster::block_on(model.logits(&ctx, &[id], pos, LogitsFor::Last)).unwrap();
            let v = config.vocab_size;
            assert_close(
                &format!("{family:?} position {pos}"),
                &step,
                &all[pos * v..(pos + 1) * v],
                1e-4,
            );
        }
    }
}

#[test]
fn bad_token_ids_and_overlong_prompts_are_errors() {
    let ctx = context();
    let (config, _, model) = model(&ctx, Family::Qwen3Moe, 30);
    let err = pollster::block_on(model.logits(&ctx, &[1, config.vocab_size as u32], 0, LogitsFor::Last)).unwrap_err();
    assert!(err.to_string().contains("vocab_size"), "{err}");
    let long = vec![1u32; 33];
    let err = pollster::block_on(model.logits(&ctx, &long, 0, LogitsFor::Last)).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
}

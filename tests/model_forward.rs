//! The generic decoder on the GPU against its CPU reference, per family
//! configuration, and KV-cache consistency (prefill at once vs token by token).

mod common;

use common::*;
use webmoe::model::config::{Family, MlaConfig, ModelConfig, QkNorm};
use webmoe::model::model::{moe_gemv_by_size, LogitsFor, Model};
use webmoe::model::reference::forward_reference;
use webmoe::model::session::Session;
use webmoe::model::synthetic::model_from_weights;
use webmoe::model::synthetic::{random_weights, synthetic_config, Dims};
use webmoe::model::weights::ModelWeights;
use webmoe::moe::{MoeConfig, SharedExpertConfig};
use webmoe::ops::expert_matmul::Activation;
use webmoe::ops::routing::{GroupLimit, GroupScore, Scoring, TopKOrder};
use webmoe::GpuContext;

/// A tiny config of `family` with its distinguishing features switched on.
fn tiny_config(family: Family) -> ModelConfig {
    let dims = Dims {
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 12,
        vocab: 97,
        max_positions: 64,
    };
    let mut c = synthetic_config(family, dims, MoeConfig::new(48, 20, 8, 2));
    c.dense_ffn = 40;
    match family {
        Family::Mixtral => {
            c.moe.routing.order = TopKOrder::TopKThenSoftmax;
        }
        Family::Qwen2Moe => {
            c.attention_bias = true;
            c.moe.shared_expert = Some(SharedExpertConfig { ffn: 28, gated: true });
            c.sparse_layers = vec![false, true];
        }
        Family::Qwen3Moe => {
            c.qk_norm = QkNorm::PerHead;
            c.moe.routing.renormalize = true;
        }
        Family::Olmoe => {
            c.qk_norm = QkNorm::Full;
            c.clip_qkv = Some(0.8);
        }
        Family::GraniteMoe => {
            c.moe.routing.order = TopKOrder::TopKThenSoftmax;
            c.tie_word_embeddings = true;
            c.embedding_multiplier = 12.0;
            c.residual_multiplier = 0.22;
            c.attention_scale = 0.015625;
            c.logits_scaling = 8.0;
            c.rotary_dim = 6;
        }
        Family::GptOss => {
            c.moe.routing.order = TopKOrder::TopKThenSoftmax;
            c.attention_bias = true;
            c.output_bias = true;
            c.attention_sinks = true;
            // A window shorter than the test prompts, on the first layer only.
            c.attention_windows = vec![Some(3), None];
            // A low limit so that some gate/up values are clamped at these sizes.
            c.moe.activation = Activation::ClampedSwiglu {
                alpha: 1.702,
                limit: 0.8,
            };
        }
        Family::DeepseekV2 | Family::DeepseekV3 => {
            let v3 = family == Family::DeepseekV3;
            // MLA with v_head_dim != qk_nope_head_dim; V3 compresses queries.
            c.mla = Some(MlaConfig {
                q_lora_rank: v3.then_some(20),
                kv_lora_rank: 24,
                qk_nope_head_dim: 10,
                qk_rope_head_dim: 6,
                v_head_dim: if v3 { 14 } else { 8 },
            });
            c.head_dim = 16;
            c.rotary_dim = 6;
            c.rope_interleaved = true;
            c.attention_scale = 0.3;
            c.sparse_layers = vec![false, true];
            c.moe.shared_expert = Some(SharedExpertConfig { ffn: 40, gated: false });
            c.moe.routing.group_limit = Some(GroupLimit {
                n_group: 4,
                topk_group: 2,
                score: if v3 { GroupScore::TopTwoSum } else { GroupScore::Max },
            });
            c.moe.routing.scaling = 2.5;
            if v3 {
                c.moe.routing.scoring = Scoring::Sigmoid;
                c.moe.routing.renormalize = true;
            }
        }
        Family::Glm4Moe => {
            c.qk_norm = QkNorm::PerHead;
            c.attention_bias = true;
            c.rotary_dim = 6;
            c.sparse_layers = vec![false, true];
            c.moe.shared_expert = Some(SharedExpertConfig { ffn: 20, gated: false });
            c.moe.routing.scoring = Scoring::Sigmoid;
            c.moe.routing.renormalize = true;
            c.moe.routing.scaling = 2.5;
            c.moe.routing.group_limit = Some(GroupLimit {
                n_group: 2,
                topk_group: 1,
                score: GroupScore::TopTwoSum,
            });
        }
        Family::Ernie45Moe => {
            c.rope_interleaved = true;
            c.tie_word_embeddings = true;
            c.sparse_layers = vec![true, false];
            c.moe.shared_expert = Some(SharedExpertConfig { ffn: 40, gated: false });
            c.moe.routing.renormalize = true;
        }
    }
    c
}

const FAMILIES: [Family; 10] = [
    Family::Mixtral,
    Family::Qwen2Moe,
    Family::Qwen3Moe,
    Family::Olmoe,
    Family::GraniteMoe,
    Family::GptOss,
    Family::DeepseekV2,
    Family::DeepseekV3,
    Family::Glm4Moe,
    Family::Ernie45Moe,
];

fn model(ctx: &GpuContext, family: Family, seed: u64) -> (ModelConfig, ModelWeights, Model) {
    let config = tiny_config(family);
    let weights = random_weights(&config, seed);
    let model = model_from_weights(ctx, &config, &weights, 32).unwrap();
    (config, weights, model)
}

/// Logits of `ids` fed at `pos0` of `session` (rewinding to it).
fn logits_at(
    ctx: &GpuContext,
    model: &Model,
    session: &mut Session,
    ids: &[u32],
    pos0: usize,
    which: LogitsFor,
) -> webmoe::Result<Vec<f32>> {
    session.rewind(pos0)?;
    pollster::block_on(session.logits(ctx, model, ids, which))
}

#[test]
fn gpu_forward_matches_cpu_reference_for_every_family() {
    let ctx = context();
    let ids: Vec<u32> = vec![1, 17, 42, 5, 96, 0, 33, 8, 8, 60, 2];
    for (i, family) in FAMILIES.into_iter().enumerate() {
        let (config, weights, model) = model(&ctx, family, 10 + i as u64);
        let want = forward_reference(&config, &weights, &ids);
        let mut session = Session::new(&ctx, &model, None).unwrap();
        let got = logits_at(&ctx, &model, &mut session, &ids, 0, LogitsFor::All).unwrap();
        assert_close(&format!("{family:?} logits"), &got, &want, 1e-4);
    }
}

#[test]
fn kv_cache_prefill_equals_token_by_token() {
    let ctx = context();
    let ids: Vec<u32> = vec![3, 9, 27, 81, 50, 7, 1];
    for (i, family) in FAMILIES.into_iter().enumerate() {
        let (config, _, model) = model(&ctx, family, 20 + i as u64);
        let mut session = Session::new(&ctx, &model, None).unwrap();
        let all = logits_at(&ctx, &model, &mut session, &ids, 0, LogitsFor::All).unwrap();
        session.rewind(0).unwrap();
        for (pos, &id) in ids.iter().enumerate() {
            let step = logits_at(&ctx, &model, &mut session, &[id], pos, LogitsFor::Last).unwrap();
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
    let mut session = Session::new(&ctx, &model, None).unwrap();
    let err = logits_at(
        &ctx,
        &model,
        &mut session,
        &[1, config.vocab_size as u32],
        0,
        LogitsFor::Last,
    )
    .unwrap_err();
    assert!(err.to_string().contains("vocab_size"), "{err}");
    assert_eq!(err.kind(), webmoe::ErrorKind::InvalidInput);
    let long = vec![1u32; 33];
    let err = logits_at(&ctx, &model, &mut session, &long, 0, LogitsFor::Last).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    // A prompt that fits, then a step past the end of the context.
    logits_at(&ctx, &model, &mut session, &[1u32; 32], 0, LogitsFor::Last).unwrap();
    let err = pollster::block_on(session.logits(&ctx, &model, &[1], LogitsFor::Last)).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
}

#[test]
fn quantized_at_load_matches_the_cpu_reference() {
    // Dimensions in whole 32-element blocks; the reference rounds the weights the way
    // the load stores them (projections quantized, lm_head q8_0, embedding f32).
    let ctx = context();
    let ids: Vec<u32> = vec![1, 17, 42, 5, 96, 0, 33];
    for (family, format) in [
        (Family::Qwen2Moe, webmoe::WeightFormat::Q8_0),
        (Family::Olmoe, webmoe::WeightFormat::Q4_0),
        (Family::GptOss, webmoe::WeightFormat::Mxfp4),
    ] {
        let dims = Dims {
            layers: 2,
            heads: 2,
            kv_heads: 1,
            head_dim: 32,
            vocab: 97,
            max_positions: 32,
        };
        let mut moe = MoeConfig::new(64, 32, 8, 2);
        moe.weight_format = format;
        let mut config = synthetic_config(family, dims, moe);
        config.dense_ffn = 96;
        if family == Family::Qwen2Moe {
            config.attention_bias = true;
            config.moe.shared_expert = Some(SharedExpertConfig { ffn: 32, gated: true });
            config.sparse_layers = vec![false, true];
        } else if family == Family::GptOss {
            let gpt_oss = tiny_config(Family::GptOss);
            config.moe.routing.order = gpt_oss.moe.routing.order;
            config.moe.activation = gpt_oss.moe.activation;
            config.attention_bias = true;
            config.output_bias = true;
            config.attention_sinks = true;
            config.attention_windows = vec![Some(3), None];
        } else {
            config.qk_norm = QkNorm::Full;
        }
        let weights = random_weights(&config, 40);
        let model = model_from_weights(&ctx, &config, &weights, 32).unwrap();
        let want = forward_reference(&config, &weights, &ids);
        let mut session = Session::new(&ctx, &model, None).unwrap();
        let got = logits_at(&ctx, &model, &mut session, &ids, 0, LogitsFor::All).unwrap();
        assert_close(&format!("{family:?} {format} logits"), &got, &want, 1e-4);
    }
}

#[test]
fn gqa_caches_hold_keys_and_values_per_kv_head() {
    let ctx = context();
    let (config, _, model) = model(&ctx, Family::Qwen3Moe, 51);
    let per_position = 2 * config.num_kv_heads * config.head_dim * config.num_layers * 4;
    assert_eq!(model.kv_bytes_per_position(), per_position as u64);
    let batch = webmoe::model::batch::Batch::new(&ctx, &model, 2, 16).unwrap();
    assert_eq!(batch.cache_bytes_per_position(), per_position as u64);
}

#[test]
fn mla_caches_hold_one_latent_and_one_rope_key_per_position() {
    let ctx = context();
    for family in [Family::DeepseekV2, Family::DeepseekV3] {
        let (config, _, model) = model(&ctx, family, 50);
        let m = config.mla.unwrap();
        let session = Session::new(&ctx, &model, None).unwrap();
        // Rows padded to a multiple of 4 elements (the attention kernel reads vec4).
        let row = webmoe::ops::attention::row_width(m.kv_lora_rank + m.qk_rope_head_dim);
        assert!(row >= m.kv_lora_rank + m.qk_rope_head_dim && row.is_multiple_of(4));
        let per_position = row * config.num_layers * 4;
        assert_eq!(
            session.cache_bytes(),
            (per_position * model.max_context) as u64,
            "{family:?}"
        );
        let batch = webmoe::model::batch::Batch::new(&ctx, &model, 3, 16).unwrap();
        assert_eq!(batch.cache_bytes_per_position(), per_position as u64, "{family:?}");
        assert_eq!(model.kv_bytes_per_position(), per_position as u64, "{family:?}");
    }
}

/// A profiled step times every dispatch of the recorded forward, once per kernel row,
/// advances the session like a step, and leaves the next step's results unchanged.
#[test]
fn profiled_steps_time_every_kernel_and_advance_like_steps() {
    let ctx = context();
    let (config, _, model) = model(&ctx, Family::Qwen3Moe, 40);
    let prompt = [4u32, 8, 15, 16, 23, 42];
    let mut plain = Session::new(&ctx, &model, None).unwrap();
    let want = pollster::block_on(plain.logits(&ctx, &model, &prompt, LogitsFor::Last)).unwrap();
    let next = pollster::block_on(plain.logits(&ctx, &model, &[7], LogitsFor::Last)).unwrap();

    let mut session = Session::new(&ctx, &model, None).unwrap();
    let prefill = pollster::block_on(session.profile_step(&ctx, &model, &prompt)).unwrap();
    assert_eq!(session.position(), prompt.len());
    let decode = pollster::block_on(session.profile_step(&ctx, &model, &[7])).unwrap();
    assert_eq!(session.position(), prompt.len() + 1);
    let name = |k: &webmoe::gpu::profile::KernelTime| format!("{}/{}", k.section, k.kernel);
    let rows = |p: &[webmoe::gpu::profile::KernelTime]| p.iter().map(name).collect::<Vec<_>>();
    // The attention projections and the lm_head use the GEMV too, in their own sections.
    // The prompt's MoE layers take the kernels of `moe_gemv_by_size`: tiles on a GPU; on a
    // CPU adapter (lavapipe) the GEMV while experts get few rows, else the barrier-free
    // tiles (`*_direct`, K a multiple of 8), and its GEMV is the serial one (`*_serial`).
    let cpu = ctx.kernel_target == webmoe::KernelTarget::Cpu;
    let gemv =
        |section: &str, entry: &str| format!("{section}/expert_gemv::{entry}{}", if cpu { "_serial" } else { "" });
    let prefill_moe = if moe_gemv_by_size(&ctx, prompt.len(), &config.moe) {
        gemv("moe", "gate_up")
    } else {
        let direct = cpu && config.hidden_size.is_multiple_of(8);
        format!("moe/expert_matmul::gate_up{}", if direct { "_direct" } else { "" })
    };
    for (p, row) in [
        (&prefill, prefill_moe),
        (&decode, gemv("moe", "gate_up")),
        (&decode, gemv("attention", "down")),
        (&decode, gemv("lm head", "down")),
    ] {
        assert!(rows(p).contains(&row), "{row} in {p:?}");
    }
    for p in [&prefill, &decode] {
        let mut names = rows(p);
        names.sort();
        names.dedup();
        assert_eq!(names.len(), p.len(), "one row per section and kernel");
        assert!(
            p.iter().all(|k| k.calls > 0 && k.ms >= 0.0 && k.ms.is_finite()),
            "{p:?}"
        );
        assert!(p.windows(2).all(|w| w[0].ms >= w[1].ms), "most time first");
        // One embedding and one argmax per step.
        let calls = |row: &str| p.iter().find(|k| name(k) == row).map_or(0, |k| k.calls);
        assert_eq!(calls("embedding/embedding::embed"), 1);
        assert_eq!(calls("sampling/sampling::argmax"), 1);
    }
    assert!(decode.iter().map(|k| k.ms).sum::<f64>() > 0.0);
    // The profiled prefill filled the cache as a step would.
    session.rewind(prompt.len()).unwrap();
    let got = pollster::block_on(session.logits(&ctx, &model, &[7], LogitsFor::Last)).unwrap();
    assert_close("logits after a profiled prefill", &got, &next, 1e-6);
    assert_eq!(want.len(), got.len());
}

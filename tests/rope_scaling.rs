//! RoPE scaling (linear, llama3, YaRN with its attention factor, dynamic NTK) against
//! transformers: tiny Qwen3-MoE models made by scripts/gen_rope_fixtures.py with a
//! 48-token prompt past the original context of the llama3 / YaRN / dynamic variants.
//! Dynamic NTK's greedy tokens are transformers' `generate` with its KV cache: each
//! forward scales by its own length, cached keys keep the scale they got.

mod common;

use std::path::PathBuf;

use common::*;
use webmoe::model::batch::{Batch, BatchEntry, BatchRead};
use webmoe::model::config::ModelConfig;
use webmoe::model::load::{load_model, load_model_dir, LoadOptions};
use webmoe::model::model::{Kernels, LogitsFor, Model};
use webmoe::model::safetensors_io::TensorStore;
use webmoe::model::session::Session;
use webmoe::ops::rope::RopeScaling;

fn dir(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/models/rope_{kind}"))
}

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn scaled_rope_matches_transformers() {
    let ctx = context();
    for kind in ["linear", "llama3", "yarn", "dynamic"] {
        let exp: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir(kind).join("expected.json")).unwrap()).unwrap();
        let config = ModelConfig::from_dir(&dir(kind)).unwrap();
        assert_ne!(config.rope_scaling, RopeScaling::None, "{kind}");
        let loaded = load_model_dir(&ctx, &dir(kind), LoadOptions::default()).unwrap();
        let prompt = u32s(&exp["prompt_ids"]);
        let want = f32s(&exp["last_logits"]);
        let mut session = Session::new(&ctx, &loaded.model, None).unwrap();
        let got = pollster::block_on(session.logits(&ctx, &loaded.model, &prompt, LogitsFor::Last)).unwrap();
        assert_close(&format!("rope {kind} last logits"), &got, &want, 1e-3);
        assert_eq!(
            greedy_tokens(&ctx, &loaded.model, &prompt, 16, &[]),
            u32s(&exp["greedy_ids"]),
            "rope {kind} greedy tokens"
        );
        // Without the scaling the same weights give other logits: the fixture tests it.
        let mut plain = config.clone();
        plain.rope_scaling = RopeScaling::None;
        plain.max_position_embeddings = config.context_limit();
        let store = TensorStore::open_dir(&dir(kind)).unwrap();
        let unscaled = load_model(&ctx, plain, &store, None, LoadOptions::default(), &mut |_, _| {}).unwrap();
        let mut session = Session::new(&ctx, &unscaled.model, None).unwrap();
        let other = pollster::block_on(session.logits(&ctx, &unscaled.model, &prompt, LogitsFor::Last)).unwrap();
        assert!(
            max_relative_error(&other, &want, 1e-6) > 1e-2,
            "rope {kind}: scaling changes nothing"
        );
    }
}

/// Greedy ids of `prompt` through a batch: the prompt fed in chunks of `chunk` (each
/// told where the prompt ends, or not), then one token per step.
fn batched_greedy(ctx: &webmoe::GpuContext, model: &Model, prompt: &[u32], chunk: usize, tell_end: bool) -> Vec<u32> {
    let mut batch = Batch::new(ctx, model, 2, model.max_context).unwrap();
    batch.acquire().unwrap();
    let slot = batch.acquire().unwrap();
    let mut token = 0;
    for (i, piece) in prompt.chunks(chunk).enumerate() {
        let entry = BatchEntry {
            prompt_end: tell_end.then_some(prompt.len()),
            ..BatchEntry::new(slot, piece)
        };
        let out = pollster::block_on(batch.step(ctx, model, &[entry], BatchRead::Argmax, Kernels::Tiled)).unwrap();
        if (i + 1) * chunk >= prompt.len() {
            token = out.tokens[0];
        }
    }
    let mut ids = vec![token];
    while ids.len() < 16 {
        let entry = BatchEntry::new(slot, &ids[ids.len() - 1..]);
        let out = pollster::block_on(batch.step(ctx, model, &[entry], BatchRead::Argmax, Kernels::Gemv)).unwrap();
        ids.push(out.tokens[0]);
    }
    ids
}

/// Dynamic NTK past the fixture above: a generation that crosses max_position_embeddings
/// (unscaled, then scaled more each step), and a batch fed the long prompt in chunks,
/// which matches transformers only when each chunk scales by the whole prompt's end.
#[test]
fn dynamic_ntk_follows_transformers_generate_with_its_cache() {
    let ctx = context();
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir("dynamic").join("expected.json")).unwrap()).unwrap();
    let loaded = load_model_dir(&ctx, &dir("dynamic"), LoadOptions::default()).unwrap();
    let model = &loaded.model;
    assert_eq!(
        model.max_context,
        4 * 32,
        "dynamic NTK serves factor x max_position_embeddings"
    );
    let crossing = &exp["crossing"];
    assert_eq!(
        greedy_tokens(&ctx, model, &u32s(&crossing["prompt_ids"]), 16, &[]),
        u32s(&crossing["greedy_ids"]),
        "greedy tokens across max_position_embeddings"
    );
    let prompt = u32s(&exp["prompt_ids"]);
    let want = u32s(&exp["greedy_ids"]);
    assert_eq!(
        batched_greedy(&ctx, model, &prompt, 48, false),
        want,
        "batched, one chunk"
    );
    assert_eq!(
        batched_greedy(&ctx, model, &prompt, 20, true),
        want,
        "batched, chunks told the prompt's end"
    );
    // One session feeding the prompt in chunks (`Session::step` past `prefill_chunk`).
    let mut session = webmoe::model::session::Session::new(&ctx, model, None).unwrap();
    session.prefill_chunk = 20;
    let generation = pollster::block_on(webmoe::model::generate::generate(
        &ctx,
        model,
        &mut session,
        &prompt,
        want.len(),
        webmoe::model::generate::SamplingParams::greedy(),
        &[],
        |_, _| true,
    ))
    .unwrap();
    assert_eq!(generation.generated_ids, want, "one session, prompt chunks of 20");
    // Chunks scaled by their own ends rotate the prompt's keys otherwise: the fixture
    // sees the difference.
    assert_ne!(
        batched_greedy(&ctx, model, &prompt, 20, false),
        want,
        "chunks scaled by their own ends"
    );
}

#[test]
fn unknown_rope_types_are_refused_clearly() {
    let text = std::fs::read_to_string(dir("yarn").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["rope_parameters"]["rope_type"] = "longrope".into();
    let err = ModelConfig::from_json(&v.to_string(), "config.json").unwrap_err();
    assert_eq!(err.kind(), webmoe::ErrorKind::Unsupported);
    assert!(err.to_string().contains("longrope"), "{err}");
    v["rope_parameters"]["rope_type"] = "dynamic".into();
    v["rope_parameters"]["factor"] = 0.5.into();
    let err = ModelConfig::from_json(&v.to_string(), "config.json").unwrap_err();
    assert!(err.to_string().contains("factor >= 1"), "{err}");
    v["rope_parameters"]["rope_type"] = "llama3".into();
    let err = ModelConfig::from_json(&v.to_string(), "config.json").unwrap_err();
    assert!(err.to_string().contains("low_freq_factor"), "{err}");
}

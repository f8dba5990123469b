//! RoPE scaling (linear, llama3, YaRN with its attention factor) against transformers:
//! tiny Qwen3-MoE models made by scripts/gen_rope_fixtures.py with a 48-token prompt
//! past the original context of the llama3 / YaRN variants.

mod common;

use std::path::PathBuf;

use common::*;
use webmoe::model::config::ModelConfig;
use webmoe::model::load::{load_model, load_model_dir, LoadOptions};
use webmoe::model::model::LogitsFor;
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
    for kind in ["linear", "llama3", "yarn"] {
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

#[test]
fn unknown_rope_types_are_refused_clearly() {
    let text = std::fs::read_to_string(dir("yarn").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["rope_parameters"]["rope_type"] = "dynamic".into();
    let err = ModelConfig::from_json(&v.to_string(), "config.json").unwrap_err();
    assert_eq!(err.kind(), webmoe::ErrorKind::Unsupported);
    assert!(err.to_string().contains("dynamic"), "{err}");
    v["rope_parameters"]["rope_type"] = "llama3".into();
    let err = ModelConfig::from_json(&v.to_string(), "config.json").unwrap_err();
    assert!(err.to_string().contains("low_freq_factor"), "{err}");
}

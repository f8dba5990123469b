//! The engine against Hugging Face transformers (fixtures from scripts/gen_fixtures.py):
//! each family's MoE block, last-position logits, 16 greedy tokens (library and CLI),
//! and the tokenizer.

mod common;

use std::path::PathBuf;

use common::*;
use safetensors::SafeTensors;
use serde_json::Value;
use webmoe::model::generate::{generate, SamplingParams};
use webmoe::model::load::{load_model_dir, LoadOptions, DEFAULT_KV_CACHE};
use webmoe::model::model::{LogitsFor, Model};
use webmoe::model::session::Session;
use webmoe::model::weights::FeedForwardWeights;
use webmoe::{DType, GpuContext, GpuTensor, MoeLayer};

const FAMILIES: [&str; 11] = [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "granitemoe",
    "gpt_oss",
    "gpt_oss_mxfp4",
    "deepseek_v2",
    "deepseek_v3",
    "glm4_moe",
    "ernie4_5_moe",
];

fn model_dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(family)
}

fn expected(family: &str) -> Value {
    let text = std::fs::read_to_string(model_dir(family).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tensor_f32(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn moe_blocks_match_transformers() {
    let ctx = context();
    for family in FAMILIES {
        let bytes = std::fs::read(format!(
            "{}/tests/fixtures/moe/{family}.safetensors",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let hidden = tensor_f32(&st, "hidden");
        let want_ids: Vec<u32> = st
            .tensor("topk_ids")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect();

        // The block's weights come from the saved checkpoint, through webmoe's loader.
        let config = webmoe::model::config::ModelConfig::from_dir(&model_dir(family)).unwrap();
        let store = webmoe::model::safetensors_io::TensorStore::open_dir(&model_dir(family)).unwrap();
        let weights = webmoe::model::weights::ModelWeights::load(&config, &store).unwrap();
        // The captured layer (layer 0 unless the family's first layers are dense).
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let layer: usize = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("layer"))
            .map_or(0, |l| l.parse().unwrap());
        let FeedForwardWeights::Moe(moe_weights) = &weights.layers[layer].ffn else {
            panic!("layer {layer} of {family} is not MoE")
        };
        let d = config.hidden_size;
        let tokens = hidden.len() / d;
        for decode_max_tokens in [0, tokens] {
            let mut moe_config = config.moe;
            moe_config.decode_max_tokens = decode_max_tokens;
            let layer = MoeLayer::new(&ctx, moe_config, moe_weights).unwrap();
            let input = GpuTensor::from_f32(&ctx, "hidden", &[tokens, d], &hidden, DType::F32).unwrap();
            let out = layer.forward_blocking(&ctx, &input).unwrap();
            let what = format!("{family} (decode path up to {decode_max_tokens} tokens)");
            assert_close(
                &format!("{what} router logits"),
                &out.router_logits.read_f32_blocking(&ctx).unwrap(),
                &tensor_f32(&st, "router_logits"),
                1e-5,
            );
            assert_eq!(
                out.topk_ids.read_u32_blocking(&ctx).unwrap(),
                want_ids,
                "{what} chosen experts"
            );
            assert_close(
                &format!("{what} routing weights"),
                &out.topk_weights.read_f32_blocking(&ctx).unwrap(),
                &tensor_f32(&st, "topk_weights"),
                1e-5,
            );
            assert_close(
                &format!("{what} output"),
                &out.output.read_f32_blocking(&ctx).unwrap(),
                &tensor_f32(&st, "output"),
                1e-4,
            );
        }
    }
}

/// `family`'s last-position logits within 1e-3 of transformers' and its 16 greedy
/// tokens the same, from `model`.
fn check_against_transformers(ctx: &GpuContext, family: &str, model: &Model, what: &str) {
    let exp = expected(family);
    let prompt = u32s(&exp["prompt_ids"]);
    let mut session = Session::new(ctx, model, None).unwrap();
    let logits = pollster::block_on(session.logits(ctx, model, &prompt, LogitsFor::Last)).unwrap();
    let want = f32s(&exp["last_logits"]);
    println!(
        "{what}: last-position logits, max relative error {:.2e}",
        max_relative_error(&logits, &want, 1e-6)
    );
    assert_close(&format!("{what} last-position logits"), &logits, &want, 1e-3);
    session.rewind(0).unwrap();
    let gen = pollster::block_on(generate(
        ctx,
        model,
        &mut session,
        &prompt,
        16,
        SamplingParams::greedy(),
        &[],
        |_, _| true,
    ))
    .unwrap();
    assert_eq!(gen.generated_ids, u32s(&exp["greedy_ids"]), "{what} greedy tokens");
}

/// On both kernel targets: the GPU target's forward (tiles, split GEMV and attention,
/// the combine that norms for the next layer) runs on lavapipe too.
#[test]
fn logits_and_greedy_tokens_match_transformers() {
    for ctx in contexts_for_both_targets() {
        for family in FAMILIES {
            let loaded = load_model_dir(&ctx, &model_dir(family), LoadOptions::default()).unwrap();
            let what = format!("{family} ({:?} kernels)", ctx.kernel_target);
            check_against_transformers(&ctx, family, &loaded.model, &what);
        }
    }
}

/// With f32 and with f16 KV caches (`--kv-cache`), every family gives transformers'
/// logits and greedy tokens (the default dtype's run is the test above), and f16 caches
/// take half the bytes. (Measured: f16 caches move the last logits by at most 6.1e-4
/// relative to transformers, f32 by 4e-5 or less.)
#[test]
fn kv_caches_of_either_dtype_keep_logits_and_greedy_tokens() {
    let ctx = context();
    for (family, dtype) in FAMILIES.iter().flat_map(|f| [(f, DType::F32), (f, DType::F16)]) {
        let options = LoadOptions {
            kv_cache: Some(dtype),
            ..LoadOptions::default()
        };
        let loaded = load_model_dir(&ctx, &model_dir(family), options).unwrap();
        let c = &loaded.model.config;
        let elements_per_layer = match &c.mla {
            Some(m) => (m.kv_lora_rank + m.qk_rope_head_dim).div_ceil(4) * 4,
            None => 2 * c.num_kv_heads * c.head_dim.div_ceil(4) * 4,
        };
        assert_eq!(
            loaded.model.kv_bytes_per_position(),
            (c.num_layers * elements_per_layer * dtype.size()) as u64,
            "{family} {dtype:?}"
        );
        if dtype != DEFAULT_KV_CACHE {
            check_against_transformers(&ctx, family, &loaded.model, &format!("{family}, {dtype:?} cache"));
        }
    }
    let options = LoadOptions {
        kv_cache: Some(DType::BF16),
        ..LoadOptions::default()
    };
    let err = load_model_dir(&ctx, &model_dir(FAMILIES[0]), options)
        .err()
        .expect("bf16 cache refused");
    assert!(err.to_string().contains("f32 or f16"), "{err}");
}

#[test]
fn tokenizer_matches_transformers_ids() {
    for family in FAMILIES {
        let exp = expected(family);
        let bytes = std::fs::read(model_dir(family).join("tokenizer.json")).unwrap();
        let tok = webmoe::model::tokenizer::Tokenizer::from_bytes(&bytes, "tokenizer.json").unwrap();
        assert_eq!(
            tok.encode(exp["prompt_text"].as_str().unwrap()).unwrap(),
            u32s(&exp["prompt_ids"]),
            "{family}"
        );
    }
}

#[test]
fn cli_json_interface_matches_transformers() {
    for family in FAMILIES {
        let exp = expected(family);
        let prompt: Vec<String> = u32s(&exp["prompt_ids"]).iter().map(|i| i.to_string()).collect();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
            .args(["run", "--model"])
            .arg(model_dir(family))
            .args([
                "--prompt-ids",
                &prompt.join(" "),
                "--max-tokens",
                "16",
                "--greedy",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{family}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{family}: not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)));
        assert_eq!(u32s(&json["prompt_ids"]), u32s(&exp["prompt_ids"]));
        assert_eq!(
            u32s(&json["generated_ids"]),
            u32s(&exp["greedy_ids"]),
            "{family} CLI greedy tokens"
        );
        let top = json["first_logits_top"].as_array().unwrap();
        assert_eq!(top.len(), 10);
        let want_logits = f32s(&exp["last_logits"]);
        let best = want_logits.iter().cloned().fold(f32::MIN, f32::max);
        let top_logit = top[0][1].as_f64().unwrap() as f32;
        assert!(
            (top_logit - best).abs() < 1e-2 * best.abs().max(1.0),
            "{family}: top logit {top_logit} vs {best}"
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("tokens/s"),
            "{family}: no speed report"
        );
    }
}

#[test]
fn cli_streams_text_from_a_prompt() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .args(["run", "--model"])
        .arg(model_dir("olmoe"))
        .args(["--prompt", "The quick brown fox", "--max-tokens", "8", "--seed", "3"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with("The quick brown fox") && text.trim().len() > "The quick brown fox".len(),
        "{text}"
    );
}

#[test]
fn cli_reports_the_kv_cache_bytes_per_position() {
    // f32: MLA (kv_lora_rank + qk_rope_head_dim) x layers x 4 bytes; GQA 2 x kv heads x
    // head_dim x layers x 4.
    for (family, expected) in [("deepseek_v3", (32 + 8) * 3 * 4), ("gpt_oss", 2 * 2 * 16 * 3 * 4)] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
            .args(["run", "--model", model_dir(family).to_str().unwrap()])
            .args([
                "--prompt-ids",
                "1 2 3",
                "--max-tokens",
                "1",
                "--greedy",
                "--kv-cache",
                "f32",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("KV cache {expected} bytes per position")),
            "{family}: {stderr}"
        );
        // Half with f16 caches, the default.
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
            .args(["run", "--model", model_dir(family).to_str().unwrap()])
            .args(["--prompt-ids", "1 2 3", "--max-tokens", "1", "--greedy"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("KV cache {} bytes per position", expected / 2)),
            "{family}: {stderr}"
        );
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .args(["run", "--model", model_dir("gpt_oss").to_str().unwrap()])
        .args(["--prompt-ids", "1", "--kv-cache", "bf16"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--kv-cache bf16: expected f32 or f16"), "{stderr}");
}

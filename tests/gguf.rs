//! GGUF files (written from the fixture models by scripts/hf_to_gguf.py, laid out as
//! llama.cpp's converter does): the same tokens and logits as the safetensors
//! checkpoints they came from, quantized files equal to quantizing at load, split
//! files, the tokenizer from `tokenizer.ggml.*`, and clear errors for bad files.

mod common;

use std::path::PathBuf;

use common::*;
use webmoe::model::gguf::{gguf_checkpoint, parse_gguf};
use webmoe::model::load::{gguf_split_files, load_model_path, LoadOptions, LoadedModel};
use webmoe::model::model::{LogitsFor, Model};
use webmoe::model::safetensors_io::Checkpoint;
use webmoe::model::session::Session;
use webmoe::model::tokenizer::Tokenizer;
use webmoe::{DType, ErrorKind, GpuContext, WeightFormat};

const FAMILIES: [&str; 9] = [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "granitemoe",
    "gpt_oss",
    "deepseek_v3",
    "glm4_moe",
    "ernie4_5_moe",
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(ctx: &GpuContext, path: PathBuf, options: LoadOptions) -> LoadedModel {
    load_model_path(ctx, &path, options).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn all_logits(ctx: &GpuContext, model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut session = Session::new(ctx, model, None).unwrap();
    pollster::block_on(session.logits(ctx, model, ids, LogitsFor::All)).unwrap()
}

fn expected(family: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join(format!("models/{family}/expected.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn gguf_files_run_like_the_safetensors_they_came_from() {
    let ctx = context();
    // f32 KV caches, so the comparison sees the weights' paths alone (f16 caches round
    // the keys of both, which magnifies their summation-order differences).
    let f32_caches = || LoadOptions {
        kv_cache: Some(DType::F32),
        ..LoadOptions::default()
    };
    for family in FAMILIES {
        let gguf = load(&ctx, fixtures().join(format!("gguf/{family}-f32.gguf")), f32_caches());
        let hf = load(&ctx, fixtures().join(format!("models/{family}")), f32_caches());
        let exp = expected(family);
        let prompt = u32s(&exp["prompt_ids"]);
        // llama-style files rotate interleaved pairs of permuted q/k rows: the same
        // products, summed in another order inside q.k.
        assert_close(
            &format!("{family} GGUF vs safetensors logits"),
            &all_logits(&ctx, &gguf.model, &prompt),
            &all_logits(&ctx, &hf.model, &prompt),
            1e-5,
        );
        assert_eq!(
            greedy_tokens(&ctx, &gguf.model, &prompt, 16, &[]),
            u32s(&exp["greedy_ids"]),
            "{family}: greedy tokens from GGUF"
        );
        // The tokenizer rebuilt from tokenizer.ggml.* matches tokenizer.json.
        let text = exp["prompt_text"]
            .as_str()
            .unwrap_or("The quick brown fox jumps over the lazy dog.");
        let json = Tokenizer::from_bytes(
            &std::fs::read(fixtures().join(format!("models/{family}/tokenizer.json"))).unwrap(),
            "tokenizer.json",
        )
        .unwrap();
        assert_eq!(
            gguf.tokenizer().unwrap().encode(text).unwrap(),
            json.encode(text).unwrap(),
            "{family}"
        );
        let ids = json.encode(text).unwrap();
        assert_eq!(
            gguf.tokenizer().unwrap().decode(&ids).unwrap(),
            json.decode(&ids).unwrap()
        );
    }
}

/// Asserts that the GGUF file `gguf` gives the logits of `family`'s safetensors fixture
/// loaded with `options` (the same weights stored the same way).
fn assert_gguf_equals_load(ctx: &GpuContext, gguf: &str, family: &str, options: LoadOptions, tolerance: f32) {
    let from_gguf = load(ctx, fixtures().join("gguf").join(gguf), LoadOptions::default());
    let from_safetensors = load(ctx, fixtures().join(format!("models/{family}")), options);
    let prompt = u32s(&expected(family)["prompt_ids"]);
    assert_close(
        &format!("{gguf} vs {family} loaded with {options:?}"),
        &all_logits(ctx, &from_gguf.model, &prompt),
        &all_logits(ctx, &from_safetensors.model, &prompt),
        tolerance,
    );
}

#[test]
fn gguf_files_equal_converting_or_quantizing_at_load() {
    let ctx = context();
    // bf16 equals converting at load (--dtype bf16).
    let bf16 = LoadOptions {
        weight_format: Some(WeightFormat::BF16),
        ..Default::default()
    };
    assert_gguf_equals_load(&ctx, "qwen3_moe-bf16.gguf", "qwen3_moe", bf16, 1e-6);
    // Granite's file is llama-style (permuted q/k rows, interleaved RoPE): the same
    // products summed in another order inside q.k, hence 1e-5 there.
    for (family, format, tolerance) in [
        ("olmoe", WeightFormat::Q8_0, 1e-6),
        ("qwen2_moe", WeightFormat::Q4_0, 1e-6),
        ("granitemoe", WeightFormat::Mxfp4, 1e-5),
    ] {
        let quantized = LoadOptions {
            quantize: Some(format),
            ..Default::default()
        };
        assert_gguf_equals_load(&ctx, &format!("{family}-{format}.gguf"), family, quantized, tolerance);
    }
    // gpt-oss as llama.cpp's converter writes it: MXFP4 experts (repacked from Hugging
    // Face's blocks and scales), the rest bf16, equals the MXFP4 checkpoint as stored.
    assert_gguf_equals_load(
        &ctx,
        "gpt_oss_mxfp4.gguf",
        "gpt_oss_mxfp4",
        LoadOptions::default(),
        1e-6,
    );
}

#[test]
fn split_gguf_files_load_from_the_first() {
    let ctx = context();
    let first = fixtures().join("gguf/split/qwen3_moe-00001-of-00002.gguf");
    let files = gguf_split_files(&first);
    assert_eq!(files.len(), 2);
    assert!(files[1].ends_with("qwen3_moe-00002-of-00002.gguf"));
    let f16 = LoadOptions {
        weight_format: Some(WeightFormat::F16),
        ..Default::default()
    };
    assert_gguf_equals_load(&ctx, "split/qwen3_moe-00001-of-00002.gguf", "qwen3_moe", f16, 1e-6);
}

#[test]
fn bad_gguf_files_are_named_errors() {
    let ctx = context();
    let path = fixtures().join("gguf/olmoe-f32.gguf");
    let bytes = std::fs::read(&path).unwrap();
    // Truncated: the tensor data runs past the end.
    let err = parse_gguf("cut.gguf", &bytes[..bytes.len() / 2], (bytes.len() / 2) as u64).unwrap_err();
    assert!(
        err.to_string().contains("cut.gguf") && err.to_string().contains("truncated"),
        "{err}"
    );
    // Cut inside the metadata.
    let err = parse_gguf("short.gguf", &bytes[..100], 100).unwrap_err();
    assert!(err.to_string().contains("short.gguf"), "{err}");
    // Not GGUF at all.
    let err = parse_gguf("junk.gguf", b"GGML and then some", 18).unwrap_err();
    assert!(err.to_string().contains("magic"), "{err}");
    // A version from the future.
    let mut v9 = bytes.clone();
    v9[4..8].copy_from_slice(&9u32.to_le_bytes());
    let err = parse_gguf("v9.gguf", &v9, v9.len() as u64).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    // A tensor in a type webmoe does not read: named with its type when the model needs it.
    let mut file = parse_gguf("olmoe.gguf", &bytes, bytes.len() as u64).unwrap();
    let t = file
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.1.attn_k.weight")
        .unwrap();
    t.ggml_type = 10; // Q2_K
    let model = gguf_checkpoint(&[file]).unwrap();
    let checkpoint = Checkpoint::new(model.shards);
    let err = Model::plan(&ctx, model.config, &checkpoint, Default::default(), 16)
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(
        err.to_string().contains("Q2_K") && err.to_string().contains("layers.1.self_attn.k_proj"),
        "{err}"
    );
    // The chat template is kept for chat front ends.
    let mut file = parse_gguf("olmoe.gguf", &bytes, bytes.len() as u64).unwrap();
    let template = "{% for m in messages %}{{ m.content }}{% endfor %}";
    file.metadata.insert(
        "tokenizer.chat_template".into(),
        webmoe::model::gguf::MetaValue::Str(template.into()),
    );
    assert_eq!(
        gguf_checkpoint(&[file]).unwrap().chat_template.as_deref(),
        Some(template)
    );
    // An architecture webmoe does not run.
    let mut file = parse_gguf("olmoe.gguf", &bytes, bytes.len() as u64).unwrap();
    file.metadata.insert(
        "general.architecture".into(),
        webmoe::model::gguf::MetaValue::Str("mamba".into()),
    );
    let err = gguf_checkpoint(&[file]).err().unwrap();
    assert!(err.to_string().contains("mamba"), "{err}");
}

#[test]
fn the_cli_runs_a_gguf_file() {
    let model = fixtures().join("gguf/qwen3_moe-f32.gguf");
    let exp = expected("qwen3_moe");
    let prompt: Vec<String> = u32s(&exp["prompt_ids"]).iter().map(|i| i.to_string()).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .args([
            "run",
            "--model",
            model.to_str().unwrap(),
            "--greedy",
            "--json",
            "--max-tokens",
            "16",
        ])
        .args(["--prompt-ids", &prompt.join(" ")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u32s(&json["generated_ids"]), u32s(&exp["greedy_ids"]));
}

#[test]
fn gguf_pre_tokenizers_build_or_leave_a_reason() {
    let bytes = std::fs::read(fixtures().join("gguf/olmoe-f32.gguf")).unwrap();
    let with = |key: &str, value: &str| {
        let mut file = parse_gguf("olmoe.gguf", &bytes, bytes.len() as u64).unwrap();
        file.metadata
            .insert(key.into(), webmoe::model::gguf::MetaValue::Str(value.into()));
        gguf_checkpoint(&[file]).unwrap()
    };
    let text = "Experts route 12345 tokens, don't they?\n  Yes.";
    for pre in ["default", "gpt-2", "olmo", "qwen2", "llama-bpe"] {
        let model = with("tokenizer.ggml.pre", pre);
        let tokenizer = model
            .tokenizer
            .unwrap_or_else(|| panic!("{pre}: {:?}", model.tokenizer_error));
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(tokenizer.decode(&ids).unwrap(), text, "{pre}");
    }
    // What webmoe cannot build leaves the model loadable, with the reason kept.
    for (key, value) in [("tokenizer.ggml.pre", "mystery"), ("tokenizer.ggml.model", "rwkv")] {
        let model = with(key, value);
        assert!(model.tokenizer.is_none());
        let why = model.tokenizer_error.unwrap();
        assert!(why.contains(value), "{why}");
    }
}

#[test]
fn quantized_gguf_files_give_the_greedy_tokens_of_transformers_on_their_dequantized_weights() {
    // scripts/gen_gguf_expected.py: transformers with each file's weights, dequantized.
    let ctx = context();
    let text = std::fs::read_to_string(fixtures().join("gguf/expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = expected.as_object().unwrap();
    assert_eq!(cases.len(), 5);
    for (file, exp) in cases {
        let gguf = load(&ctx, fixtures().join("gguf").join(file), LoadOptions::default());
        let generated = greedy_tokens(&ctx, &gguf.model, &u32s(&exp["prompt_ids"]), 16, &[]);
        assert_eq!(generated, u32s(&exp["greedy_ids"]), "{file}");
    }
}

#[test]
fn sentencepiece_gguf_tokenizer_gives_llama_cpp_ids() {
    // scripts/gen_spm_fixture.py: a small `llama` (SentencePiece) vocabulary and
    // llama.cpp's own ids for a few texts (spaces, tabs, new lines, byte fallback).
    let path = fixtures().join("gguf/spm-vocab.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let file = parse_gguf("spm-vocab.gguf", &bytes, bytes.len() as u64).unwrap();
    let tokenizer = webmoe::model::gguf::tokenizer_of(&file.metadata, "spm-vocab.gguf")
        .unwrap()
        .unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("gguf/spm-vocab.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let mut ids = tokenizer.encode(text).unwrap();
        // The vocabulary adds BOS (1); llama.cpp's ids were taken without it.
        assert_eq!(ids.first(), Some(&1), "{text:?}: no BOS");
        ids.remove(0);
        assert_eq!(ids, u32s(&case["ids"]), "{text:?}");
        if !text.is_empty() {
            assert_eq!(tokenizer.decode(&ids).unwrap(), text, "{text:?} does not round-trip");
        }
    }
}

#[test]
fn llama_cpp_k_quant_file_matches_the_cpu_reference() {
    // scripts/gen_kquant_fixture.py: random weights quantized by llama.cpp to Q5_K_M
    // (Q5_K and Q6_K tensors); the CPU reference decoder runs on them dequantized.
    let ctx = context();
    let path = fixtures().join("gguf/qwen3_moe-random-q5_k_m.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let file = parse_gguf("q5_k_m", &bytes, bytes.len() as u64).unwrap();
    let types: std::collections::BTreeSet<u32> = file.tensors.iter().map(|t| t.ggml_type).collect();
    assert!(
        types.contains(&13) && types.contains(&14),
        "expected Q5_K and Q6_K tensors, got types {types:?}"
    );
    let gguf = gguf_checkpoint(&[file]).unwrap();
    let store = webmoe::model::safetensors_io::TensorStore::from_parts(
        Checkpoint::new(gguf.shards.clone()),
        vec![webmoe::model::safetensors_io::ShardBytes::Owned(bytes)],
    );
    let weights = webmoe::model::weights::ModelWeights::load(&gguf.config, &store).unwrap();
    let ids = [3u32, 77, 300, 12, 5, 5, 250, 1];
    let want = webmoe::model::reference::forward_reference(&gguf.config, &weights, &ids);
    // f32 KV caches: compared with the f32 CPU reference decoder.
    let options = LoadOptions {
        kv_cache: Some(DType::F32),
        ..LoadOptions::default()
    };
    let loaded = load(&ctx, path, options);
    // Layer 0 stores q, k and v in Q5_K (one joined matrix), layer 1 v in Q6_K (three).
    assert_eq!(loaded.model.joined_qkv_layers(), 1, "layers with q, k and v joined");
    assert_close(
        "Q5_K_M GGUF logits vs CPU reference",
        &all_logits(&ctx, &loaded.model, &ids),
        &want,
        1e-4,
    );
}

#[test]
fn deepseek_v2_gguf_runs_as_llama_cpp_reads_it() {
    // A deepseek2 file cannot say transformers' V2 `group_limited_greedy` (groups by
    // their best expert) nor a RoPE mscale apart from mscale_all_dim: llama.cpp scores
    // groups by their two best and puts no magnitude on cos/sin. The same checkpoint
    // configured that way (`noaux_tc`, mscale = mscale_all_dim) gives the file's logits,
    // and transformers run that way gives its greedy tokens.
    let ctx = context();
    let dir = std::env::temp_dir().join(format!("webmoe-deepseek-v2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures().join("models/deepseek_v2")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["topk_method"] = "noaux_tc".into();
    config["rope_parameters"]["mscale"] = config["rope_parameters"]["mscale_all_dim"].clone();
    std::fs::write(&path, config.to_string()).unwrap();
    let gguf = load(
        &ctx,
        fixtures().join("gguf/deepseek_v2-f32.gguf"),
        LoadOptions::default(),
    );
    let hf = load(&ctx, dir.clone(), LoadOptions::default());
    let exp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gguf/deepseek_v2-llama-cpp-semantics.json")).unwrap(),
    )
    .unwrap();
    let prompt = u32s(&exp["prompt_ids"]);
    assert_close(
        "deepseek_v2 GGUF vs safetensors read as llama.cpp does",
        &all_logits(&ctx, &gguf.model, &prompt),
        &all_logits(&ctx, &hf.model, &prompt),
        1e-5,
    );
    assert_eq!(
        greedy_tokens(&ctx, &gguf.model, &prompt, 16, &[]),
        u32s(&exp["greedy_ids"])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

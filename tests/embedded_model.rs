//! The embedded default model (models/tiny-moe): the engine reproduces what
//! transformers recorded at training time, and the README's first command works.

mod common;

use common::u32s;

use std::path::PathBuf;

use serde_json::Value;
use webmoe::model::load::{load_model_dir, LoadOptions};
use webmoe::model::perplexity::perplexity;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-moe")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(model_dir().join("expected.json")).unwrap()).unwrap()
}

#[test]
fn heldout_perplexity_matches_transformers() {
    let ctx = common::context();
    let exp = expected();
    let loaded = load_model_dir(&ctx, &model_dir(), LoadOptions::default()).unwrap();
    let text = std::fs::read_to_string(model_dir().join(exp["heldout_file"].as_str().unwrap())).unwrap();
    let tokens = loaded.tokenizer().unwrap().encode(&text).unwrap();
    let window = exp["heldout_window"].as_u64().unwrap() as usize;
    let result = pollster::block_on(perplexity(&ctx, &loaded.model, &tokens, window)).unwrap();
    let want = exp["heldout_excerpt_perplexity"].as_f64().unwrap();
    let rel = (result.perplexity - want).abs() / want;
    println!(
        "engine perplexity {:.4}, transformers {want:.4} ({rel:.2e} relative), {:.1} tokens/s",
        result.perplexity,
        result.tokens_per_second()
    );
    assert!(rel < 5e-3, "engine {} vs transformers {want}", result.perplexity);
}

#[test]
fn greedy_continuation_matches_transformers() {
    let ctx = common::context();
    let exp = expected();
    let loaded = load_model_dir(&ctx, &model_dir(), LoadOptions::default()).unwrap();
    let prompt = loaded
        .tokenizer()
        .unwrap()
        .encode(exp["prompt_text"].as_str().unwrap())
        .unwrap();
    assert_eq!(prompt, u32s(&exp["prompt_ids"]));
    let generated = common::greedy_tokens(&ctx, &loaded.model, &prompt, 32, &[]);
    assert_eq!(generated, u32s(&exp["greedy_ids"]));
}

#[test]
fn first_command_writes_text_from_the_embedded_model() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("The Rust programming language") && text.split_whitespace().count() > 10,
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens/s"));
}

#[test]
fn perplexity_command_reports_perplexity_and_speed() {
    let file = model_dir().join("heldout.txt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .args(["perplexity", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("perplexity "));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens/s"));
}

#[test]
fn no_adapter_gives_a_clear_message_naming_the_fix() {
    // No adapter exists for this backend on Linux: the same path as a machine without a GPU driver.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .env("WGPU_BACKEND", "dx12")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "no device: exit code 3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no GPU adapter") && err.contains("mesa-vulkan-drivers") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn quantized_at_load_keeps_perplexity_close_to_bf16() {
    // On all of heldout.txt (`webmoe perplexity --quantize ...`): bf16 31.2446, q8_0
    // 31.2791 (+0.11%), q4_0 31.6114 (+1.17%); llama.cpp's own Q8_0 file gives 31.267
    // on the same ids and windows. Here the first 4 windows, to keep the suite short.
    let ctx = common::context();
    let exp = expected();
    let text = std::fs::read_to_string(model_dir().join(exp["heldout_file"].as_str().unwrap())).unwrap();
    let window = exp["heldout_window"].as_u64().unwrap() as usize;
    let ppl = |quantize: Option<webmoe::WeightFormat>| {
        let options = LoadOptions {
            quantize,
            ..Default::default()
        };
        let loaded = load_model_dir(&ctx, &model_dir(), options).unwrap();
        let tokens = loaded.tokenizer().unwrap().encode(&text).unwrap();
        let tokens = &tokens[..tokens.len().min(4 * window)];
        pollster::block_on(perplexity(&ctx, &loaded.model, tokens, window))
            .unwrap()
            .perplexity
    };
    let base = ppl(None);
    for (format, bound) in [(webmoe::WeightFormat::Q8_0, 0.005), (webmoe::WeightFormat::Q4_0, 0.03)] {
        let q = ppl(Some(format));
        let rel = (q - base) / base;
        println!("{format}: perplexity {q:.4} vs bf16 {base:.4} ({:+.2}%)", 100.0 * rel);
        assert!(rel.abs() < bound, "{format}: {q} vs {base}");
        assert!(q != base, "{format} changed nothing: the weights were not quantized");
    }
}

/// llama.cpp's Q4_K_M file of the embedded model (Q4_K, Q6_K, Q5_0, Q8_0 tensors), with
/// what llama.cpp generated from it (models/tiny-moe/llama_cpp.json).
fn llama_cpp() -> (PathBuf, Value) {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("llama_cpp.json")).unwrap()).unwrap();
    (model_dir().join(meta["file"].as_str().unwrap()), meta)
}

#[test]
fn llama_cpp_q4_k_m_file_gives_llama_cpp_greedy_text() {
    let ctx = common::context();
    let (path, meta) = llama_cpp();
    let loaded = webmoe::model::load::load_model_path(&ctx, &path, LoadOptions::default()).unwrap();
    let tokenizer = loaded.tokenizer().unwrap();
    let prompt = tokenizer.encode(meta["prompt_text"].as_str().unwrap()).unwrap();
    let max_tokens = meta["max_tokens"].as_u64().unwrap() as usize;
    let stop = &loaded.model.config.eos_token_ids;
    let generated = common::greedy_tokens(&ctx, &loaded.model, &prompt, max_tokens, stop);
    let all: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
    assert_eq!(
        tokenizer.decode(&all).unwrap(),
        meta["llama_cpp_greedy_text"].as_str().unwrap(),
        "webmoe and llama.cpp disagree on {}",
        path.display()
    );
}

#[test]
fn llama_cpp_q4_k_m_file_matches_the_cpu_reference_and_keeps_perplexity() {
    let ctx = common::context();
    let (path, _) = llama_cpp();
    // f32 KV caches: compared with the f32 CPU reference decoder.
    let options = LoadOptions {
        kv_cache: Some(webmoe::DType::F32),
        ..LoadOptions::default()
    };
    let loaded = webmoe::model::load::load_model_path(&ctx, &path, options).unwrap();
    // The CPU reference decoder on the same weights, dequantized on the host.
    let file = std::fs::read(&path).unwrap();
    let parsed = webmoe::model::gguf::parse_gguf("q4_k_m", &file, file.len() as u64).unwrap();
    let gguf = webmoe::model::gguf::gguf_checkpoint(&[parsed]).unwrap();
    let store = webmoe::model::safetensors_io::TensorStore::from_parts(
        webmoe::model::safetensors_io::Checkpoint::new(gguf.shards),
        vec![webmoe::model::safetensors_io::ShardBytes::Owned(file)],
    );
    let weights = webmoe::model::weights::ModelWeights::load(&gguf.config, &store).unwrap();
    let ids = [17u32, 300, 5, 1999, 42, 8, 8, 640];
    let want = webmoe::model::reference::forward_reference(&gguf.config, &weights, &ids);
    let mut session = webmoe::model::session::Session::new(&ctx, &loaded.model, None).unwrap();
    let got =
        pollster::block_on(session.logits(&ctx, &loaded.model, &ids, webmoe::model::model::LogitsFor::All)).unwrap();
    common::assert_close("Q4_K_M GGUF logits vs CPU reference", &got, &want, 1e-4);

    // Perplexity on the first 4 held-out windows within 3% of bf16 (the whole file:
    // bf16 31.2446, this file 31.3405).
    let exp = expected();
    let text = std::fs::read_to_string(model_dir().join(exp["heldout_file"].as_str().unwrap())).unwrap();
    let window = exp["heldout_window"].as_u64().unwrap() as usize;
    let bf16 = load_model_dir(&ctx, &model_dir(), LoadOptions::default()).unwrap();
    let tokens = bf16.tokenizer().unwrap().encode(&text).unwrap();
    let tokens = &tokens[..tokens.len().min(4 * window)];
    assert_eq!(
        loaded.tokenizer().unwrap().encode(&text).unwrap()[..tokens.len()],
        tokens[..]
    );
    let ppl = |m: &webmoe::model::model::Model| {
        pollster::block_on(perplexity(&ctx, m, tokens, window))
            .unwrap()
            .perplexity
    };
    let (base, q) = (ppl(&bf16.model), ppl(&loaded.model));
    println!("Q4_K_M perplexity {q:.4} vs bf16 {base:.4}");
    assert!(((q - base) / base).abs() < 0.03 && q != base, "{q} vs {base}");
}

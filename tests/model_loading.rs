//! Bad checkpoints and bad requests give errors that name what is wrong, never a panic.

mod common;

use std::path::{Path, PathBuf};

use webmoe::model::config::ModelConfig;
use webmoe::model::load::{load_model_dir, LoadOptions};
use webmoe::model::safetensors_io::TensorStore;
use webmoe::model::weights::ModelWeights;

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(family)
}

/// A scratch copy of a fixture model directory.
fn copy_of(family: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("webmoe-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(family)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    let ctx = common::context();
    match load_model_dir(&ctx, dir, LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(value.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string(&value).unwrap()).unwrap();
}

#[test]
fn truncated_safetensors_is_named() {
    let dir = copy_of("olmoe", "truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn header_offsets_past_the_end_are_an_error() {
    let dir = copy_of("olmoe", "offsets");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // Push the end offset of the first tensor far past the file, keeping the header length.
    let at = header.find("\"data_offsets\":[").unwrap() + "\"data_offsets\":[".len();
    let close = at + header[at..].find(']').unwrap();
    let first: Vec<&str> = header[at..close].split(',').collect();
    let replacement = format!("{},999999999", first[0]);
    let mut new_header = format!("{}{}{}", &header[..at], replacement, &header[close..]);
    if new_header.len() <= n {
        new_header.push_str(&" ".repeat(n - new_header.len()));
        let mut out = bytes[..8].to_vec();
        out.extend_from_slice(new_header.as_bytes());
        out.extend_from_slice(&bytes[8 + n..]);
        std::fs::write(&path, out).unwrap();
    } else {
        // Longer header: rewrite the length prefix too.
        let mut out = (new_header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(new_header.as_bytes());
        out.extend_from_slice(&bytes[8 + n..]);
        std::fs::write(&path, out).unwrap();
    }
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn garbage_header_is_an_error() {
    let err = TensorStore::from_bytes(vec![(
        "junk.safetensors".into(),
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!".to_vec(),
    )])
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("junk.safetensors"), "{err}");
    let err = TensorStore::from_bytes(vec![("tiny.safetensors".into(), vec![1, 2, 3])])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tiny.safetensors"), "{err}");
}

/// A store with one tensor of the given dtype and shape.
fn one_tensor(name: &str, dtype: safetensors::Dtype, shape: Vec<usize>) -> TensorStore {
    let len: usize = shape.iter().product::<usize>() * dtype.bitsize() / 8;
    let data = vec![0u8; len];
    let view = safetensors::tensor::TensorView::new(dtype, shape, &data).unwrap();
    let bytes = safetensors::serialize([(name, view)], None).unwrap();
    TensorStore::from_bytes(vec![("one.safetensors".into(), bytes)]).unwrap()
}

#[test]
fn wrong_shape_wrong_dtype_and_missing_tensors_are_named() {
    let store = one_tensor("model.norm.weight", safetensors::Dtype::F32, vec![3, 4]);
    let err = store.get_f32("model.norm.weight", &[12]).unwrap_err().to_string();
    assert!(
        err.contains("model.norm.weight") && err.contains("[12]") && err.contains("[3, 4]"),
        "{err}"
    );
    let store = one_tensor("model.norm.weight", safetensors::Dtype::I64, vec![4]);
    let err = store.get_f32("model.norm.weight", &[4]).unwrap_err().to_string();
    assert!(err.contains("model.norm.weight") && err.contains("I64"), "{err}");
    let err = store.get_f32("lm_head.weight", &[4]).unwrap_err().to_string();
    assert!(
        err.contains("lm_head.weight") && err.contains("one.safetensors"),
        "{err}"
    );
    // bf16 and f16 are converted.
    let store = one_tensor("w", safetensors::Dtype::BF16, vec![2]);
    assert_eq!(store.get_f32("w", &[2]).unwrap(), vec![0.0, 0.0]);
}

#[test]
fn a_config_that_disagrees_with_the_weights_names_the_tensor() {
    let dir = copy_of("qwen2_moe", "shape");
    edit_config(&dir, |c| {
        c.insert("moe_intermediate_size".into(), 33.into());
    });
    let err = load_err(&dir);
    assert!(
        err.contains("mlp.experts.0.gate_proj.weight") && err.contains("33"),
        "{err}"
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = copy_of("mixtral", "missing");
    edit_config(&dir, |c| {
        c.insert("num_local_experts".into(), 9.into());
    });
    let err = load_err(&dir);
    assert!(err.contains("experts.8") || err.contains("[9,"), "{err}");
}

#[test]
fn config_errors_name_the_field_or_list_the_architectures() {
    let good = std::fs::read_to_string(fixture("olmoe").join("config.json")).unwrap();
    for field in [
        "hidden_size",
        "num_hidden_layers",
        "vocab_size",
        "num_experts_per_tok",
        "max_position_embeddings",
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v.as_object_mut().unwrap().remove(field);
        let err = ModelConfig::from_json(&v.to_string(), "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains(field) && err.contains("config.json"), "{err}");
    }
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    let err = ModelConfig::from_json(&v.to_string(), "config.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("LlamaForCausalLM") && err.contains("MixtralForCausalLM") && err.contains("OlmoeForCausalLM"),
        "{err}"
    );
    let err = ModelConfig::from_json("{not json", "config.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["num_experts_per_tok"] = 99.into();
    let err = ModelConfig::from_json(&v.to_string(), "config.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("top_k"), "{err}");
}

#[test]
fn sharded_checkpoints_load_through_the_index() {
    let ctx = common::context();
    let dir = copy_of("olmoe", "sharded");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        std::fs::write(dir.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    std::fs::remove_file(&path).unwrap();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let config = ModelConfig::from_dir(&dir).unwrap();
    let sharded = ModelWeights::load(&config, &TensorStore::open_dir(&dir).unwrap()).unwrap();
    let whole = ModelWeights::load(&config, &TensorStore::open_dir(&fixture("olmoe")).unwrap()).unwrap();
    assert_eq!(sharded.embed_tokens, whole.embed_tokens);
    assert!(load_model_dir(&ctx, &dir, LoadOptions::default()).is_ok());
}

#[test]
fn cli_errors_are_clear_and_not_panics() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let model = fixture("qwen3_moe");
    let model = model.to_str().unwrap();
    let (code, err) = run(&["run", "--model", model, "--prompt-ids", "1 99999", "--greedy"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("vocab_size") && !err.contains("panicked"), "{err}");
    let long = vec!["5"; 300].join(" ");
    let (code, err) = run(&["run", "--model", model, "--prompt-ids", &long, "--greedy"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("context") && !err.contains("panicked"), "{err}");
    let (code, err) = run(&["run", "--model", "/no/such/dir", "--prompt", "hi"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/no/such/dir") && !err.contains("panicked"), "{err}");
}

#[test]
fn errors_have_kinds_and_the_cli_maps_them_to_exit_codes() {
    use webmoe::ErrorKind;
    let good = std::fs::read_to_string(fixture("olmoe").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    let err = ModelConfig::from_json(&v.to_string(), "config.json").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v.as_object_mut().unwrap().remove("hidden_size");
    assert_eq!(
        ModelConfig::from_json(&v.to_string(), "config.json")
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    let err = ModelConfig::from_dir(Path::new("/no/such/dir")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");

    // The CLI: 2 for an unsupported architecture, 1 for a missing directory.
    let dir = copy_of("olmoe", "kinds");
    edit_config(&dir, |c| {
        c.insert("architectures".into(), serde_json::json!(["JambaForCausalLM"]));
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .args(["run", "--model", dir.to_str().unwrap(), "--prompt-ids", "1", "--greedy"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("JambaForCausalLM") && err.contains("unsupported"), "{err}");
}

/// An edit of a config.json, for error cases.
type ConfigEdit = Box<dyn Fn(&mut serde_json::Value)>;

/// openai/gpt-oss-20b's config.json (its `layer_types` alternate sliding and full).
fn gpt_oss_20b_config() -> serde_json::Value {
    let layer_types: Vec<&str> = (0..24)
        .map(|i| {
            if i % 2 == 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    serde_json::json!({
        "architectures": ["GptOssForCausalLM"], "attention_bias": true, "attention_dropout": 0.0,
        "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02,
        "intermediate_size": 2880, "layer_types": layer_types, "max_position_embeddings": 131072,
        "model_type": "gpt_oss", "num_attention_heads": 64, "num_experts_per_tok": 4,
        "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
        "output_router_logits": false, "pad_token_id": 199999,
        "quantization_config": {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
            "quant_method": "mxfp4"
        },
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
            "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false},
        "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
        "tie_word_embeddings": false, "transformers_version": "4.55.0.dev0", "use_cache": true,
        "vocab_size": 201088
    })
}

#[test]
fn gpt_oss_20b_config_maps_to_the_decoder() {
    use webmoe::model::config::Family;
    use webmoe::ops::expert_matmul::Activation;
    use webmoe::ops::rope::RopeScaling;
    use webmoe::ops::routing::TopKOrder;
    let c = ModelConfig::from_json(&gpt_oss_20b_config().to_string(), "config.json").unwrap();
    assert_eq!(c.family, Family::GptOss);
    assert_eq!(
        (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim),
        (2880, 64, 8, 64)
    );
    assert_eq!((c.moe.num_experts(), c.moe.top_k(), c.moe.expert_ffn), (32, 4, 2880));
    assert_eq!(c.moe.routing.order, TopKOrder::TopKThenSoftmax);
    assert_eq!(
        c.moe.activation,
        Activation::ClampedSwiglu {
            alpha: 1.702,
            limit: 7.0
        }
    );
    assert_eq!(c.attention_windows[0], Some(128));
    assert_eq!(c.attention_windows[1], None);
    assert_eq!(c.attention_windows.iter().filter(|w| w.is_some()).count(), 12);
    assert!(c.attention_sinks && c.output_bias && c.attention_bias && c.experts_mxfp4);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_theta, 150000.0);
    match c.rope_scaling {
        RopeScaling::Yarn {
            factor,
            original_max_positions,
            attention_factor,
            truncate,
            ..
        } => {
            assert_eq!((factor, original_max_positions, truncate), (32.0, 4096.0, false));
            assert!((attention_factor - (0.1 * 32f64.ln() + 1.0)).abs() < 1e-12);
        }
        other => panic!("rope scaling {other:?}"),
    }
}

#[test]
fn bad_gpt_oss_configs_are_named_errors() {
    let cases: Vec<(ConfigEdit, &str)> = vec![
        (
            Box::new(|v| v["layer_types"][3] = "chunked_attention".into()),
            "chunked_attention",
        ),
        (
            Box::new(|v| v["layer_types"] = serde_json::json!(["full_attention"])),
            "layer_types",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("sliding_window");
            }),
            "sliding_window",
        ),
        (
            Box::new(|v| v["quantization_config"]["quant_method"] = "fp8".into()),
            "fp8",
        ),
        (
            Box::new(|v| v["rope_scaling"]["rope_type"] = "longrope".into()),
            "longrope",
        ),
        (Box::new(|v| v["intermediate_size"] = 2890.into()), "MXFP4"),
    ];
    for (edit, needle) in cases {
        let mut v = gpt_oss_20b_config();
        edit(&mut v);
        let err = ModelConfig::from_json(&v.to_string(), "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle) && err.contains("config.json"), "{needle}: {err}");
    }
    // Other families refuse a quantization_config they cannot read.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("olmoe").join("config.json")).unwrap()).unwrap();
    v["quantization_config"] = serde_json::json!({"quant_method": "mxfp4"});
    let err = ModelConfig::from_json(&v.to_string(), "config.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("quant_method") && err.contains("OlmoeForCausalLM"),
        "{err}"
    );
}

#[test]
fn a_gpt_oss_checkpoint_missing_its_scales_names_the_tensor() {
    let dir = copy_of("gpt_oss_mxfp4", "no-scales");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "model.layers.1.mlp.experts.down_proj_scales")
        .collect();
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&path, out).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.layers.1.mlp.experts.down_proj_scales"), "{err}");
}

/// deepseek-ai/DeepSeek-V2-Lite's config.json (the fields webmoe reads and a few more).
fn deepseek_v2_lite_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["DeepseekV2ForCausalLM"], "aux_loss_alpha": 0.001, "bos_token_id": 100000,
        "eos_token_id": 100001, "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
        "intermediate_size": 10944, "kv_lora_rank": 512, "max_position_embeddings": 163840,
        "model_type": "deepseek_v2", "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1,
        "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": false, "num_attention_heads": 16,
        "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16, "q_lora_rank": null,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
            "original_max_position_embeddings": 4096, "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": true,
        "tie_word_embeddings": false, "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16",
        "v_head_dim": 128, "vocab_size": 102400
    })
}

/// deepseek-ai/DeepSeek-V3's config.json without its FP8 quantization_config.
fn deepseek_v3_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false, "bos_token_id": 0,
        "eos_token_id": 1, "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
        "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
        "model_type": "deepseek_v3", "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8,
        "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 128,
        "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
        "num_nextn_predict_layers": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096, "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
        "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
        "v_head_dim": 128, "vocab_size": 129280
    })
}

#[test]
fn deepseek_configs_map_to_the_decoder() {
    use webmoe::model::config::{Family, MlaConfig};
    use webmoe::ops::routing::{GroupLimit, GroupScore, Scoring};
    let lite = ModelConfig::from_json(&deepseek_v2_lite_config().to_string(), "config.json").unwrap();
    assert_eq!(lite.family, Family::DeepseekV2);
    assert_eq!(
        lite.mla,
        Some(MlaConfig {
            q_lora_rank: None,
            kv_lora_rank: 512,
            qk_nope_head_dim: 128,
            qk_rope_head_dim: 64,
            v_head_dim: 128
        })
    );
    assert_eq!((lite.head_dim, lite.rotary_dim, lite.rope_interleaved), (192, 64, true));
    let mscale = 0.1 * 0.707 * 40f32.ln() + 1.0;
    assert!((lite.attention_scale - mscale * mscale / 192f32.sqrt()).abs() < 1e-6);
    assert_eq!(lite.sparse_layers.iter().filter(|s| !**s).count(), 1);
    assert!(!lite.sparse_layers[0] && lite.sparse_layers[1]);
    assert_eq!(
        (lite.moe.num_experts(), lite.moe.top_k(), lite.moe.expert_ffn),
        (64, 6, 1408)
    );
    assert_eq!(lite.moe.shared_expert.map(|s| (s.ffn, s.gated)), Some((2816, false)));
    assert_eq!(lite.moe.routing.scoring, Scoring::Softmax);
    assert_eq!(lite.moe.routing.group_limit, None);
    assert_eq!((lite.moe.routing.renormalize, lite.moe.routing.scaling), (false, 1.0));
    assert_eq!(lite.dense_ffn, 10944);

    let v3 = ModelConfig::from_json(&deepseek_v3_config().to_string(), "config.json").unwrap();
    assert_eq!(v3.family, Family::DeepseekV3);
    assert_eq!(v3.mla.unwrap().q_lora_rank, Some(1536));
    assert_eq!(v3.sparse_layers.iter().take_while(|s| !**s).count(), 3);
    assert_eq!(v3.moe.routing.scoring, Scoring::Sigmoid);
    assert_eq!(
        v3.moe.routing.group_limit,
        Some(GroupLimit {
            n_group: 8,
            topk_group: 4,
            score: GroupScore::TopTwoSum
        })
    );
    assert_eq!((v3.moe.routing.renormalize, v3.moe.routing.scaling), (true, 2.5));
    let mscale = 0.1 * 40f32.ln() + 1.0;
    assert!((v3.attention_scale - mscale * mscale / 192f32.sqrt()).abs() < 1e-6);
}

#[test]
fn bad_deepseek_configs_are_named_errors() {
    let cases: Vec<(ConfigEdit, &str)> = vec![
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("kv_lora_rank");
            }),
            "kv_lora_rank",
        ),
        (Box::new(|v| v["qk_rope_head_dim"] = 63.into()), "qk_rope_head_dim"),
        (Box::new(|v| v["v_head_dim"] = 0.into()), "v_head_dim"),
        (Box::new(|v| v["topk_method"] = "random".into()), "topk_method"),
        (Box::new(|v| v["scoring_func"] = "relu".into()), "scoring_func"),
        (Box::new(|v| v["topk_group"] = 9.into()), "topk_group"),
        (
            Box::new(|v| {
                v["quantization_config"] = serde_json::json!({"quant_method": "fp8", "fmt": "e4m3"});
            }),
            "fp8",
        ),
    ];
    for (edit, needle) in cases {
        let mut v = deepseek_v3_config();
        edit(&mut v);
        let err = ModelConfig::from_json(&v.to_string(), "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle) && err.contains("config.json"), "{needle}: {err}");
    }
}

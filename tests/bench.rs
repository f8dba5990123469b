//! The benchmark suite's arithmetic, its JSON report, and a quick run of the CLI.

use webmoe::bench::{attention_shapes, model_shapes, LayerShape, Report};

fn shape(name: &str) -> LayerShape {
    model_shapes().into_iter().find(|s| s.model.starts_with(name)).unwrap()
}

#[test]
fn flop_and_byte_counts_match_hand_computed_values() {
    // Mixtral-8x7B, one token: router 2*8*4096 = 65,536; two experts of
    // 3 matmuls * 2*4096*14336 = 352,321,536 FLOPs each.
    let m = shape("Mixtral");
    assert_eq!(m.flops(1), 65_536.0 + 2.0 * 352_321_536.0);
    // Weights of the 2 active experts in f16: 2 * 3*4096*14336*2 = 704,643,072 bytes,
    // router 8*4096*4 = 131,072, activations 2*4096*4 = 32,768.
    assert_eq!(m.bytes(1, 2, 2.0), 704_643_072.0 + 131_072.0 + 32_768.0);
    // In Q4_0 (18 bytes per 32 weights): 2 * 3*4096*14336 * 0.5625 = 198,180,864.
    assert_eq!(m.bytes(1, 2, 18.0 / 32.0), 198_180_864.0 + 131_072.0 + 32_768.0);
    // DeepSeek-V2-Lite at 128 tokens: router 2*128*64*2048 = 33,554,432; 6 routed + 2 shared
    // experts per token of 3*2*2048*1408 = 17,301,504 each: 128*8*17,301,504 = 17,716,740,096.
    let ds = shape("DeepSeek");
    assert_eq!(ds.flops(128), 33_554_432.0 + 17_716_740_096.0);
    // 64 active + 2 shared experts of 3*2048*1408*2 bytes = 17,301,504; router 524,288; act 2,097,152.
    assert_eq!(ds.bytes(128, 64, 2.0), 66.0 * 17_301_504.0 + 524_288.0 + 2_097_152.0);
    // Qwen3-30B-A3B decode, 8 experts: 2*128*2048 + 8*3*2*2048*768 = 524,288 + 75,497,472.
    assert_eq!(shape("Qwen3").flops(1), 524_288.0 + 75_497_472.0);
    let q = shape("Qwen3").scaled(16);
    assert_eq!((q.hidden, q.ffn, q.experts, q.top_k), (128, 48, 128, 8));
    // Qwen3-30B-A3B's decode attention at 4,096 positions reads f32 keys and values of
    // 4 kv heads x 128: 2 * 4096 * 4 * 128 * 4 = 16,777,216 bytes.
    let attention = attention_shapes()
        .into_iter()
        .find(|s| s.model.starts_with("Qwen3"))
        .unwrap();
    assert_eq!((attention.heads, attention.kv_heads, attention.head_dim), (32, 4, 128));
    assert_eq!(attention.bytes(4096), 16_777_216.0);
    // 2 tokens ending at position 9 score 9 + 10 keys: 2 * 19 * 32 heads * (128 + 128).
    assert_eq!(attention.prefill_flops(2, 10), 2.0 * 19.0 * 32.0 * 256.0);
    // DeepSeek-V2-Lite's latent cache: one 576-wide f32 key per position (the values are
    // its first 512 elements): 4096 * 576 * 4 = 9,437,184 bytes.
    let mla = attention_shapes()
        .into_iter()
        .find(|s| s.model.starts_with("DeepSeek-V2-Lite"))
        .unwrap();
    assert_eq!((mla.heads, mla.head_dim, mla.value_dim()), (16, 576, 512));
    assert_eq!(mla.bytes(4096), 9_437_184.0);
}

#[test]
fn quick_bench_runs_and_its_json_round_trips() {
    let dir = std::env::temp_dir().join(format!("webmoe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("bench.json"), dir.join("bench.svg"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .args([
            "bench",
            "--quick",
            "--shapes",
            "qwen3,mixtral",
            "--tokens",
            "1,8",
            "--repeats",
            "2",
            "--formats",
            "f16,q4_0",
            "--json",
        ])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| model |") && table.contains("Qwen3-30B-A3B") && table.contains("Mixtral-8x7B"),
        "{table}"
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let report: Report = serde_json::from_str(&text).unwrap();
    // f16: 2 shapes x 2 token counts; q4_0: Mixtral /16 only (Qwen3 /16's ffn of 48 is
    // not whole 32-element blocks, so it has no q4_0 row).
    assert_eq!(report.rows.len(), 6);
    let q4: Vec<&str> = report
        .rows
        .iter()
        .filter(|r| r.weight_format == "q4_0")
        .map(|r| r.shape.model.as_str())
        .collect();
    assert_eq!(q4.len(), 2);
    assert!(q4.iter().all(|m| m.starts_with("Mixtral")), "{q4:?}");
    assert_eq!(report.models.len(), 2);
    assert!(report.models.iter().all(|m| m.prefill_tokens_per_s > 0.0
        && m.decode_tokens_per_s > 0.0
        && m.sampled_decode_tokens_per_s > 0.0
        && m.decode_tokens > 0));
    assert!(report.ceilings.copy_gb_per_s > 0.0 && report.ceilings.f32_gflop_per_s > 0.0);
    assert!(report.ceilings.shader_read_gb_per_s.is_some_and(|g| g > 0.0));
    for row in &report.rows {
        assert!(row.layer.median_ms > 0.0 && row.active_experts >= 1 && row.active_experts <= row.shape.experts);
        assert_eq!(row.gflop, row.shape.flops(row.tokens) / 1e9);
        let per_weight = if row.weight_format == "q4_0" { 18.0 / 32.0 } else { 2.0 };
        assert_eq!(
            row.gbytes,
            row.shape.bytes(row.tokens, row.active_experts, per_weight) / 1e9
        );
    }
    // Decode attention: Qwen3 and Mixtral at 1,024 positions, one pass and split, and
    // one pass per query head.
    let models: Vec<&str> = report.attention.iter().map(|a| a.shape.model.as_str()).collect();
    assert_eq!(models, ["Mixtral-8x7B", "Qwen3-30B-A3B"]);
    for a in &report.attention {
        assert_eq!(a.context, 1024);
        // Both have 4 or 8 query heads per kv head and rows of 128: workgroups of 4
        // heads, so 8 workgroups a token in one pass (and the 32-run cap).
        assert_eq!(a.splits, webmoe::ops::attention::decode_splits(a.shape.heads / 4));
        assert_eq!(a.splits, 32);
        assert_eq!(a.gbytes, a.shape.bytes(a.context) / 1e9);
        assert!(a.one_pass.median_ms > 0.0 && a.split.median_ms > 0.0);
        for t in [&a.per_head, &a.f16_one_pass, &a.f16_split] {
            assert!(t.as_ref().is_some_and(|t| t.median_ms > 0.0));
        }
        let prefill = a.prefill.as_ref().expect("prefill attention timed");
        assert_eq!(prefill.tokens, 16);
        assert_eq!(prefill.gflop, a.shape.prefill_flops(16, 1024) / 1e9);
        assert!(prefill.per_head.median_ms > 0.0 && prefill.grouped.median_ms > 0.0);
    }
    assert!(table.contains("Decode attention"), "{table}");
    assert!(table.contains("Prefill attention"), "{table}");
    let again: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(again, report);
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
}

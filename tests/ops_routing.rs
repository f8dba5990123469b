//! Router logits, top-k routing (separate and fused) and the capacity limit against
//! their CPU references.

mod common;

use common::*;
use rand::Rng;
use webmoe::gpu::kernel::SENTINEL;
use webmoe::ops::capacity::{capacity_reference, encode_capacity};
use webmoe::ops::router::{encode_router_logits, encode_router_logits_tiled, router_logits_reference};
use webmoe::ops::routing::*;
use webmoe::{DType, GpuContext, GpuTensor};

const TOKENS: &[usize] = &[1, 2, 7, 64, 257];
const EXPERTS: &[usize] = &[1, 4, 8, 60, 128];

#[test]
fn router_logits_match_reference() {
    let ctx = context();
    let mut rng = rng(1);
    for &tokens in TOKENS {
        for &experts in EXPERTS {
            // Rows a multiple of 8 long are read in runs of 8, others one by one.
            for (dim, dtype) in [
                (13, DType::F32),
                (67, DType::F16),
                (40, DType::BF16),
                (64, DType::F32),
                (24, DType::F16),
            ] {
                let x = random_vec(&mut rng, tokens * dim, 1.0);
                let w = random_vec(&mut rng, experts * dim, 1.0);
                let xg = GpuTensor::from_f32(&ctx, "x", &[tokens, dim], &x, DType::F32).unwrap();
                let wg = GpuTensor::from_f32(&ctx, "w", &[experts, dim], &w, dtype).unwrap();
                let bias = random_vec(&mut rng, experts, 1.0);
                let bg = GpuTensor::from_f32(&ctx, "bias", &[experts], &bias, DType::F32).unwrap();
                let out = GpuTensor::empty(&ctx, "logits", &[tokens, experts], DType::F32).unwrap();
                let w_stored: Vec<f32> = w.iter().map(|&v| dtype.round_trip(v)).collect();
                let mut want = router_logits_reference(&x, &w_stored, tokens, experts, dim);
                for with_bias in [false, true] {
                    if with_bias {
                        for (i, v) in want.iter_mut().enumerate() {
                            *v += bias[i % experts];
                        }
                    }
                    let router = Router {
                        weight: &wg,
                        bias: with_bias.then_some(&bg),
                    };
                    // One invocation per logit, and the tiled matmul (prompts).
                    for tiled in [false, true] {
                        out.poison(&ctx);
                        run(&ctx, |enc| {
                            if tiled {
                                encode_router_logits_tiled(&ctx, enc, &xg, router, &out).unwrap()
                            } else {
                                encode_router_logits(&ctx, enc, &xg, router, &out).unwrap()
                            }
                        });
                        let got = out.read_f32_blocking(&ctx).unwrap();
                        let what = format!("logits T={tokens} E={experts} {dtype:?} bias {with_bias} tiled {tiled}");
                        assert_close(&what, &got, &want, 1e-5);
                    }
                }
            }
        }
    }
}

/// Runs routing on the GPU and compares ids exactly and weights to 1e-5.
fn check_routing(ctx: &GpuContext, config: &RoutingConfig, logits: &[f32], bias: Option<&[f32]>, tokens: usize) {
    let (e, k) = (config.num_experts, config.top_k);
    let lg = GpuTensor::from_f32(ctx, "logits", &[tokens, e], logits, DType::F32).unwrap();
    let bg = bias.map(|b| GpuTensor::from_f32(ctx, "bias", &[e], b, DType::F32).unwrap());
    let ids = GpuTensor::empty(ctx, "ids", &[tokens, k], DType::U32).unwrap();
    let weights = GpuTensor::empty(ctx, "weights", &[tokens, k], DType::F32).unwrap();
    ids.poison(ctx);
    weights.poison(ctx);
    run(ctx, |enc| {
        encode_routing(ctx, enc, config, &lg, bg.as_ref(), &ids, &weights).unwrap()
    });
    let (want_ids, want_w) = routing_reference(config, logits, bias, tokens);
    let got_ids = ids.read_u32_blocking(ctx).unwrap();
    assert_eq!(got_ids, want_ids, "ids for {config:?}, T={tokens}");
    assert!(
        got_ids.iter().all(|&i| (i as usize) < e),
        "every slot chose a real expert"
    );
    for t in 0..tokens {
        let mut row = got_ids[t * k..(t + 1) * k].to_vec();
        row.sort();
        row.dedup();
        assert_eq!(row.len(), k, "token {t} chose an expert twice");
    }
    let got_w = weights.read_f32_blocking(ctx).unwrap();
    assert_close(&format!("weights for {config:?}, T={tokens}"), &got_w, &want_w, 1e-5);

    // The fused kernel on the same logits (x = the logits, an identity router: each
    // logit is x_r exactly) selects the same experts with the same weights, bit for bit.
    let identity: Vec<f32> = (0..e * e).map(|i| if i / e == i % e { 1.0 } else { 0.0 }).collect();
    let router = GpuTensor::from_f32(ctx, "identity router", &[e, e], &identity, DType::F32).unwrap();
    let fused = run_fused(
        ctx,
        config,
        &lg,
        Router {
            weight: &router,
            bias: None,
        },
        bg.as_ref(),
    );
    assert_eq!(fused.logits, logits, "fused logits for {config:?}, T={tokens}");
    assert_eq!(fused.ids, got_ids, "fused ids for {config:?}, T={tokens}");
    assert_eq!(
        bits(&fused.weights),
        bits(&got_w),
        "fused weights for {config:?}, T={tokens}"
    );
}

struct Routed {
    logits: Vec<f32>,
    ids: Vec<u32>,
    weights: Vec<f32>,
}

/// Runs the fused router and selection on `x`, outputs poisoned first.
fn run_fused(
    ctx: &GpuContext,
    config: &RoutingConfig,
    x: &GpuTensor,
    router: Router,
    bias: Option<&GpuTensor>,
) -> Routed {
    let (tokens, e, k) = (x.shape[0], config.num_experts, config.top_k);
    let logits = GpuTensor::empty(ctx, "logits", &[tokens, e], DType::F32).unwrap();
    let ids = GpuTensor::empty(ctx, "ids", &[tokens, k], DType::U32).unwrap();
    let weights = GpuTensor::empty(ctx, "weights", &[tokens, k], DType::F32).unwrap();
    for t in [&logits, &ids, &weights] {
        t.poison(ctx);
    }
    run(ctx, |enc| {
        encode_routing_fused(ctx, enc, config, x, router, bias, &logits, &ids, &weights).unwrap()
    });
    Routed {
        logits: logits.read_f32_blocking(ctx).unwrap(),
        ids: ids.read_u32_blocking(ctx).unwrap(),
        weights: weights.read_f32_blocking(ctx).unwrap(),
    }
}

/// Runs the router logits and the selection as two dispatches.
fn run_separate(
    ctx: &GpuContext,
    config: &RoutingConfig,
    x: &GpuTensor,
    router: Router,
    bias: Option<&GpuTensor>,
) -> Routed {
    let (tokens, e, k) = (x.shape[0], config.num_experts, config.top_k);
    let logits = GpuTensor::empty(ctx, "logits", &[tokens, e], DType::F32).unwrap();
    let ids = GpuTensor::empty(ctx, "ids", &[tokens, k], DType::U32).unwrap();
    let weights = GpuTensor::empty(ctx, "weights", &[tokens, k], DType::F32).unwrap();
    run(ctx, |enc| {
        encode_router_logits(ctx, enc, x, router, &logits).unwrap();
        encode_routing(ctx, enc, config, &logits, bias, &ids, &weights).unwrap()
    });
    Routed {
        logits: logits.read_f32_blocking(ctx).unwrap(),
        ids: ids.read_u32_blocking(ctx).unwrap(),
        weights: weights.read_f32_blocking(ctx).unwrap(),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn fused_routing_equals_the_separate_kernels_bit_for_bit() {
    let ctx = context();
    let mut rng = rng(8);
    // (T, E, k, d, router dtype): runs of 8 and of 1, E below, at and above a workgroup.
    for (tokens, experts, k, dim, dtype) in [
        (1, 8, 2, 64, DType::BF16),
        (4, 128, 8, 72, DType::F16),
        (3, 60, 4, 13, DType::F32),
        (1, 64, 64, 40, DType::F32),
        (2, 256, 8, 24, DType::BF16),
        (1, 1, 1, 8, DType::F16),
    ] {
        let x = random_vec(&mut rng, tokens * dim, 1.0);
        let w = random_vec(&mut rng, experts * dim, 1.0);
        let router_bias_values = random_vec(&mut rng, experts, 0.5);
        let selection_bias = random_vec(&mut rng, experts, 0.3);
        let xg = GpuTensor::from_f32(&ctx, "x", &[tokens, dim], &x, DType::F32).unwrap();
        let wg = GpuTensor::from_f32(&ctx, "w", &[experts, dim], &w, dtype).unwrap();
        let rb = GpuTensor::from_f32(&ctx, "router bias", &[experts], &router_bias_values, DType::F32).unwrap();
        let sb = GpuTensor::from_f32(&ctx, "selection bias", &[experts], &selection_bias, DType::F32).unwrap();
        let sigmoid = RoutingConfig {
            scoring: Scoring::Sigmoid,
            renormalize: true,
            scaling: 2.5,
            ..RoutingConfig::softmax_top_k(experts, k, true)
        };
        let mixtral = RoutingConfig {
            order: TopKOrder::TopKThenSoftmax,
            ..RoutingConfig::softmax_top_k(experts, k, false)
        };
        for (config, selection) in [
            (RoutingConfig::softmax_top_k(experts, k, false), None),
            (mixtral, None),
            (sigmoid, Some(&sb)),
        ] {
            for router_bias in [None, Some(&rb)] {
                let router = Router {
                    weight: &wg,
                    bias: router_bias,
                };
                let what = format!(
                    "T={tokens} E={experts} k={k} d={dim} {dtype:?} {config:?} router bias {}",
                    router_bias.is_some()
                );
                let fused = run_fused(&ctx, &config, &xg, router, selection);
                let separate = run_separate(&ctx, &config, &xg, router, selection);
                assert_eq!(bits(&fused.logits), bits(&separate.logits), "logits, {what}");
                assert_eq!(fused.ids, separate.ids, "ids, {what}");
                assert_eq!(bits(&fused.weights), bits(&separate.weights), "weights, {what}");
                // And both against the CPU reference (the selection on the GPU's logits).
                let w_stored: Vec<f32> = w.iter().map(|&v| dtype.round_trip(v)).collect();
                let mut logits = router_logits_reference(&x, &w_stored, tokens, experts, dim);
                if router_bias.is_some() {
                    for (i, v) in logits.iter_mut().enumerate() {
                        *v += router_bias_values[i % experts];
                    }
                }
                assert_close(&format!("logits vs reference, {what}"), &fused.logits, &logits, 1e-5);
                let (want_ids, want_w) = routing_reference(
                    &config,
                    &fused.logits,
                    selection.map(|_| selection_bias.as_slice()),
                    tokens,
                );
                assert_eq!(fused.ids, want_ids, "ids vs reference, {what}");
                assert_close(&format!("weights vs reference, {what}"), &fused.weights, &want_w, 1e-5);
            }
        }
    }
}

fn top_ks(experts: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = [1, 2, 4, 8].into_iter().filter(|&k| k <= experts).collect();
    if !ks.contains(&experts) {
        ks.push(experts);
    }
    ks
}

#[test]
fn softmax_routing_orders_match_reference() {
    let ctx = context();
    let mut rng = rng(2);
    for &tokens in TOKENS {
        for &experts in EXPERTS {
            for k in top_ks(experts) {
                let logits = random_vec(&mut rng, tokens * experts, 4.0);
                for (order, renormalize) in [
                    (TopKOrder::ScoreThenTopK, false),
                    (TopKOrder::ScoreThenTopK, true),
                    (TopKOrder::TopKThenSoftmax, false),
                ] {
                    let config = RoutingConfig {
                        order,
                        renormalize,
                        ..RoutingConfig::softmax_top_k(experts, k, renormalize)
                    };
                    check_routing(&ctx, &config, &logits, None, tokens);
                }
            }
        }
    }
}

#[test]
fn sigmoid_routing_with_bias_and_scaling_matches_reference() {
    let ctx = context();
    let mut rng = rng(3);
    for &tokens in &[1, 7, 64] {
        for &experts in &[4, 60, 256] {
            for k in [1, 2, 8].into_iter().filter(|&k| k <= experts) {
                let logits = random_vec(&mut rng, tokens * experts, 3.0);
                let bias = random_vec(&mut rng, experts, 0.5);
                let config = RoutingConfig {
                    scoring: Scoring::Sigmoid,
                    renormalize: true,
                    scaling: 2.5,
                    ..RoutingConfig::softmax_top_k(experts, k, true)
                };
                check_routing(&ctx, &config, &logits, Some(&bias), tokens);
                check_routing(&ctx, &config, &logits, None, tokens);
            }
        }
    }
}

#[test]
fn group_limited_routing_matches_reference() {
    let ctx = context();
    let mut rng = rng(4);
    // (E, n_group, topk_group, k): DeepSeek-V3-like 256/8/4/8 and V2-like 64/8/3/6.
    for (experts, n_group, topk_group, k) in [(256, 8, 4, 8), (64, 8, 3, 6), (16, 4, 1, 4), (8, 8, 8, 8)] {
        for score in [GroupScore::Max, GroupScore::TopTwoSum] {
            for scoring in [Scoring::Softmax, Scoring::Sigmoid] {
                let tokens = 33;
                let logits = random_vec(&mut rng, tokens * experts, 3.0);
                let bias = random_vec(&mut rng, experts, 0.3);
                let config = RoutingConfig {
                    scoring,
                    renormalize: true,
                    group_limit: Some(GroupLimit {
                        n_group,
                        topk_group,
                        score,
                    }),
                    ..RoutingConfig::softmax_top_k(experts, k, true)
                };
                check_routing(&ctx, &config, &logits, Some(&bias), tokens);
                // Every chosen expert lies in one of topk_group groups.
                let (ids, _) = routing_reference(&config, &logits, Some(&bias), tokens);
                for t in 0..tokens {
                    let mut groups: Vec<u32> = ids[t * k..(t + 1) * k]
                        .iter()
                        .map(|&e| e / (experts / n_group) as u32)
                        .collect();
                    groups.sort();
                    groups.dedup();
                    assert!(groups.len() <= topk_group);
                }
            }
        }
    }
}

#[test]
fn ties_break_toward_the_lower_expert_index() {
    let ctx = context();
    let mut rng = rng(5);
    for &experts in &[4, 8, 60] {
        let tokens = 64;
        // Few distinct values: many exact ties.
        let logits: Vec<f32> = (0..tokens * experts)
            .map(|_| rng.random_range(0..3) as f32 * 0.5)
            .collect();
        for k in top_ks(experts) {
            for order in [TopKOrder::ScoreThenTopK, TopKOrder::TopKThenSoftmax] {
                let config = RoutingConfig {
                    order,
                    ..RoutingConfig::softmax_top_k(experts, k, true)
                };
                check_routing(&ctx, &config, &logits, None, tokens);
            }
        }
        // All equal: slot j must be expert j.
        let flat = vec![1.0f32; tokens * experts];
        let config = RoutingConfig::softmax_top_k(experts, experts.min(4), false);
        let (ids, _) = routing_reference(&config, &flat, None, tokens);
        assert!(ids
            .chunks(config.top_k)
            .all(|r| r.iter().enumerate().all(|(j, &e)| e == j as u32)));
        check_routing(&ctx, &config, &flat, None, tokens);
    }
}

#[test]
fn every_token_on_one_expert() {
    let ctx = context();
    let mut rng = rng(6);
    let (tokens, experts) = (257, 8);
    let mut logits = random_vec(&mut rng, tokens * experts, 1.0);
    for t in 0..tokens {
        logits[t * experts + 5] = 10.0;
    }
    let config = RoutingConfig::softmax_top_k(experts, 1, false);
    check_routing(&ctx, &config, &logits, None, tokens);
    let (ids, _) = routing_reference(&config, &logits, None, tokens);
    assert!(ids.iter().all(|&e| e == 5));
}

#[test]
fn capacity_drops_lowest_scores_and_counts_them() {
    let ctx = context();
    let mut rng = rng(7);
    for (tokens, k, experts, capacity) in [(64, 2, 8, 12), (7, 1, 4, 1), (257, 4, 8, 100), (33, 2, 4, 0)] {
        let n = tokens * k;
        let mut ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..experts as u32)).collect();
        ids[0] = SENTINEL;
        // Quantised weights: ties too.
        let weights: Vec<f32> = (0..n).map(|_| rng.random_range(0..5) as f32 / 4.0).collect();
        let ig = GpuTensor::from_u32(&ctx, "ids", &[tokens, k], &ids).unwrap();
        let wg = GpuTensor::from_f32(&ctx, "w", &[tokens, k], &weights, DType::F32).unwrap();
        let routed = GpuTensor::empty(&ctx, "routed", &[tokens, k], DType::U32).unwrap();
        let dropped = GpuTensor::empty(&ctx, "dropped", &[experts], DType::U32).unwrap();
        routed.poison(&ctx);
        dropped.poison(&ctx);
        run(&ctx, |enc| {
            encode_capacity(&ctx, enc, &ig, &wg, capacity, &routed, &dropped).unwrap()
        });
        let (want_routed, want_dropped) = capacity_reference(&ids, &weights, experts, capacity);
        assert_eq!(routed.read_u32_blocking(&ctx).unwrap(), want_routed);
        assert_eq!(dropped.read_u32_blocking(&ctx).unwrap(), want_dropped);
        for e in 0..experts as u32 {
            assert!(want_routed.iter().filter(|&&r| r == e).count() <= capacity);
        }
    }
}

#[test]
fn invalid_routing_configs_are_errors() {
    let bad = [
        RoutingConfig::softmax_top_k(8, 9, false),
        RoutingConfig::softmax_top_k(0, 1, false),
        RoutingConfig::softmax_top_k(8, 0, false),
        RoutingConfig {
            group_limit: Some(GroupLimit {
                n_group: 3,
                topk_group: 1,
                score: GroupScore::Max,
            }),
            ..RoutingConfig::softmax_top_k(8, 2, false)
        },
        RoutingConfig {
            group_limit: Some(GroupLimit {
                n_group: 4,
                topk_group: 1,
                score: GroupScore::Max,
            }),
            ..RoutingConfig::softmax_top_k(8, 4, false)
        },
    ];
    for config in bad {
        let err = config.validate().expect_err("invalid config accepted");
        assert!(matches!(err, webmoe::Error::Config(_)), "{err}");
    }
}

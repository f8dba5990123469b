//! A compact run of every GPU op against its CPU reference, for adapters the test
//! suite cannot reach directly (the browser's WebGPU through wasm; `Engine.selfTest`).
//! The native test suite covers the same ops over many more shapes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::Result;
use crate::gpu::kernel::Recorder;
use crate::gpu::{DType, GpuContext, GpuTensor, KernelTarget};
use crate::moe::reference::moe_reference;
use crate::moe::{MoeConfig, MoeLayer, MoeWeights, SharedExpertConfig};
use crate::ops::attention::{
    attention_reference, encode_attend, encode_attention, f16_cache_values, AttentionOptions, KvCache,
};
use crate::ops::attention_inputs::{
    attention_inputs_reference, encode_attention_inputs, HeadRows, InputTransforms, InputsReference,
};
use crate::ops::combine::{combine_reference, encode_combine, NextNorm};
use crate::ops::embedding::encode_embedding_in_runs;
use crate::ops::norm::{encode_rms_norm, encode_rms_norm_pair, rms_norm_reference};
use crate::ops::rope::{encode_rope_pair, rope_reference, rope_table, upload_rope_table, RopeAngles};
use crate::ops::routing::{GroupLimit, GroupScore, Scoring, TopKOrder};
use crate::ops::sampling::{argmax_reference, encode_argmax, encode_sample, sample_reference, RowSampling, Sampled};
use crate::ops::TokenPositions;
use crate::weights::{WeightFormat, WeightMatrix};

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    /// Largest error relative to the reference's largest magnitude (or mismatches for ids).
    pub error: f64,
    pub tolerance: f64,
    pub passed: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub adapter: String,
    pub checks: Vec<Check>,
    pub passed: usize,
    pub failed: usize,
}

fn random(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs())) as f64;
    got.iter()
        .zip(want)
        .map(|(a, b)| {
            if a.is_nan() || b.is_nan() {
                f64::INFINITY
            } else {
                (a - b).abs() as f64 / scale
            }
        })
        .fold(if got.len() == want.len() { 0.0 } else { f64::INFINITY }, f64::max)
}

fn check(name: impl Into<String>, error: f64, tolerance: f64, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        error,
        tolerance,
        passed: error <= tolerance,
        detail: detail.into(),
    }
}

/// The MoE layer cases: routing variants, both expert paths, dtypes, shared expert.
fn layer_cases() -> Vec<(String, MoeConfig, usize, bool)> {
    let mut cases = Vec::new();
    for &(tokens, experts, k) in &[(1, 8, 2), (7, 60, 4), (64, 8, 2), (33, 128, 8), (20, 4, 4)] {
        let mut c = MoeConfig::new(67, 45, experts, k);
        c.routing.renormalize = tokens % 2 == 0;
        cases.push((format!("moe layer T={tokens} E={experts} k={k}"), c, tokens, false));
    }
    let mut mixtral = MoeConfig::new(32, 24, 8, 2);
    mixtral.routing.order = TopKOrder::TopKThenSoftmax;
    cases.push(("moe layer top-k then softmax".into(), mixtral, 17, false));
    let mut deepseek = MoeConfig::new(32, 24, 16, 4);
    deepseek.routing.scoring = Scoring::Sigmoid;
    deepseek.routing.renormalize = true;
    deepseek.routing.scaling = 2.5;
    deepseek.routing.group_limit = Some(GroupLimit {
        n_group: 4,
        topk_group: 2,
        score: GroupScore::TopTwoSum,
    });
    cases.push(("moe layer sigmoid + bias + groups".into(), deepseek, 9, true));
    for (format, d, f) in [
        (WeightFormat::F16, 48, 24),
        (WeightFormat::BF16, 48, 24),
        (WeightFormat::Q8_0, 64, 96),
        (WeightFormat::Q4_0, 96, 64),
    ] {
        let name = format.to_string();
        let mut c = MoeConfig::new(d, f, 12, 4);
        c.weight_format = format;
        c.shared_expert = Some(SharedExpertConfig { ffn: 64, gated: true });
        cases.push((format!("moe layer {name} weights + gated shared expert"), c, 11, false));
    }
    let mut capacity = MoeConfig::new(24, 16, 8, 2);
    capacity.capacity_factor = Some(0.5);
    cases.push(("moe layer capacity 0.5".into(), capacity, 33, false));
    cases
}

async fn layer_check(
    ctx: &GpuContext,
    name: &str,
    config: MoeConfig,
    tokens: usize,
    bias: bool,
    seed: u64,
) -> Result<Vec<Check>> {
    let weights = MoeWeights::random(&config, seed, bias);
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    let hidden = random(&mut rng, tokens * config.hidden_size, 1.0);
    let want = moe_reference(&config, &weights, &hidden);
    let mut checks = Vec::new();
    for decode in [false, true] {
        let mut c = config;
        c.decode_max_tokens = if decode { tokens } else { 0 };
        let layer = MoeLayer::new(ctx, c, &weights)?;
        let input = GpuTensor::from_f32(ctx, "hidden", &[tokens, c.hidden_size], &hidden, DType::F32)?;
        let out = layer.forward(ctx, &input).await?;
        let path = if decode { "gemv" } else { "grouped" };
        let ids = out.routed_ids.read_u32(ctx).await?;
        let mismatched = ids.iter().zip(&want.routed_ids).filter(|(a, b)| a != b).count();
        checks.push(check(
            format!("{name} [{path}] expert ids"),
            mismatched as f64,
            0.0,
            format!("{mismatched} of {} differ", ids.len()),
        ));
        let counts = out.expert_counts.read_u32(ctx).await?;
        let wrong = counts.iter().zip(&want.expert_counts).filter(|(a, b)| a != b).count();
        checks.push(check(format!("{name} [{path}] expert counts"), wrong as f64, 0.0, ""));
        let w = out.topk_weights.read_f32(ctx).await?;
        checks.push(check(
            format!("{name} [{path}] routing weights"),
            relative_error(&w, &want.topk_weights),
            1e-5,
            "",
        ));
        let y = out.output.read_f32(ctx).await?;
        let tol = if c.weight_format == WeightFormat::F32 {
            1e-5
        } else {
            2e-5
        };
        checks.push(check(
            format!("{name} [{path}] output"),
            relative_error(&y, &want.output),
            tol,
            "",
        ));
    }
    Ok(checks)
}

async fn transformer_op_checks(ctx: &GpuContext, rng: &mut ChaCha8Rng) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    let run = |f: &dyn Fn(&mut Recorder) -> Result<()>| -> Result<()> {
        let mut recorder = Recorder::new();
        f(&mut recorder)?;
        recorder.submit(ctx);
        Ok(())
    };
    // RMSNorm
    let (rows, dim) = (7, 300);
    let x = random(rng, rows * dim, 3.0);
    let w = random(rng, dim, 1.0);
    let (xg, wg) = (
        GpuTensor::from_f32(ctx, "x", &[rows, dim], &x, DType::F32)?,
        GpuTensor::from_f32(ctx, "w", &[dim], &w, DType::F32)?,
    );
    let y = GpuTensor::empty(ctx, "y", &[rows, dim], DType::F32)?;
    run(&|e| encode_rms_norm(ctx, e, &xg, &wg, 1e-6, &y))?;
    checks.push(check(
        "rms norm",
        relative_error(&y.read_f32(ctx).await?, &rms_norm_reference(&x, &w, 1e-6)),
        1e-5,
        "",
    ));
    // Two norms in one dispatch (q and k norms per head)
    let (rows2, dim2) = (12, 32);
    let (x2, w2) = (random(rng, rows2 * dim2, 3.0), random(rng, dim2, 1.0));
    let (x2g, w2g) = (
        GpuTensor::from_f32(ctx, "x2", &[rows2, dim2], &x2, DType::F32)?,
        GpuTensor::from_f32(ctx, "w2", &[dim2], &w2, DType::F32)?,
    );
    let y2 = GpuTensor::empty(ctx, "y2", &[rows2, dim2], DType::F32)?;
    run(&|e| encode_rms_norm_pair(ctx, e, (&xg, &wg, &y), (&x2g, &w2g, &y2), 1e-6))?;
    let (y, y2) = (y.read_f32(ctx).await?, y2.read_f32(ctx).await?);
    let errors = [
        relative_error(&y, &rms_norm_reference(&x, &w, 1e-6)),
        relative_error(&y2, &rms_norm_reference(&x2, &w2, 1e-6)),
    ];
    checks.push(check("rms norm pair", errors[0].max(errors[1]), 1e-5, ""));
    // RoPE at a large position: queries and keys (GQA) in one dispatch
    let (tokens, heads, kv_heads, hd, pos0) = (3, 4, 2, 32, 200);
    let table = upload_rope_table(ctx, 10000.0, hd, pos0 + tokens, &Default::default())?;
    let mut q = random(rng, tokens * heads * hd, 1.0);
    let mut k = random(rng, tokens * kv_heads * hd, 1.0);
    let qg = GpuTensor::from_f32(ctx, "q", &[tokens, heads * hd], &q, DType::F32)?;
    let kg = GpuTensor::from_f32(ctx, "k", &[tokens, kv_heads * hd], &k, DType::F32)?;
    let positions = TokenPositions::contiguous(ctx, pos0, tokens)?;
    run(&|e| {
        encode_rope_pair(
            ctx,
            e,
            (&qg, heads),
            (&kg, kv_heads),
            RopeAngles::ByPosition(&table),
            hd,
            &positions,
            false,
        );
        Ok(())
    })?;
    let host_table = rope_table(10000.0, hd, pos0 + tokens);
    rope_reference(&mut q, &host_table, hd / 2, heads, hd, pos0, false);
    rope_reference(&mut k, &host_table, hd / 2, kv_heads, hd, pos0, false);
    checks.push(check("rope q", relative_error(&qg.read_f32(ctx).await?, &q), 1e-5, ""));
    checks.push(check("rope k", relative_error(&kg.read_f32(ctx).await?, &k), 1e-5, ""));
    // Attention: prefill 9 tokens with GQA
    let (heads, kv_heads, hd, t) = (4, 2, 16, 9);
    let cache = KvCache::new(ctx, kv_heads, hd, 16)?;
    let (q, k, v) = (
        random(rng, t * heads * hd, 1.0),
        random(rng, t * kv_heads * hd, 1.0),
        random(rng, t * kv_heads * hd, 1.0),
    );
    let qg = GpuTensor::from_f32(ctx, "q", &[t, heads * hd], &q, DType::F32)?;
    let kg = GpuTensor::from_f32(ctx, "k", &[t, kv_heads * hd], &k, DType::F32)?;
    let vg = GpuTensor::from_f32(ctx, "v", &[t, kv_heads * hd], &v, DType::F32)?;
    let out = GpuTensor::empty(ctx, "out", &[t, heads * hd], DType::F32)?;
    let scale = 0.25;
    let start = TokenPositions::contiguous(ctx, 0, t)?;
    run(&|e| {
        encode_attention(
            ctx,
            e,
            &cache,
            &qg,
            &kg,
            &vg,
            heads,
            &start,
            scale,
            AttentionOptions::default(),
            &out,
        )
    })?;
    let want = attention_reference(&q, &k, &v, heads, kv_heads, hd, 0, scale, None, None);
    checks.push(check(
        "attention (GQA, causal)",
        relative_error(&out.read_f32(ctx).await?, &want),
        1e-5,
        "",
    ));
    // Attention over several 256-position blocks, with a window and sinks (the online
    // softmax rescales across blocks)
    let (heads, kv_heads, hd, t) = (2, 1, 8, 300);
    let cache = KvCache::new(ctx, kv_heads, hd, t)?;
    let (q, k, v) = (
        random(rng, t * heads * hd, 1.0),
        random(rng, t * kv_heads * hd, 1.0),
        random(rng, t * kv_heads * hd, 1.0),
    );
    let sinks = random(rng, heads, 2.0);
    let qg = GpuTensor::from_f32(ctx, "q", &[t, heads * hd], &q, DType::F32)?;
    let kg = GpuTensor::from_f32(ctx, "k", &[t, kv_heads * hd], &k, DType::F32)?;
    let vg = GpuTensor::from_f32(ctx, "v", &[t, kv_heads * hd], &v, DType::F32)?;
    let sinks_g = GpuTensor::from_f32(ctx, "sinks", &[heads], &sinks, DType::F32)?;
    let start = TokenPositions::contiguous(ctx, 0, t)?;
    let want = attention_reference(&q, &k, &v, heads, kv_heads, hd, 0, scale, Some(&sinks), Some(260));
    // In one pass, and split over the context into 2 runs (flash decoding); the two
    // query heads in one workgroup (they share their kv head), and a workgroup each.
    for (splits, per_head, name) in [
        (None, false, "attention (300 positions, window, sinks)"),
        (
            Some(2),
            false,
            "attention split in 2 runs (300 positions, window, sinks)",
        ),
        (None, true, "attention per head (300 positions, window, sinks)"),
        (
            Some(2),
            true,
            "attention per head split in 2 runs (300 positions, window, sinks)",
        ),
    ] {
        let out = GpuTensor::empty(ctx, "out", &[t, heads * hd], DType::F32)?;
        let options = AttentionOptions {
            sinks: Some(&sinks_g),
            window: Some(260),
            splits,
            per_head,
            share_tokens: !per_head,
        };
        run(&|e| encode_attention(ctx, e, &cache, &qg, &kg, &vg, heads, &start, scale, options, &out))?;
        checks.push(check(name, relative_error(&out.read_f32(ctx).await?, &want), 1e-5, ""));
    }
    // The same over an f16 cache (packed two to a word; no shader-f16 needed), against
    // the reference on keys and values rounded to f16 to nearest or toward zero (WGSL
    // leaves the rounding to the implementation), whichever is nearer.
    let half_cache = KvCache::of_dtype(ctx, DType::F16, 1, kv_heads, hd, t)?;
    let wants = [false, true].map(|toward_zero| {
        let (k, v) = (f16_cache_values(&k, toward_zero), f16_cache_values(&v, toward_zero));
        attention_reference(&q, &k, &v, heads, kv_heads, hd, 0, scale, Some(&sinks), Some(260))
    });
    for (splits, name) in [
        (None, "attention over an f16 cache (300 positions, window, sinks)"),
        (Some(2), "attention over an f16 cache split in 2 runs"),
    ] {
        let out = GpuTensor::empty(ctx, "out", &[t, heads * hd], DType::F32)?;
        let options = AttentionOptions {
            sinks: Some(&sinks_g),
            window: Some(260),
            splits,
            per_head: false,
            share_tokens: true,
        };
        run(&|e| encode_attention(ctx, e, &half_cache, &qg, &kg, &vg, heads, &start, scale, options, &out))?;
        let got = out.read_f32(ctx).await?;
        let error = wants
            .iter()
            .map(|want| relative_error(&got, want))
            .fold(f64::INFINITY, f64::min);
        checks.push(check(name, error, 1e-5, ""));
    }
    // Argmax over a vocabulary-sized row with a tie
    let mut logits = random(rng, 5000, 10.0);
    logits[1234] = 20.0;
    logits[4321] = 20.0;
    let lg = GpuTensor::from_f32(ctx, "logits", &[5000], &logits, DType::F32)?;
    let result = GpuTensor::empty(ctx, "argmax", &[1], DType::U32)?;
    run(&|e| {
        encode_argmax(ctx, e, &lg, &result);
        Ok(())
    })?;
    let got = result.read_u32(ctx).await?[0] as usize;
    let want = argmax_reference(&logits).unwrap_or(0);
    checks.push(check(
        "argmax (ties to the lower index)",
        (got != want) as u8 as f64,
        0.0,
        format!("got {got}, want {want}"),
    ));
    checks.push(sampling_check(ctx, rng).await?);
    checks.push(combine_norm_check(ctx, rng).await?);
    Ok(checks)
}

/// A grouped-query step's inputs in one kernel (q, k, v as one joined projection,
/// per-head norms, the clamp, RoPE at positions 200.., keys and values stored in an f16
/// cache), then attention over that cache: the queries and the attention output
/// against the references.
async fn attention_inputs_checks(ctx: &GpuContext, rng: &mut ChaCha8Rng, suffix: &str) -> Result<Vec<Check>> {
    let (t, heads, kv_heads, hd, pos0) = (3, 4, 2, 32, 200);
    let (qw, kvw) = (heads * hd, kv_heads * hd);
    let (q, k, v) = (
        random(rng, t * qw, 2.0),
        random(rng, t * kvw, 2.0),
        random(rng, t * kvw, 2.0),
    );
    let (q_norm, k_norm) = (random(rng, hd, 1.5), random(rng, hd, 1.5));
    let joined: Vec<f32> = (0..t)
        .flat_map(|i| [&q[i * qw..][..qw], &k[i * kvw..][..kvw], &v[i * kvw..][..kvw]].concat())
        .collect();
    let qkv = GpuTensor::from_f32(ctx, "qkv", &[t, qw + 2 * kvw], &joined, DType::F32)?;
    let qn = GpuTensor::from_f32(ctx, "q norm", &[hd], &q_norm, DType::F32)?;
    let kn = GpuTensor::from_f32(ctx, "k norm", &[hd], &k_norm, DType::F32)?;
    let table = upload_rope_table(ctx, 10000.0, hd, pos0 + t, &Default::default())?;
    let cache = KvCache::of_dtype(ctx, DType::F16, 1, kv_heads, hd, pos0 + t)?;
    let positions = TokenPositions::contiguous(ctx, pos0, t)?;
    let queries = GpuTensor::empty(ctx, "queries", &[t, qw], DType::F32)?;
    let out = GpuTensor::empty(ctx, "out", &[t, qw], DType::F32)?;
    let (eps, clip, scale) = (1e-6, 1.5, 0.2);
    let mut recorder = Recorder::new();
    let rows = (
        HeadRows::columns(&qkv, 0),
        HeadRows::columns(&qkv, qw),
        HeadRows::columns(&qkv, qw + kvw),
    );
    let transforms = InputTransforms {
        norms: Some((&qn, &kn)),
        eps,
        clip: Some(clip),
        angles: RopeAngles::ByPosition(&table),
        interleaved: false,
    };
    encode_attention_inputs(
        ctx,
        &mut recorder,
        &cache,
        rows,
        heads,
        transforms,
        &positions,
        &queries,
    )?;
    let options = AttentionOptions::default();
    encode_attend(
        ctx,
        &mut recorder,
        &cache,
        &queries,
        heads,
        &positions,
        scale,
        options,
        &out,
    )?;
    recorder.submit(ctx);
    let host_table = rope_table(10000.0, hd, pos0 + t);
    let reference = InputsReference {
        heads,
        kv_heads,
        head_dim: hd,
        norms: Some((&q_norm, &k_norm)),
        eps,
        clip: Some(clip),
        table: &host_table,
        half_rot: hd / 2,
        interleaved: false,
    };
    let rows: Vec<usize> = (pos0..pos0 + t).collect();
    let (want_q, want_k, want_v) = attention_inputs_reference(&q, &k, &v, &rows, &reference);
    let got = out.read_f32(ctx).await?;
    // Positions before pos0 hold the cache's zeros.
    let attention_error = [false, true]
        .map(|toward_zero| {
            let cached = |x: &[f32]| [vec![0.0; pos0 * kvw], f16_cache_values(x, toward_zero)].concat();
            let want = attention_reference(
                &want_q,
                &cached(&want_k),
                &cached(&want_v),
                heads,
                kv_heads,
                hd,
                pos0,
                scale,
                None,
                None,
            );
            relative_error(&got, &want)
        })
        .into_iter()
        .fold(f64::INFINITY, f64::min);
    Ok(vec![
        check(
            format!("attention inputs: queries (joined q/k/v, per-head norms, clamp, RoPE){suffix}"),
            relative_error(&queries.read_f32(ctx).await?, &want_q),
            1e-5,
            "",
        ),
        check(
            format!("attention inputs: attention over the keys and values they stored (f16 cache){suffix}"),
            attention_error,
            1e-5,
            "",
        ),
    ])
}

/// The decode combine (rows in assignment order, one slot dropped) adding into a
/// residual stream, then the next layer's norm of it in the same dispatch
/// (`combine_norm`): the normed rows against the references.
async fn combine_norm_check(ctx: &GpuContext, rng: &mut ChaCha8Rng) -> Result<Check> {
    let (tokens, k, dim) = (3, 4, 300);
    let mut ids: Vec<u32> = (0..tokens * k).map(|_| rng.random_range(0..8)).collect();
    ids[1] = crate::gpu::kernel::SENTINEL;
    let weights = random(rng, tokens * k, 1.0);
    let y = random(rng, tokens * k * dim, 1.0);
    let stream = random(rng, tokens * dim, 2.0);
    let norm_weight = random(rng, dim, 1.5);
    let ig = GpuTensor::from_u32(ctx, "ids", &[tokens, k], &ids)?;
    let wg = GpuTensor::from_f32(ctx, "weights", &[tokens, k], &weights, DType::F32)?;
    let yg = GpuTensor::from_f32(ctx, "y", &[tokens * k, dim], &y, DType::F32)?;
    let sg = GpuTensor::from_f32(ctx, "stream", &[tokens, dim], &stream, DType::F32)?;
    let ng = GpuTensor::from_f32(ctx, "norm weight", &[dim], &norm_weight, DType::F32)?;
    let normed = GpuTensor::empty(ctx, "normed", &[tokens, dim], DType::F32)?;
    let next = NextNorm {
        weight: &ng,
        eps: 1e-6,
        output: &normed,
    };
    let mut recorder = Recorder::new();
    encode_combine(
        ctx,
        &mut recorder,
        &ig,
        None,
        &wg,
        &yg,
        None,
        &sg,
        Some(0.5),
        Some(next),
    )?;
    recorder.submit(ctx);
    let rows: Vec<Option<Vec<f32>>> = (0..tokens * k).map(|a| Some(y[a * dim..][..dim].to_vec())).collect();
    let combined = combine_reference(&ids, &weights, &rows, None, tokens, k, dim);
    let updated: Vec<f32> = stream.iter().zip(&combined).map(|(s, c)| s + 0.5 * c).collect();
    let want = rms_norm_reference(&updated, &norm_weight, 1e-6);
    Ok(check(
        "combine then the next norm, one dispatch",
        relative_error(&normed.read_f32(ctx).await?, &want),
        1e-5,
        "",
    ))
}

/// The `sample` kernel over rows of 5,000 logits (half of them rounded, so cuts fall
/// among equal values) under greedy, temperature-only, top-k, top-p and both: the
/// token and the sizes of the kept sets match the reference's.
async fn sampling_check(ctx: &GpuContext, rng: &mut ChaCha8Rng) -> Result<Check> {
    let vocab = 5000;
    let settings = [
        (0.0, 0, 1.0),
        (1.0, 0, 1.0),
        (0.7, 40, 1.0),
        (0.8, 0, 0.9),
        (1.2, 300, 0.6),
        (1.0, 1, 0.5),
    ];
    let mut logits = Vec::new();
    let mut rows = Vec::new();
    for (r, &(temperature, top_k, top_p)) in settings.iter().enumerate() {
        let mut row = random(rng, vocab, 8.0);
        if r % 2 == 1 {
            row.iter_mut().for_each(|x| *x = x.round());
        }
        logits.extend(row);
        rows.push(RowSampling {
            temperature,
            top_k,
            top_p,
            uniform: rng.random_range(0.0..1.0),
        });
    }
    let n = rows.len();
    let lg = GpuTensor::from_f32(ctx, "logits", &[n, vocab], &logits, DType::F32)?;
    let words: Vec<u32> = bytemuck::cast_slice(&rows).to_vec();
    let settings = GpuTensor::from_u32(ctx, "settings", &[n, 4], &words)?;
    let tokens = GpuTensor::empty(ctx, "tokens", &[n], DType::U32)?;
    let details = GpuTensor::empty(ctx, "details", &[n, 4], DType::U32)?;
    details.poison(ctx);
    let mut recorder = Recorder::new();
    encode_sample(ctx, &mut recorder, &lg, &settings, &tokens, &details)?;
    recorder.submit(ctx);
    let details = details.read_u32(ctx).await?;
    let mut mismatches = Vec::new();
    for (r, draw) in rows.iter().enumerate() {
        let got = Sampled::from_details(&details[r * 4..][..4]);
        let want = sample_reference(&logits[r * vocab..][..vocab], *draw);
        if (got.token, got.kept_top_k, got.kept) != (want.token, want.kept_top_k, want.kept) {
            mismatches.push(format!("row {r}: got {got:?}, want {want:?}"));
        }
    }
    Ok(check(
        "sampling: temperature, top-k, top-p, the draw (6 rows of 5,000)",
        mismatches.len() as f64,
        0.0,
        mismatches.join("; "),
    ))
}

/// Every block format decoded on the GPU (through the embedding kernel's weight
/// accessor, the one all weight kernels share) against the CPU decoder.
async fn block_format_checks(ctx: &GpuContext, rng: &mut ChaCha8Rng) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    for format in WeightFormat::ALL.into_iter().filter(|f| f.is_quantized()) {
        let (rows, cols) = (6, 2 * format.block_elements());
        let raw = crate::weights::matrix::random_blocks(rng, format, rows * 2);
        let table = WeightMatrix::allocate(ctx, "blocks", [1, rows, cols], format)?;
        ctx.queue.write_buffer(&table.chunks[0].buffer, 0, &raw);
        let ids: Vec<u32> = (0..rows as u32).rev().collect();
        let ig = GpuTensor::from_u32(ctx, "ids", &[rows], &ids)?;
        let values = format.dequantize(&raw);
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&r| values[r as usize * cols..][..cols].to_vec())
            .collect();
        // One element per read, and runs of 8 (what the GEMV and the tiles read).
        for run in [1, 8] {
            let x = GpuTensor::empty(ctx, "x", &[rows, cols], DType::F32)?;
            x.poison(ctx);
            let mut recorder = Recorder::new();
            encode_embedding_in_runs(ctx, &mut recorder, &ig, &table, 1.0, &x, run)?;
            recorder.submit(ctx);
            checks.push(check(
                format!("{format} blocks decoded on the GPU, {run} per read"),
                relative_error(&x.read_f32(ctx).await?, &want),
                1e-6,
                "",
            ));
        }
    }
    Ok(checks)
}

/// Runs every check; errors become failed checks, so the report is always complete.
pub async fn run(ctx: &GpuContext) -> Report {
    let mut checks = Vec::new();
    // The layer on this adapter's kernels, then on the other target's (a browser's
    // fallback adapter takes the CPU choices; the GPU ones must work there too).
    let other = match ctx.kernel_target {
        KernelTarget::Gpu => KernelTarget::Cpu,
        KernelTarget::Cpu => KernelTarget::Gpu,
    };
    let other_ctx = ctx.for_kernel_target(other);
    for (target_ctx, suffix) in [(ctx, String::new()), (&other_ctx, format!(" [{other:?} kernels]"))] {
        for (i, (name, config, tokens, bias)) in layer_cases().into_iter().enumerate() {
            let name = format!("{name}{suffix}");
            match layer_check(target_ctx, &name, config, tokens, bias, 100 + i as u64).await {
                Ok(c) => checks.extend(c),
                Err(e) => checks.push(check(name, f64::INFINITY, 0.0, e.to_string())),
            }
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (target_ctx, suffix) in [(ctx, String::new()), (&other_ctx, format!(" [{other:?} kernels]"))] {
        match attention_inputs_checks(target_ctx, &mut rng, &suffix).await {
            Ok(c) => checks.extend(c),
            Err(e) => checks.push(check(
                format!("attention inputs{suffix}"),
                f64::INFINITY,
                0.0,
                e.to_string(),
            )),
        }
    }
    match transformer_op_checks(ctx, &mut rng).await {
        Ok(c) => checks.extend(c),
        Err(e) => checks.push(check("transformer ops", f64::INFINITY, 0.0, e.to_string())),
    }
    match block_format_checks(ctx, &mut rng).await {
        Ok(c) => checks.extend(c),
        Err(e) => checks.push(check("block formats", f64::INFINITY, 0.0, e.to_string())),
    }
    let failed = checks.iter().filter(|c| !c.passed).count();
    Report {
        adapter: crate::gpu::context::describe_adapter(&ctx.adapter_info),
        passed: checks.len() - failed,
        failed,
        checks,
    }
}

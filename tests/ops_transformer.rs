//! Transformer ops around the MoE layer against their CPU references: RMSNorm,
//! RoPE, KV-cache attention, embedding, argmax and the elementwise updates.

mod common;

use common::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use webmoe::gpu::kernel::Recorder;
use webmoe::ops::attention::{
    attention_reference, encode_attention, f16_cache_values, AttentionOptions, KvCache, MAX_SPLITS,
};
use webmoe::ops::elementwise::{encode_add_row_bias, encode_add_scaled, encode_scale_clamp};
use webmoe::ops::embedding::encode_embedding;
use webmoe::ops::norm::{encode_rms_norm, encode_rms_norm_pair, rms_norm_reference};
use webmoe::ops::rope::{
    encode_rope, encode_rope_pair, rope_reference, rope_table, rope_table_scaled, upload_rope_table, DynamicNtk,
    RopeAngles, RopeScaling,
};
use webmoe::ops::sampling::{argmax_reference, encode_argmax};
use webmoe::ops::TokenPositions;
use webmoe::{ContextOptions, DType, ErrorKind, GpuContext, GpuTensor, WeightFormat, WeightMatrix};

fn upload(ctx: &GpuContext, shape: &[usize], v: &[f32]) -> GpuTensor {
    GpuTensor::from_f32(ctx, "t", shape, v, DType::F32).unwrap()
}

#[test]
fn rms_norm_matches_reference() {
    for ctx in contexts_for_both_targets() {
        check_rms_norm(&ctx);
    }
}

fn check_rms_norm(ctx: &GpuContext) {
    let mut rng = rng(1);
    for &(rows, dim) in &[(1, 1), (7, 13), (64, 256), (3, 1000), (130, 8)] {
        let x = random_vec(&mut rng, rows * dim, 3.0);
        let w = random_vec(&mut rng, dim, 1.0);
        let y = GpuTensor::empty(ctx, "y", &[rows, dim], DType::F32).unwrap();
        y.poison(ctx);
        run(ctx, |enc| {
            encode_rms_norm(
                ctx,
                enc,
                &upload(ctx, &[rows, dim], &x),
                &upload(ctx, &[dim], &w),
                1e-6,
                &y,
            )
            .unwrap()
        });
        assert_close(
            &format!("rms norm {rows}x{dim}"),
            &y.read_f32_blocking(ctx).unwrap(),
            &rms_norm_reference(&x, &w, 1e-6),
            1e-5,
        );
    }
}

/// Two norms in one dispatch (a layer's q and k norms) give what each alone gives, bit
/// for bit: per-head norms of GQA widths, whole-projection norms of two widths, one row.
#[test]
fn rms_norm_pair_equals_two_single_norms() {
    for ctx in contexts_for_both_targets() {
        check_rms_norm_pair(&ctx);
    }
}

fn check_rms_norm_pair(ctx: &GpuContext) {
    let mut rng = rng(4);
    for &((rows, dim), (rows2, dim2)) in &[
        ((1, 1), (1, 1)),
        ((8 * 3, 16), (2 * 3, 16)),
        ((5, 128), (5, 64)),
        ((2, 100), (6, 100)),
        ((70 * 4, 8), (70 * 2, 8)),
    ] {
        let (x, w) = (random_vec(&mut rng, rows * dim, 3.0), random_vec(&mut rng, dim, 1.0));
        let (x2, w2) = (random_vec(&mut rng, rows2 * dim2, 3.0), random_vec(&mut rng, dim2, 1.0));
        let (xg, wg) = (upload(ctx, &[rows, dim], &x), upload(ctx, &[dim], &w));
        let (x2g, w2g) = (upload(ctx, &[rows2, dim2], &x2), upload(ctx, &[dim2], &w2));
        let outputs = || {
            let y = GpuTensor::empty(ctx, "y", &[rows, dim], DType::F32).unwrap();
            let y2 = GpuTensor::empty(ctx, "y2", &[rows2, dim2], DType::F32).unwrap();
            y.poison(ctx);
            y2.poison(ctx);
            (y, y2)
        };
        let (pair, pair2) = outputs();
        run(ctx, |enc| {
            encode_rms_norm_pair(ctx, enc, (&xg, &wg, &pair), (&x2g, &w2g, &pair2), 1e-6).unwrap()
        });
        let (single, single2) = outputs();
        run(ctx, |enc| {
            encode_rms_norm(ctx, enc, &xg, &wg, 1e-6, &single).unwrap();
            encode_rms_norm(ctx, enc, &x2g, &w2g, 1e-6, &single2).unwrap();
        });
        let what = format!("{rows}x{dim} and {rows2}x{dim2}");
        let read = |t: &GpuTensor| t.read_f32_blocking(ctx).unwrap();
        assert_close(
            &format!("norm pair {what}"),
            &read(&pair),
            &rms_norm_reference(&x, &w, 1e-6),
            1e-5,
        );
        assert_close(
            &format!("norm pair {what}"),
            &read(&pair2),
            &rms_norm_reference(&x2, &w2, 1e-6),
            1e-5,
        );
        assert_eq!(read(&pair), read(&single), "norm pair {what}: first norm, bits");
        assert_eq!(read(&pair2), read(&single2), "norm pair {what}: second norm, bits");
    }
}

/// Dynamic NTK rows written per step: each token rotates as in one forward over its
/// sequence's length in the step (or the length given), whatever else shares the step.
#[test]
fn dynamic_ntk_rope_rotates_each_token_by_its_forwards_length() {
    let ctx = context();
    let mut rng = rng(12);
    let (heads, head_dim, rot) = (3, 16, 12);
    let ntk = DynamicNtk {
        theta: 10000.0,
        rotary_dim: rot,
        factor: 3.0,
        max_positions: 8.0,
    };
    let scaling = RopeScaling::DynamicNtk {
        factor: ntk.factor,
        max_positions: ntk.max_positions,
    };
    // (slot, position): a prompt of slot 0 past max_positions, one decode token of slot
    // 2 below it, one of slot 1 past it; then the same with explicit lengths (a chunk of
    // a longer prompt).
    let placed = [(0, 7), (0, 8), (0, 9), (0, 10), (2, 4), (1, 30)];
    let default_lengths = [11, 11, 11, 11, 5, 31];
    let chunk_lengths = [20, 20, 20, 20, 5, 31];
    for (explicit, lengths) in [(false, default_lengths), (true, chunk_lengths)] {
        let tokens = placed.len();
        let mut x = random_vec(&mut rng, tokens * heads * head_dim, 1.0);
        let xg = upload(&ctx, &[tokens, heads * head_dim], &x);
        let positions = TokenPositions::with_dynamic_ntk(&ctx, tokens, ntk).unwrap();
        if explicit {
            positions.set_with_lengths(&ctx, &placed, &lengths);
        } else {
            positions.set(&ctx, &placed);
        }
        let rows = &positions.step_angles.as_ref().unwrap().0;
        run(&ctx, |enc| {
            encode_rope(
                &ctx,
                enc,
                &xg,
                RopeAngles::ByToken(rows),
                heads,
                head_dim,
                &positions,
                false,
            )
        });
        for (t, (&(_, pos), &length)) in placed.iter().zip(&lengths).enumerate() {
            let table = rope_table_scaled(ntk.theta, rot, length, &scaling);
            let token = &mut x[t * heads * head_dim..][..heads * head_dim];
            rope_reference(token, &table, rot / 2, heads, head_dim, pos, false);
        }
        assert_close(
            &format!("dynamic NTK rope, explicit lengths {explicit}"),
            &xg.read_f32_blocking(&ctx).unwrap(),
            &x,
            1e-6,
        );
    }
    // Within max_positions the rotation is plain RoPE; past it theta grows.
    assert_eq!(ntk.inv_freq_at(8), ntk.inv_freq_at(3));
    assert!(ntk.theta_at(9) > ntk.theta);
    assert_eq!(
        rope_table_scaled(10000.0, rot, 8, &scaling),
        rope_table(10000.0, rot, 8)
    );
}

#[test]
fn rope_matches_reference_with_full_and_partial_rotary() {
    let ctx = context();
    let mut rng = rng(2);
    for &(tokens, heads, head_dim, rot, pos0, interleaved) in &[
        (1, 1, 8, 8, 0, false),
        (5, 4, 16, 16, 3, false),
        (9, 2, 32, 16, 100, false),
        (3, 3, 64, 64, 1000, false),
        (5, 4, 16, 16, 3, true),
        (3, 2, 64, 64, 700, true),
    ] {
        let table = upload_rope_table(&ctx, 10000.0, rot, pos0 + tokens, &Default::default()).unwrap();
        let host_table = rope_table(10000.0, rot, pos0 + tokens);
        let mut x = random_vec(&mut rng, tokens * heads * head_dim, 1.0);
        let xg = upload(&ctx, &[tokens, heads * head_dim], &x);
        let position = TokenPositions::contiguous(&ctx, pos0, tokens).unwrap();
        run(&ctx, |enc| {
            encode_rope(
                &ctx,
                enc,
                &xg,
                RopeAngles::ByPosition(&table),
                heads,
                head_dim,
                &position,
                interleaved,
            )
        });
        rope_reference(&mut x, &host_table, rot / 2, heads, head_dim, pos0, interleaved);
        assert_close(
            &format!("rope T={tokens} rot={rot} interleaved={interleaved}"),
            &xg.read_f32_blocking(&ctx).unwrap(),
            &x,
            1e-6,
        );
    }
}

/// Queries and keys rotated in one dispatch equal each rotated alone (GQA head counts,
/// one key head as MLA has, partial and interleaved rotary, a single token).
#[test]
fn rope_pair_rotates_queries_and_keys_as_two_dispatches_would() {
    let ctx = context();
    let mut rng = rng(21);
    for &(tokens, q_heads, k_heads, head_dim, rot, pos0, interleaved) in &[
        (1, 1, 1, 8, 8, 0, false),
        (5, 4, 2, 16, 16, 3, false),
        (7, 8, 1, 32, 16, 90, false),
        (3, 6, 3, 64, 64, 500, true),
        (9, 16, 1, 16, 16, 0, true),
    ] {
        let table = upload_rope_table(&ctx, 10000.0, rot, pos0 + tokens, &Default::default()).unwrap();
        let host_table = rope_table(10000.0, rot, pos0 + tokens);
        let mut q = random_vec(&mut rng, tokens * q_heads * head_dim, 1.0);
        let mut k = random_vec(&mut rng, tokens * k_heads * head_dim, 1.0);
        let qg = upload(&ctx, &[tokens, q_heads * head_dim], &q);
        let kg = upload(&ctx, &[tokens, k_heads * head_dim], &k);
        let position = TokenPositions::contiguous(&ctx, pos0, tokens).unwrap();
        run(&ctx, |enc| {
            encode_rope_pair(
                &ctx,
                enc,
                (&qg, q_heads),
                (&kg, k_heads),
                RopeAngles::ByPosition(&table),
                head_dim,
                &position,
                interleaved,
            )
        });
        rope_reference(&mut q, &host_table, rot / 2, q_heads, head_dim, pos0, interleaved);
        rope_reference(&mut k, &host_table, rot / 2, k_heads, head_dim, pos0, interleaved);
        let what = format!("T={tokens} heads {q_heads}/{k_heads} rot={rot} interleaved={interleaved}");
        assert_close(
            &format!("rope pair q {what}"),
            &qg.read_f32_blocking(&ctx).unwrap(),
            &q,
            1e-6,
        );
        assert_close(
            &format!("rope pair k {what}"),
            &kg.read_f32_blocking(&ctx).unwrap(),
            &k,
            1e-6,
        );
    }
}

/// How each attention test maps the kernel: one pass, and split over the context into
/// runs (flash decoding) of several sizes: 2 and 3 runs give runs of several blocks on
/// long contexts, 32 leaves most runs empty on short ones.
const SPLITS: [Option<usize>; 4] = [None, Some(2), Some(3), Some(32)];

/// Attention of one sequence over `steps` (token counts: a prompt, chunks of it, then
/// decode tokens) against the CPU reference, in one pass and split over the context
/// (each step run once per [`SPLITS`]), with query heads sharing their kv head's
/// workgroup (the default) and one workgroup per head, over an f32 cache and an f16
/// one (against the reference on keys and values rounded to f16), each output
/// poisoned before its run. Returns the f32 cache.
fn check_attention_steps(
    ctx: &GpuContext,
    rng: &mut ChaCha8Rng,
    (heads, kv_heads, head_dim): (usize, usize, usize),
    steps: &[usize],
    max_ctx: usize,
    sinks: Option<&[f32]>,
    window: Option<usize>,
) -> KvCache {
    let cache = KvCache::new(ctx, kv_heads, head_dim, max_ctx).unwrap();
    let half_cache = KvCache::of_dtype(ctx, DType::F16, 1, kv_heads, head_dim, max_ctx).unwrap();
    let scale = 1.0 / (head_dim as f32).sqrt();
    let sinks_gpu = sinks.map(|s| upload(ctx, &[heads], s));
    let (mut all_k, mut all_v) = (Vec::new(), Vec::new());
    let f16_reference = |q: &[f32], k: &[f32], v: &[f32], pos0: usize, toward_zero: bool| {
        let (k, v) = (f16_cache_values(k, toward_zero), f16_cache_values(v, toward_zero));
        attention_reference(q, &k, &v, heads, kv_heads, head_dim, pos0, scale, sinks, window)
    };
    let mut pos0 = 0;
    for &tokens in steps {
        let q = random_vec(rng, tokens * heads * head_dim, 1.0);
        let k = random_vec(rng, tokens * kv_heads * head_dim, 1.0);
        let v = random_vec(rng, tokens * kv_heads * head_dim, 1.0);
        all_k.extend_from_slice(&k);
        all_v.extend_from_slice(&v);
        let want = attention_reference(
            &q, &all_k, &all_v, heads, kv_heads, head_dim, pos0, scale, sinks, window,
        );
        let want_half = [
            f16_reference(&q, &all_k, &all_v, pos0, false),
            f16_reference(&q, &all_k, &all_v, pos0, true),
        ];
        let position = TokenPositions::contiguous(ctx, pos0, tokens).unwrap();
        let (qg, kg, vg) = (
            upload(ctx, &[tokens, heads * head_dim], &q),
            upload(ctx, &[tokens, kv_heads * head_dim], &k),
            upload(ctx, &[tokens, kv_heads * head_dim], &v),
        );
        // Each run stores the same keys and values at the same positions again.
        let runs = [false, true].into_iter().flat_map(|p| SPLITS.map(|s| (p, s)));
        let want_f32 = [want.as_slice()];
        let want_f16 = [want_half[0].as_slice(), want_half[1].as_slice()];
        let caches: [(&KvCache, &[&[f32]]); 2] = [(&cache, &want_f32), (&half_cache, &want_f16)];
        for ((per_head, splits), (cache, want)) in runs.flat_map(|r| caches.map(|c| (r, c))) {
            let options = AttentionOptions {
                sinks: sinks_gpu.as_ref(),
                window,
                splits,
                per_head,
                share_tokens: !per_head,
            };
            let out = GpuTensor::empty(ctx, "out", &[tokens, heads * head_dim], DType::F32).unwrap();
            out.poison(ctx);
            run(ctx, |enc| {
                encode_attention(ctx, enc, cache, &qg, &kg, &vg, heads, &position, scale, options, &out).unwrap();
            });
            assert_close_to_either(
                &format!(
                    "attention H={heads}/{kv_heads} d={head_dim} pos0={pos0} T={tokens} sinks={} window={window:?} splits={splits:?} per_head={per_head} cache {:?}",
                    sinks.is_some(),
                    cache.dtype
                ),
                &out.read_f32_blocking(ctx).unwrap(),
                want,
                1e-5,
            );
        }
        pos0 += tokens;
    }
    cache
}

#[test]
fn attention_prefill_then_decode_matches_reference() {
    let ctx = context();
    let mut rng = rng(3);
    for &(heads, kv_heads, head_dim, prefill, decode_steps, max_ctx) in &[
        (4, 4, 16, 5, 3, 16),
        (8, 2, 32, 17, 2, 40),
        (2, 1, 100, 1, 4, 8),
        (4, 2, 8, 70, 1, 80),
        // Contexts over several of the kernel's 256-position blocks.
        (2, 1, 16, 300, 3, 320),
        (4, 2, 8, 511, 2, 600),
        // Five blocks: split in 2 or 3, runs of 3 + 2 or 2 + 2 + 1 blocks.
        (2, 2, 8, 1100, 2, 1300),
        // Query heads per kv head 8 (two workgroups of 4 lanes each), 3 and 6 (lanes
        // of 3), and rows wider than the grouped kernels take (one workgroup per head).
        (8, 1, 128, 9, 2, 16),
        (6, 2, 20, 300, 1, 320),
        (6, 1, 12, 4, 2, 8),
        (4, 2, 132, 3, 2, 8),
        // Rows of 384: one position group of 96 quads, the value sums leaving in two
        // rounds; rows of 580 are wider than the grouped kernels take.
        (4, 1, 384, 5, 2, 8),
        (4, 2, 580, 3, 1, 8),
        // An odd width: an f16 cache's last word of each row holds one element.
        (4, 2, 13, 6, 2, 12),
    ] {
        let steps: Vec<usize> = std::iter::once(prefill)
            .chain(std::iter::repeat_n(1, decode_steps))
            .collect();
        let cache = check_attention_steps(&ctx, &mut rng, (heads, kv_heads, head_dim), &steps, max_ctx, None, None);
        // More tokens than the cache holds: an error, not a GPU fault. (A position past
        // the cache is refused by the session before anything runs.)
        let scale = 1.0 / (head_dim as f32).sqrt();
        let n = max_ctx + 1;
        let q = upload(&ctx, &[n, heads * head_dim], &vec![0.0; n * heads * head_dim]);
        let kv = upload(&ctx, &[n, kv_heads * head_dim], &vec![0.0; n * kv_heads * head_dim]);
        let mut enc = Recorder::new();
        let start = TokenPositions::contiguous(&ctx, 0, n).unwrap();
        let options = AttentionOptions::default();
        assert!(encode_attention(&ctx, &mut enc, &cache, &q, &kv, &kv, heads, &start, scale, options, &q).is_err());
    }
}

/// A prompt chunk over a long cache needs no scratch that grows with tokens x heads x
/// context: here such a `[T * heads, max_ctx]` f32 scratch would pass the adapter's
/// largest binding, and attention still runs (and matches the reference).
#[test]
fn long_prompts_attend_without_a_context_sized_scratch() {
    let ctx = context();
    let mut rng = rng(33);
    let (heads, kv_heads, head_dim) = (16, 2, 8);
    let max_ctx = 2048;
    let limit = ctx.device.limits().max_storage_buffer_binding_size as usize;
    let tokens = (limit / (heads * max_ctx * 4) + 1).min(max_ctx);
    if tokens * heads * max_ctx * 4 <= limit {
        eprintln!("the adapter's binding limit ({limit} bytes) is past this check's scratch: attention only");
    }
    check_attention_steps(
        &ctx,
        &mut rng,
        (heads, kv_heads, head_dim),
        &[tokens, 1],
        max_ctx,
        None,
        None,
    );
}

#[test]
fn attention_with_sinks_and_sliding_window_matches_reference() {
    let ctx = context();
    let mut rng = rng(32);
    // (heads, kv_heads, head_dim), steps (prompt chunks, then decode tokens), max_ctx, sinks, window
    type Case = ((usize, usize, usize), &'static [usize], usize, bool, Option<usize>);
    let cases: &[Case] = &[
        // Sinks only.
        ((4, 4, 16), &[5, 1, 1, 1], 16, true, None),
        ((8, 2, 32), &[17, 1, 1], 40, true, None),
        ((2, 1, 100), &[1, 1, 1], 8, true, None),
        // Window only: a prompt longer than the window, then decode tokens past it.
        ((4, 2, 16), &[12, 1, 1, 1, 1, 1], 24, false, Some(5)),
        ((4, 4, 8), &[3, 1, 1, 1, 1, 1, 1], 16, false, Some(4)),
        // A window over 64 positions (several keys per invocation), prompt in chunks.
        ((4, 2, 8), &[90, 7, 1, 1], 100, false, Some(70)),
        // Window 1: each token sees only itself.
        ((4, 2, 8), &[6, 1, 1], 16, false, Some(1)),
        // Window larger than the context (and than the cache).
        ((2, 1, 32), &[5, 1, 1], 16, false, Some(100)),
        ((2, 2, 16), &[9, 1], 16, false, Some(10)),
        // Sinks and window together.
        ((8, 2, 16), &[20, 1, 1, 1, 1, 1], 32, true, Some(7)),
        ((4, 1, 64), &[4, 5, 6, 1], 24, true, Some(8)),
        ((4, 2, 8), &[6, 1, 1], 16, true, Some(1)),
        ((4, 2, 8), &[90, 7, 1], 100, true, Some(70)),
        // Windows across the kernel's 256-position blocks: starts inside a block, a
        // window wider than a block, one spanning two block edges.
        ((4, 2, 8), &[250, 20, 1, 1], 280, false, Some(100)),
        ((2, 1, 16), &[300, 1, 1], 310, true, Some(257)),
        ((2, 2, 8), &[520, 1], 530, true, Some(300)),
        // A prompt's tokens share workgroups four at a time (one head per kv head):
        // tokens 304..307 with a window of 50 start at 255 and 256..258, in two blocks,
        // so three of the four lanes see a block without any of their positions first.
        ((2, 2, 8), &[320, 1], 330, true, Some(50)),
        ((4, 2, 12), &[318, 2], 330, false, Some(50)),
    ];
    for &(shape, steps, max_ctx, with_sinks, window) in cases {
        let sinks = with_sinks.then(|| random_vec(&mut rng, shape.0, 3.0));
        check_attention_steps(&ctx, &mut rng, shape, steps, max_ctx, sinks.as_deref(), window);
    }
    // A sink far above every score takes nearly all the mass (and overflows nothing).
    let sinks = [40.0, -40.0, 0.0, 15.0];
    check_attention_steps(&ctx, &mut rng, (4, 2, 8), &[9, 1], 16, Some(&sinks), Some(3));
}

#[test]
fn attention_reference_sinks_and_window_follow_their_definitions() {
    // Independent checks of the CPU reference the GPU tests trust.
    let mut rng = rng(33);
    let (heads, kv_heads, head_dim, n) = (4, 2, 8, 7);
    let q = random_vec(&mut rng, n * heads * head_dim, 1.0);
    let k = random_vec(&mut rng, n * kv_heads * head_dim, 1.0);
    let v = random_vec(&mut rng, n * kv_heads * head_dim, 1.0);
    let reference = |sinks, window| attention_reference(&q, &k, &v, heads, kv_heads, head_dim, 0, 0.5, sinks, window);
    let plain = reference(None, None);
    // A window covering the whole context is full causal attention; so is a sink of -inf-ish.
    assert_eq!(reference(None, Some(n)), plain);
    assert_eq!(reference(Some(&[-1e30; 4]), None), plain);
    assert_ne!(reference(None, Some(n - 1)), plain);
    // Window 1: softmax over {own score, sink} = sigmoid(score - sink) times the own value.
    let sinks = [0.5, -1.0, 2.0, 0.0];
    let got = reference(Some(&sinks), Some(1));
    let kvw = kv_heads * head_dim;
    for t in 0..n {
        for h in 0..heads {
            let kvh = h / (heads / kv_heads);
            let qv = &q[(t * heads + h) * head_dim..][..head_dim];
            let kv = &k[t * kvw + kvh * head_dim..][..head_dim];
            let score = 0.5 * qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>();
            let weight = 1.0 / (1.0 + (sinks[h] - score).exp());
            for d in 0..head_dim {
                let want = weight * v[t * kvw + kvh * head_dim + d];
                let g = got[(t * heads + h) * head_dim + d];
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "t={t} h={h} d={d}: {g} vs {want}"
                );
            }
        }
    }
    // Window w: token t's output only depends on keys/values at t - w < j <= t.
    let w = 3;
    let mut k2 = k.clone();
    let mut v2 = v.clone();
    k2[..kvw].iter_mut().for_each(|x| *x += 10.0); // position 0: outside the window of t >= 3
    v2[..kvw].iter_mut().for_each(|x| *x -= 10.0);
    let a = reference(Some(&sinks), Some(w));
    let b = attention_reference(&q, &k2, &v2, heads, kv_heads, head_dim, 0, 0.5, Some(&sinks), Some(w));
    let qw = heads * head_dim;
    assert_eq!(a[w * qw..], b[w * qw..]);
    assert_ne!(a[(w - 1) * qw..w * qw], b[(w - 1) * qw..w * qw]);
}

#[test]
fn attention_rejects_bad_sinks_window_and_splits() {
    let ctx = context();
    let (heads, kv_heads, head_dim, n) = (4, 2, 8, 3);
    let cache = KvCache::new(&ctx, kv_heads, head_dim, 8).unwrap();
    let q = upload(&ctx, &[n, heads * head_dim], &vec![0.0; n * heads * head_dim]);
    let kv = upload(&ctx, &[n, kv_heads * head_dim], &vec![0.0; n * kv_heads * head_dim]);
    let out = GpuTensor::empty(&ctx, "out", &[n, heads * head_dim], DType::F32).unwrap();
    let start = TokenPositions::contiguous(&ctx, 0, n).unwrap();
    let attend = |options: AttentionOptions| {
        let mut enc = Recorder::new();
        encode_attention(&ctx, &mut enc, &cache, &q, &kv, &kv, heads, &start, 0.5, options, &out)
    };
    let bad_sinks = [
        upload(&ctx, &[heads + 1], &vec![0.0; heads + 1]),
        upload(&ctx, &[kv_heads], &vec![0.0; kv_heads]),
        upload(&ctx, &[1, heads], &vec![0.0; heads]),
        GpuTensor::empty(&ctx, "u32 sinks", &[heads], DType::U32).unwrap(),
    ];
    for sinks in &bad_sinks {
        let err = attend(AttentionOptions {
            sinks: Some(sinks),
            ..AttentionOptions::default()
        })
        .err()
        .unwrap_or_else(|| panic!("sinks {:?} {:?} accepted", sinks.shape, sinks.dtype));
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("sinks"), "{err}");
    }
    let err = attend(AttentionOptions {
        window: Some(0),
        ..AttentionOptions::default()
    })
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("window"), "{err}");
    for splits in [0, MAX_SPLITS + 1] {
        let err = attend(AttentionOptions {
            splits: Some(splits),
            ..AttentionOptions::default()
        })
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains(&format!("{splits} runs")), "{err}");
    }
    // The right ones are accepted.
    let sinks = upload(&ctx, &[heads], &[0.0; 4]);
    for splits in [None, Some(1), Some(MAX_SPLITS)] {
        attend(AttentionOptions {
            sinks: Some(&sinks),
            window: Some(1),
            splits,
            per_head: false,
            share_tokens: true,
        })
        .unwrap();
    }
}

/// Which query heads share a workgroup: up to 4 of one kv head (the largest of 4, 3, 2
/// dividing the heads per kv head), every head of a latent cache in chunks of 4, none
/// for rows or values wider than the grouped kernels take or with `per_head`.
#[test]
fn query_heads_share_workgroups_where_their_kv_head_allows() {
    use webmoe::ops::attention::{attention_workgroups, group_lanes, token_lanes};
    let ctx = context();
    let gqa = |kv_heads, head_dim| KvCache::new(&ctx, kv_heads, head_dim, 4).unwrap();
    let latent = |key, value| KvCache::latent(&ctx, 1, key, value, 4).unwrap();
    let cases = [
        (32, gqa(8, 128), 4),  // Mixtral: 4 per kv head
        (32, gqa(4, 128), 4),  // Qwen3-30B-A3B: 8 per kv head, two chunks
        (12, gqa(2, 16), 3),   // 6 per kv head
        (8, gqa(4, 16), 2),    // 2 per kv head
        (5, gqa(1, 16), 1),    // 5: no divisor from 2 to 4
        (16, gqa(16, 128), 1), // OLMoE: one per kv head
        (4, gqa(1, 512), 4),   // the widest values taken
        (4, gqa(1, 520), 1),   // wider
        (16, latent(576, 512), 4),
        (16, latent(560, 520), 1), // values wider than 512
    ];
    for (heads, cache, lanes) in &cases {
        let what = format!(
            "{heads} heads over {} kv heads x {} ({} values)",
            cache.kv_heads, cache.head_dim, cache.value_dim
        );
        assert_eq!(group_lanes(*heads, cache, false), *lanes, "{what}");
        assert_eq!(attention_workgroups(*heads, cache, false), heads / lanes, "{what}");
        assert_eq!(group_lanes(*heads, cache, true), 1, "{what}, per head");
        assert_eq!(attention_workgroups(*heads, cache, true), *heads, "{what}, per head");
        // A prompt's tokens fill the lanes the heads leave (where the grouped kernels
        // fit): not for one token, a split, or per head.
        // (Rows up to 576 elements and values up to 512.)
        let fits = cache.head_dim.div_ceil(4) * 4 <= 576 && cache.value_dim <= 512;
        let prompt_lanes = if fits { 4 / lanes } else { 1 };
        let options = |per_head, splits, share_tokens| AttentionOptions {
            per_head,
            splits,
            share_tokens,
            ..AttentionOptions::default()
        };
        assert_eq!(
            token_lanes(*heads, cache, &options(false, None, true), 8),
            prompt_lanes,
            "{what}, prompt"
        );
        assert_eq!(
            token_lanes(*heads, cache, &options(false, None, false), 8),
            1,
            "{what}, not asked"
        );
        assert_eq!(
            token_lanes(*heads, cache, &options(false, None, true), 1),
            1,
            "{what}, one token"
        );
        assert_eq!(
            token_lanes(*heads, cache, &options(false, Some(2), true), 8),
            1,
            "{what}, split"
        );
        assert_eq!(
            token_lanes(*heads, cache, &options(true, None, true), 8),
            1,
            "{what}, per head"
        );
    }
}

#[test]
fn kv_caches_refuse_rows_wider_than_the_kernel() {
    let ctx = context();
    let wide = webmoe::ops::attention::MAX_VALUE_DIM + 1;
    let errors = [
        KvCache::new(&ctx, 1, wide, 4).err(),
        KvCache::latent(&ctx, 1, wide, 512, 4).err(),
    ];
    for err in errors {
        let err = err.expect("a row wider than the kernel's accepted");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains(&format!("{wide} elements")), "{err}");
    }
    let widest = webmoe::ops::attention::MAX_VALUE_DIM;
    assert!(KvCache::new(&ctx, 1, widest, 4).is_ok());
    assert!(KvCache::latent(&ctx, 1, widest, widest, 4).is_ok());
}

/// A continuous-batching step: each sequence prefilled in its own slot, then one
/// step holding one token of every sequence, at different positions (and a prompt
/// chunk of another sequence in the same step); every token checked against the
/// reference over its own sequence alone. Prompts of 5, 1, 13 and 8 tokens, or with
/// `long`, of 300, 1, 530 and 8 (contexts over several 256-position blocks).
fn check_attention_over_slots(
    seed: u64,
    with_sinks: bool,
    window: Option<usize>,
    splits: Option<usize>,
    long: bool,
    per_head: bool,
    dtype: DType,
) {
    let ctx = context();
    let mut rng = rng(seed);
    let (heads, kv_heads, head_dim) = (4, 2, 16);
    let (prompts, max_ctx) = if long {
        ([300usize, 1, 530, 8], 560)
    } else {
        ([5usize, 1, 13, 8], 24)
    };
    let slots = prompts.len() + 1;
    let cache = KvCache::of_dtype(&ctx, dtype, slots, kv_heads, head_dim, max_ctx).unwrap();
    let scale = 0.3;
    let sinks = with_sinks.then(|| random_vec(&mut rng, heads, 3.0));
    let sinks_gpu = sinks.as_ref().map(|s| upload(&ctx, &[heads], s));
    let options = AttentionOptions {
        sinks: sinks_gpu.as_ref(),
        window,
        splits,
        per_head,
        // Grouped runs share workgroups between tokens too: tokens of different
        // sequences in one workgroup take passes.
        share_tokens: !per_head,
    };
    let (qw, kvw) = (heads * head_dim, kv_heads * head_dim);
    let mut history: Vec<(Vec<f32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); slots];
    let step = |placed: &[(usize, usize)], history: &mut Vec<(Vec<f32>, Vec<f32>)>, rng: &mut _| {
        let t = placed.len();
        let q = random_vec(rng, t * qw, 1.0);
        let k = random_vec(rng, t * kvw, 1.0);
        let v = random_vec(rng, t * kvw, 1.0);
        let positions = TokenPositions::new(&ctx, t).unwrap();
        positions.set(&ctx, placed);
        let out = GpuTensor::empty(&ctx, "out", &[t, qw], DType::F32).unwrap();
        out.poison(&ctx);
        run(&ctx, |enc| {
            let (qg, kg, vg) = (
                upload(&ctx, &[t, qw], &q),
                upload(&ctx, &[t, kvw], &k),
                upload(&ctx, &[t, kvw], &v),
            );
            encode_attention(
                &ctx, enc, &cache, &qg, &kg, &vg, heads, &positions, scale, options, &out,
            )
            .unwrap();
        });
        let got = out.read_f32_blocking(&ctx).unwrap();
        for (i, &(slot, pos)) in placed.iter().enumerate() {
            let (hk, hv) = &mut history[slot];
            assert_eq!(hk.len(), pos * kvw, "test bookkeeping");
            hk.extend_from_slice(&k[i * kvw..][..kvw]);
            hv.extend_from_slice(&v[i * kvw..][..kvw]);
            let want = |k: &[f32], v: &[f32]| {
                let q = &q[i * qw..][..qw];
                attention_reference(q, k, v, heads, kv_heads, head_dim, pos, scale, sinks.as_deref(), window)
            };
            // An f16 cache holds the keys and values rounded to f16 (either way).
            let wants = match dtype {
                DType::F16 => [false, true]
                    .map(|toward_zero| want(&f16_cache_values(hk, toward_zero), &f16_cache_values(hv, toward_zero)))
                    .to_vec(),
                _ => vec![want(hk, hv)],
            };
            let wants: Vec<&[f32]> = wants.iter().map(Vec::as_slice).collect();
            assert_close_to_either(
                &format!(
                    "slot {slot} position {pos} sinks={with_sinks} window={window:?} splits={splits:?} per_head={per_head} {dtype:?}"
                ),
                &got[i * qw..][..qw],
                &wants,
                1e-5,
            );
        }
    };
    for (slot, &n) in prompts.iter().enumerate() {
        let placed: Vec<_> = (0..n).map(|p| (slot, p)).collect();
        step(&placed, &mut history, &mut rng);
    }
    for round in 0..3 {
        let mut placed: Vec<_> = prompts.iter().enumerate().map(|(s, &n)| (s, n + round)).collect();
        // The last slot's prompt arrives in chunks beside the decode tokens.
        placed.extend((0..4).map(|p| (prompts.len(), round * 4 + p)));
        step(&placed, &mut history, &mut rng);
    }
}

#[test]
fn attention_over_several_sequences_of_different_lengths_matches_each_alone() {
    for (splits, per_head) in [(None, false), (Some(3), false), (None, true), (Some(3), true)] {
        check_attention_over_slots(31, false, None, splits, false, per_head, DType::F32);
    }
    // An f16 cache of several slots.
    for splits in [None, Some(3)] {
        check_attention_over_slots(32, false, None, splits, false, false, DType::F16);
    }
}

#[test]
fn windowed_attention_with_sinks_over_several_sequences_matches_each_alone() {
    // Prompts of 5, 1, 13 and 8 tokens against a window of 4 (and of 1).
    for (splits, per_head) in [(None, false), (Some(3), false), (None, true), (Some(3), true)] {
        check_attention_over_slots(34, false, Some(4), splits, false, per_head, DType::F32);
        check_attention_over_slots(35, true, Some(4), splits, false, per_head, DType::F32);
        check_attention_over_slots(36, true, Some(1), splits, false, per_head, DType::F32);
    }
}

/// Split over the context in a continuous-batching step whose sequences hold
/// different numbers of blocks, so their runs differ in length and count.
#[test]
fn split_attention_over_several_long_sequences_matches_each_alone() {
    for per_head in [false, true] {
        check_attention_over_slots(37, false, None, Some(2), true, per_head, DType::F32);
        check_attention_over_slots(38, true, Some(300), Some(3), true, per_head, DType::F16);
    }
}

#[test]
fn embedding_and_argmax_match_reference() {
    let ctx = context();
    let mut rng = rng(4);
    // A 4 KiB binding limit splits the larger tables into chunks of rows (odd widths
    // in half types keep every chunk word-aligned).
    let small = context_with(ContextOptions {
        max_binding_bytes: Some(4096),
        ..ContextOptions::from_env()
    });
    for (ctx, format, vocab, dim, chunked) in [
        (&ctx, WeightFormat::F32, 50, 24, false),
        (&ctx, WeightFormat::F16, 50, 24, false),
        (&ctx, WeightFormat::BF16, 50, 24, false),
        (&small, WeightFormat::F32, 301, 24, true),
        (&small, WeightFormat::BF16, 257, 33, true),
        (&small, WeightFormat::F16, 1000, 7, true),
        (&ctx, WeightFormat::Q8_0, 50, 64, false),
        (&small, WeightFormat::Q8_0, 300, 32, true),
        (&small, WeightFormat::Q4_0, 1001, 32, true),
    ] {
        let ctx: &GpuContext = ctx;
        let table = random_vec(&mut rng, vocab * dim, 1.0);
        let mut ids: Vec<u32> = (0..20).map(|_| rng.random_range(0..vocab as u32)).collect();
        ids.extend([0, vocab as u32 - 1]);
        let tg = WeightMatrix::from_f32(ctx, "table", &table, [1, vocab, dim], format).unwrap();
        assert_eq!(
            tg.chunks.len() > 1,
            chunked,
            "chunks of a {vocab} x {dim} {format} table"
        );
        let ig = GpuTensor::from_u32(ctx, "ids", &[ids.len()], &ids).unwrap();
        let x = GpuTensor::empty(ctx, "x", &[ids.len(), dim], DType::F32).unwrap();
        x.poison(ctx);
        run(ctx, |enc| encode_embedding(ctx, enc, &ig, &tg, 2.0, &x).unwrap());
        let stored = format.round_trip_all(&table);
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| stored[i as usize * dim..][..dim].iter().map(|&v| v * 2.0))
            .collect();
        assert_close(
            &format!("embedding {vocab} x {dim} {format}"),
            &x.read_f32_blocking(ctx).unwrap(),
            &want,
            0.0,
        );
    }
    for &len in &[1, 5, 255, 256, 1000, 70000] {
        let mut logits = random_vec(&mut rng, len, 10.0);
        if len > 10 {
            // a tie for the maximum: the lower index must win
            let top = logits.iter().cloned().fold(f32::MIN, f32::max) + 1.0;
            logits[len / 3] = top;
            logits[len / 2] = top;
        }
        let lg = upload(&ctx, &[len], &logits);
        let result = GpuTensor::empty(&ctx, "argmax", &[1], DType::U32).unwrap();
        result.poison(&ctx);
        run(&ctx, |enc| encode_argmax(&ctx, enc, &lg, &result));
        assert_eq!(
            result.read_u32_blocking(&ctx).unwrap()[0] as usize,
            argmax_reference(&logits).unwrap(),
            "argmax of {len}"
        );
    }
}

#[test]
fn elementwise_updates_match_reference() {
    let ctx = context();
    let mut rng = rng(5);
    let (rows, cols) = (7, 13);
    let x = random_vec(&mut rng, rows * cols, 2.0);
    let other = random_vec(&mut rng, rows * cols, 2.0);
    let bias = random_vec(&mut rng, cols, 2.0);
    let xg = upload(&ctx, &[rows, cols], &x);
    run(&ctx, |enc| {
        encode_add_scaled(&ctx, enc, &xg, &upload(&ctx, &[rows, cols], &other), 0.5);
        encode_add_row_bias(&ctx, enc, &xg, &upload(&ctx, &[cols], &bias));
        encode_scale_clamp(&ctx, enc, &xg, 1.5, 2.0);
    });
    let want: Vec<f32> = (0..rows * cols)
        .map(|i| ((x[i] + 0.5 * other[i] + bias[i % cols]) * 1.5).clamp(-2.0, 2.0))
        .collect();
    assert_close("elementwise", &xg.read_f32_blocking(&ctx).unwrap(), &want, 1e-6);
}

#[test]
fn latent_attention_reads_values_from_the_keys() {
    // MLA's compressed cache: one key per position ([latent, RoPE key]) whose first
    // `value_dim` elements are the value, shared by every head.
    let ctx = context();
    let mut rng = rng(91);
    // Heads 4, 3 and 2 share one workgroup (lanes of 4, 3, 2); 8 heads over DeepSeek's
    // 576-element latent keys and 512-element values take two workgroups of 4, whose
    // value sums leave in two rounds of 64 quads. Each also with a workgroup per head.
    let shapes = [
        (4, 16, 12, None),
        (3, 9, 9, None),
        (2, 70, 64, Some(3)),
        (8, 576, 512, None),
    ];
    let runs = [(DType::F32, false), (DType::F16, false), (DType::F32, true)];
    for (&(heads, key_dim, value_dim, window), (dtype, per_head)) in shapes.iter().flat_map(|s| runs.map(|r| (s, r))) {
        let max_ctx = 12;
        let cache = KvCache::latent_of_dtype(&ctx, dtype, 1, key_dim, value_dim, max_ctx).unwrap();
        // Rows padded to a multiple of 4 elements.
        let element_bytes = if dtype == DType::F16 { 2 } else { 4 };
        assert_eq!(
            cache.bytes_per_position(),
            (key_dim.div_ceil(4) * 4 * element_bytes) as u64
        );
        let scale = 0.3;
        let mut all_k = Vec::new();
        let mut pos0 = 0;
        for tokens in [5, 1, 1, 3] {
            let q = random_vec(&mut rng, tokens * heads * key_dim, 1.0);
            let k = random_vec(&mut rng, tokens * key_dim, 1.0);
            all_k.extend_from_slice(&k);
            let out = GpuTensor::empty(&ctx, "out", &[tokens, heads * value_dim], DType::F32).unwrap();
            out.poison(&ctx);
            let position = TokenPositions::contiguous(&ctx, pos0, tokens).unwrap();
            let options = AttentionOptions {
                window,
                splits: (tokens == 1).then_some(3),
                per_head,
                share_tokens: !per_head,
                ..AttentionOptions::default()
            };
            run(&ctx, |enc| {
                let qg = upload(&ctx, &[tokens, heads * key_dim], &q);
                let kg = upload(&ctx, &[tokens, key_dim], &k);
                encode_attention(&ctx, enc, &cache, &qg, &kg, &kg, heads, &position, scale, options, &out).unwrap();
            });
            // The reference with values = keys, keeping each head's first value_dim
            // outputs; an f16 cache holds the keys rounded to f16 (either way).
            let want = |keys: &[f32]| -> Vec<f32> {
                let full = attention_reference(&q, keys, keys, heads, 1, key_dim, pos0, scale, None, window);
                full.chunks(key_dim)
                    .flat_map(|head| head[..value_dim].to_vec())
                    .collect()
            };
            let wants = match dtype {
                DType::F16 => vec![
                    want(&f16_cache_values(&all_k, false)),
                    want(&f16_cache_values(&all_k, true)),
                ],
                _ => vec![want(&all_k)],
            };
            let wants: Vec<&[f32]> = wants.iter().map(Vec::as_slice).collect();
            assert_close_to_either(
                &format!("latent attention H={heads} key {key_dim} value {value_dim} pos0={pos0} T={tokens} {dtype:?} per_head={per_head}"),
                &out.read_f32_blocking(&ctx).unwrap(),
                &wants,
                1e-5,
            );
            pos0 += tokens;
        }
    }
    assert!(KvCache::latent(&ctx, 1, 8, 9, 4).is_err());
    // Caches take f32 or f16 elements only, and say so.
    for dtype in [DType::BF16, DType::U32] {
        let err = KvCache::of_dtype(&ctx, dtype, 1, 2, 8, 4).err().expect("refused");
        assert!(err.to_string().contains("f32 or f16"), "{err}");
        assert!(KvCache::latent_of_dtype(&ctx, dtype, 1, 8, 8, 4).is_err());
    }
}

#[test]
fn column_copies_match_reference() {
    use webmoe::ops::columns::{copy_columns_reference, encode_copy_columns, Columns};
    let ctx = context();
    let mut rng = rng(92);
    for &(rows, src_stride, src_offset, dst_stride, dst_offset, width) in &[
        (1, 5, 0, 5, 0, 5),
        (7, 24, 16, 20, 0, 4),
        (33, 10, 3, 70, 64, 6),
        (129, 1, 0, 3, 2, 1),
    ] {
        let src = random_vec(&mut rng, rows * src_stride, 1.0);
        let before = random_vec(&mut rng, rows * dst_stride, 1.0);
        let (from, to) = (
            Columns::new(src_stride, src_offset, width),
            Columns::new(dst_stride, dst_offset, width),
        );
        let dst = upload(&ctx, &[rows, dst_stride], &before);
        run(&ctx, |enc| {
            let s = upload(&ctx, &[rows, src_stride], &src);
            encode_copy_columns(&ctx, enc, rows, &s, from, &dst, to).unwrap();
        });
        let mut want = before.clone();
        copy_columns_reference(rows, &src, from, &mut want, to);
        assert_eq!(
            dst.read_f32_blocking(&ctx).unwrap(),
            want,
            "{rows} rows {from:?} -> {to:?}"
        );
    }
    // Copies that overrun a row or the tensor are errors.
    let t = upload(&ctx, &[2, 4], &[0.0; 8]);
    let mut rec = webmoe::gpu::kernel::Recorder::new();
    assert!(encode_copy_columns(&ctx, &mut rec, 2, &t, Columns::new(4, 2, 3), &t, Columns::new(4, 0, 3)).is_err());
    assert!(encode_copy_columns(&ctx, &mut rec, 3, &t, Columns::new(4, 0, 2), &t, Columns::new(4, 0, 2)).is_err());
}

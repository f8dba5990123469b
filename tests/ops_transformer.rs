//! Transformer ops around the MoE layer against their CPU references: RMSNorm,
//! RoPE, KV-cache attention, embedding, argmax and the elementwise updates.

mod common;

use common::*;
use rand::Rng;
use webmoe::gpu::kernel::Recorder;
use webmoe::ops::attention::{attention_reference, encode_attention, AttentionOptions, KvCache};
use webmoe::ops::elementwise::{encode_add_row_bias, encode_add_scaled, encode_scale_clamp};
use webmoe::ops::embedding::{argmax_reference, encode_argmax, encode_embedding};
use webmoe::ops::norm::{encode_rms_norm, rms_norm_reference};
use webmoe::ops::rope::{encode_rope, rope_reference, rope_table, upload_rope_table};
use webmoe::ops::TokenPositions;
use webmoe::{ContextOptions, DType, GpuContext, GpuTensor, WeightFormat, WeightMatrix};

fn upload(ctx: &GpuContext, shape: &[usize], v: &[f32]) -> GpuTensor {
    GpuTensor::from_f32(ctx, "t", shape, v, DType::F32).unwrap()
}

#[test]
fn rms_norm_matches_reference() {
    let ctx = context();
    let mut rng = rng(1);
    for &(rows, dim) in &[(1, 1), (7, 13), (64, 256), (3, 1000)] {
        let x = random_vec(&mut rng, rows * dim, 3.0);
        let w = random_vec(&mut rng, dim, 1.0);
        let y = GpuTensor::empty(&ctx, "y", &[rows, dim], DType::F32).unwrap();
        y.poison(&ctx);
        run(&ctx, |enc| {
            encode_rms_norm(
                &ctx,
                enc,
                &upload(&ctx, &[rows, dim], &x),
                &upload(&ctx, &[dim], &w),
                1e-6,
                &y,
            )
            .unwrap()
        });
        assert_close(
            &format!("rms norm {rows}x{dim}"),
            &y.read_f32_blocking(&ctx).unwrap(),
            &rms_norm_reference(&x, &w, 1e-6),
            1e-5,
        );
    }
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
            encode_rope(&ctx, enc, &xg, &table, heads, head_dim, &position, interleaved)
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

#[test]
fn attention_prefill_then_decode_matches_reference() {
    let ctx = context();
    let mut rng = rng(3);
    for &(heads, kv_heads, head_dim, prefill, decode_steps, max_ctx) in &[
        (4, 4, 16, 5, 3, 16),
        (8, 2, 32, 17, 2, 40),
        (2, 1, 100, 1, 4, 8),
        (4, 2, 8, 70, 1, 80),
    ] {
        let cache = KvCache::new(&ctx, kv_heads, head_dim, max_ctx).unwrap();
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (mut all_k, mut all_v) = (Vec::new(), Vec::new());
        let mut pos0 = 0;
        for tokens in std::iter::once(prefill).chain(std::iter::repeat_n(1, decode_steps)) {
            let q = random_vec(&mut rng, tokens * heads * head_dim, 1.0);
            let k = random_vec(&mut rng, tokens * kv_heads * head_dim, 1.0);
            let v = random_vec(&mut rng, tokens * kv_heads * head_dim, 1.0);
            all_k.extend_from_slice(&k);
            all_v.extend_from_slice(&v);
            let out = GpuTensor::empty(&ctx, "out", &[tokens, heads * head_dim], DType::F32).unwrap();
            out.poison(&ctx);
            let position = TokenPositions::contiguous(&ctx, pos0, tokens).unwrap();
            run(&ctx, |enc| {
                let (qg, kg, vg) = (
                    upload(&ctx, &[tokens, heads * head_dim], &q),
                    upload(&ctx, &[tokens, kv_heads * head_dim], &k),
                    upload(&ctx, &[tokens, kv_heads * head_dim], &v),
                );
                encode_attention(
                    &ctx,
                    enc,
                    &cache,
                    &qg,
                    &kg,
                    &vg,
                    heads,
                    &position,
                    scale,
                    AttentionOptions::default(),
                    &out,
                )
                .unwrap();
            });
            let want = attention_reference(&q, &all_k, &all_v, heads, kv_heads, head_dim, pos0, scale, None, None);
            assert_close(
                &format!("attention H={heads}/{kv_heads} pos0={pos0} T={tokens}"),
                &out.read_f32_blocking(&ctx).unwrap(),
                &want,
                1e-5,
            );
            pos0 += tokens;
        }
        // More tokens than the cache holds: an error, not a GPU fault. (A position past
        // the cache is refused by the session before anything runs.)
        let n = max_ctx + 1;
        let q = upload(&ctx, &[n, heads * head_dim], &vec![0.0; n * heads * head_dim]);
        let kv = upload(&ctx, &[n, kv_heads * head_dim], &vec![0.0; n * kv_heads * head_dim]);
        let mut enc = Recorder::new();
        let start = TokenPositions::contiguous(&ctx, 0, n).unwrap();
        assert!(encode_attention(
            &ctx,
            &mut enc,
            &cache,
            &q,
            &kv,
            &kv,
            heads,
            &start,
            scale,
            AttentionOptions::default(),
            &q
        )
        .is_err());
    }
}

#[test]
fn attention_over_several_sequences_of_different_lengths_matches_each_alone() {
    // A continuous-batching step: each sequence prefilled in its own slot, then one
    // step holding one token of every sequence, at different positions (and a prompt
    // chunk of another sequence in the same step).
    let ctx = context();
    let mut rng = rng(31);
    let (heads, kv_heads, head_dim, max_ctx) = (4, 2, 16, 24);
    let prompts = [5usize, 1, 13, 8];
    let slots = prompts.len() + 1;
    let cache = KvCache::with_slots(&ctx, slots, kv_heads, head_dim, max_ctx).unwrap();
    let scale = 0.3;
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
                &ctx,
                enc,
                &cache,
                &qg,
                &kg,
                &vg,
                heads,
                &positions,
                scale,
                AttentionOptions::default(),
                &out,
            )
            .unwrap();
        });
        let got = out.read_f32_blocking(&ctx).unwrap();
        for (i, &(slot, pos)) in placed.iter().enumerate() {
            let (hk, hv) = &mut history[slot];
            assert_eq!(hk.len(), pos * kvw, "test bookkeeping");
            hk.extend_from_slice(&k[i * kvw..][..kvw]);
            hv.extend_from_slice(&v[i * kvw..][..kvw]);
            let want = attention_reference(
                &q[i * qw..][..qw],
                hk,
                hv,
                heads,
                kv_heads,
                head_dim,
                pos,
                scale,
                None,
                None,
            );
            assert_close(
                &format!("slot {slot} position {pos}"),
                &got[i * qw..][..qw],
                &want,
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

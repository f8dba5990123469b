//! A grouped-query step's inputs in one dispatch (norms, clamp, RoPE, cache stores)
//! against the CPU reference, on both kernel targets, f32 and f16 caches, fused and
//! separate projections: queries compared with the reference, every cache word
//! checked (written ones against the reference, all others still poisoned).

mod common;

use common::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use webmoe::gpu::tensor::POISON_WORD;
use webmoe::ops::attention::{row_width, KvCache};
use webmoe::ops::attention_inputs::{
    attention_inputs_reference, encode_attention_inputs, HeadRows, InputTransforms, InputsReference,
};
use webmoe::ops::rope::{rope_table, RopeAngles};
use webmoe::ops::TokenPositions;
use webmoe::{DType, GpuContext, GpuTensor};

fn upload(ctx: &GpuContext, shape: &[usize], v: &[f32]) -> GpuTensor {
    GpuTensor::from_f32(ctx, "t", shape, v, DType::F32).unwrap()
}

#[derive(Clone, Copy, Debug)]
struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    half_rot: usize,
    interleaved: bool,
    norm: bool,
    clip: Option<f32>,
    tokens: usize,
    /// (cos, sin) rows written per token (dynamic NTK) instead of a position table.
    by_token: bool,
}

const SLOTS: usize = 3;
const MAX_CTX: usize = 8;

fn cases() -> Vec<Case> {
    let case = |heads, kv_heads, head_dim, half_rot, tokens| Case {
        heads,
        kv_heads,
        head_dim,
        half_rot,
        interleaved: false,
        norm: false,
        clip: None,
        tokens,
        by_token: false,
    };
    vec![
        // One token of a Qwen3-like layer: per-head norms, GQA 4:1.
        Case {
            norm: true,
            ..case(8, 2, 128, 64, 1)
        },
        // Heads wider than the workgroup's 64 lanes, several tokens.
        Case {
            norm: true,
            ..case(4, 2, 160, 80, 5)
        },
        // Partial rotary, a head_dim that is not a multiple of 4, the clamp.
        Case {
            clip: Some(0.5),
            ..case(6, 2, 10, 4, 3)
        },
        // Interleaved pairs, norms and clamp together, one kv head per query head.
        Case {
            interleaved: true,
            norm: true,
            clip: Some(1.2),
            ..case(4, 4, 32, 16, 4)
        },
        // An odd head_dim (an f16 word half padding), interleaved partial rotary, MQA.
        Case {
            interleaved: true,
            ..case(3, 1, 5, 2, 2)
        },
        // Rotation rows written per token.
        Case {
            by_token: true,
            norm: true,
            ..case(4, 2, 16, 8, 6)
        },
    ]
}

#[test]
fn attention_inputs_match_the_reference_on_both_targets() {
    let mut rng = rng(31);
    for ctx in contexts_for_both_targets() {
        for case in cases() {
            for dtype in [DType::F32, DType::F16] {
                for fused in [true, false] {
                    check(&ctx, &mut rng, case, dtype, fused);
                }
            }
        }
    }
}

/// Distinct (slot, position) pairs for the tokens, the last one outside the cache when
/// there are several (it stores nothing; its query is still written).
fn placements(rng: &mut ChaCha8Rng, tokens: usize) -> Vec<(usize, usize)> {
    let mut placed: Vec<(usize, usize)> = Vec::new();
    while placed.len() < tokens {
        let p = (rng.random_range(0..SLOTS), rng.random_range(0..MAX_CTX));
        if !placed.contains(&p) {
            placed.push(p);
        }
    }
    if tokens > 1 {
        placed[tokens - 1] = if rng.random_bool(0.5) { (SLOTS, 0) } else { (0, MAX_CTX) };
    }
    placed
}

fn check(ctx: &GpuContext, rng: &mut ChaCha8Rng, c: Case, dtype: DType, fused: bool) {
    let (t, hd) = (c.tokens, c.head_dim);
    let (qw, kvw) = (c.heads * hd, c.kv_heads * hd);
    let q = random_vec(rng, t * qw, 2.0);
    let k = random_vec(rng, t * kvw, 2.0);
    let v = random_vec(rng, t * kvw, 2.0);
    let norms = (random_vec(rng, hd, 1.5), random_vec(rng, hd, 1.5));
    let placed = placements(rng, t);
    let table = if c.by_token {
        random_vec(rng, t * c.half_rot * 2, 1.0)
    } else {
        rope_table(10_000.0, 2 * c.half_rot, MAX_CTX + 1)
    };
    let table_rows: Vec<usize> = if c.by_token {
        (0..t).collect()
    } else {
        placed.iter().map(|&(_, p)| p).collect()
    };

    let cache = KvCache::of_dtype(ctx, dtype, SLOTS, c.kv_heads, hd, MAX_CTX).unwrap();
    cache.keys.poison(ctx);
    cache.values.poison(ctx);
    let positions = TokenPositions::new(ctx, t).unwrap();
    positions.set(ctx, &placed);
    let table_gpu = upload(ctx, &[table.len() / (2 * c.half_rot), c.half_rot, 2], &table);
    let (qn, kn) = (upload(ctx, &[hd], &norms.0), upload(ctx, &[hd], &norms.1));
    let q_out = GpuTensor::empty(ctx, "q out", &[t, qw], DType::F32).unwrap();
    q_out.poison(ctx);
    let fused_rows: Vec<f32> = (0..t)
        .flat_map(|i| {
            [
                &q[i * qw..(i + 1) * qw],
                &k[i * kvw..(i + 1) * kvw],
                &v[i * kvw..(i + 1) * kvw],
            ]
            .concat()
        })
        .collect();
    let qkv = upload(ctx, &[t, qw + 2 * kvw], &fused_rows);
    let separate = [
        upload(ctx, &[t, qw], &q),
        upload(ctx, &[t, kvw], &k),
        upload(ctx, &[t, kvw], &v),
    ];
    let rows = if fused {
        (
            HeadRows::columns(&qkv, 0),
            HeadRows::columns(&qkv, qw),
            HeadRows::columns(&qkv, qw + kvw),
        )
    } else {
        (
            HeadRows::whole(&separate[0]),
            HeadRows::whole(&separate[1]),
            HeadRows::whole(&separate[2]),
        )
    };
    let transforms = InputTransforms {
        norms: c.norm.then_some((&qn, &kn)),
        eps: 1e-6,
        clip: c.clip,
        angles: if c.by_token {
            RopeAngles::ByToken(&table_gpu)
        } else {
            RopeAngles::ByPosition(&table_gpu)
        },
        interleaved: c.interleaved,
    };
    run(ctx, |rec| {
        encode_attention_inputs(ctx, rec, &cache, rows, c.heads, transforms, &positions, &q_out).unwrap()
    });

    let reference = InputsReference {
        heads: c.heads,
        kv_heads: c.kv_heads,
        head_dim: hd,
        norms: c.norm.then_some((norms.0.as_slice(), norms.1.as_slice())),
        eps: 1e-6,
        clip: c.clip,
        table: &table,
        half_rot: c.half_rot,
        interleaved: c.interleaved,
    };
    let (want_q, want_k, want_v) = attention_inputs_reference(&q, &k, &v, &table_rows, &reference);
    let what = format!("{c:?} cache {dtype:?} fused {fused} target {:?}", ctx.kernel_target);
    assert_close(
        &format!("queries, {what}"),
        &q_out.read_f32_blocking(ctx).unwrap(),
        &want_q,
        1e-5,
    );
    for (name, tensor, want) in [("keys", &cache.keys, &want_k), ("values", &cache.values, &want_v)] {
        check_cache(ctx, &format!("{name}, {what}"), tensor, dtype, c, &placed, want);
    }
}

/// Every word of a poisoned cache after the step: the placed tokens' rows hold `want`
/// (`[T, kv_heads * head_dim]`; f16 pairs rounded, the padding half zero), every other
/// word is still poison.
fn check_cache(
    ctx: &GpuContext,
    what: &str,
    cache: &GpuTensor,
    dtype: DType,
    c: Case,
    placed: &[(usize, usize)],
    want: &[f32],
) {
    let words = pollster::block_on(cache.read_words(ctx)).unwrap();
    let per_word = if dtype == DType::F16 { 2 } else { 1 };
    let row_words = row_width(c.head_dim) / per_word;
    let written_words = c.head_dim.div_ceil(per_word);
    let mut expected_written = vec![None; words.len()];
    for (token, &(slot, pos)) in placed.iter().enumerate() {
        if slot >= SLOTS || pos >= MAX_CTX {
            continue;
        }
        for g in 0..c.kv_heads {
            let row = ((slot * c.kv_heads + g) * MAX_CTX + pos) * row_words;
            let head = &want[(token * c.kv_heads + g) * c.head_dim..][..c.head_dim];
            for w in 0..written_words {
                let pair = [head[w * per_word], *head.get(w * per_word + 1).unwrap_or(&0.0)];
                let pair = if w * per_word + 1 < c.head_dim {
                    pair
                } else {
                    [pair[0], 0.0]
                };
                expected_written[row + w] = Some(pair);
            }
        }
    }
    let (mut got, mut expected) = (Vec::new(), Vec::new());
    for (i, (&word, want)) in words.iter().zip(&expected_written).enumerate() {
        match want {
            None => assert_eq!(word, POISON_WORD, "{what}: word {i} was written"),
            Some(pair) if dtype == DType::F16 => {
                if pair[1] == 0.0 && (i % row_words + 1) * 2 > c.head_dim {
                    assert_eq!(word >> 16, 0, "{what}: word {i}'s padding half");
                }
                let halves = [word as u16, (word >> 16) as u16].map(|h| half::f16::from_bits(h).to_f32());
                got.extend(halves);
                expected.extend(pair);
            }
            Some(pair) => {
                got.push(f32::from_bits(word));
                expected.push(pair[0]);
            }
        }
    }
    let tolerance = if dtype == DType::F16 { 1e-3 } else { 1e-5 };
    assert_close(what, &got, &expected, tolerance);
}

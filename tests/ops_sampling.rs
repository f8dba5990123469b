//! The `sample` kernel (temperature, top-k, top-p, a draw) against its CPU reference,
//! and the reference against a plain sort-everything definition, over vocabularies
//! that are and are not multiples of the workgroup, ties at every cut, non-finite
//! logits, and settings at their edges. Tokens are compared exactly except where the
//! top-p edge or the draw falls within 1e-4 of a boundary (f32 sums in different
//! orders), where the token must still be one the definition allows.

mod common;

use common::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use webmoe::ops::sampling::{encode_sample, order_key, sample_reference, RowSampling, Sampled};
use webmoe::{DType, GpuContext, GpuTensor};

/// Runs the kernel over `rows` (one setting each) and returns what each row gave.
fn sample_on_gpu(ctx: &GpuContext, vocab: usize, rows: &[(Vec<f32>, RowSampling)]) -> Vec<Sampled> {
    let n = rows.len();
    let logits: Vec<f32> = rows.iter().flat_map(|r| r.0.iter().copied()).collect();
    let settings: Vec<u32> = rows.iter().flat_map(|r| bytemuck::cast::<_, [u32; 4]>(r.1)).collect();
    let lg = GpuTensor::from_f32(ctx, "logits", &[n, vocab], &logits, DType::F32).unwrap();
    let sg = GpuTensor::from_u32(ctx, "settings", &[n, 4], &settings).unwrap();
    let tokens = GpuTensor::empty(ctx, "tokens", &[n], DType::U32).unwrap();
    let details = GpuTensor::empty(ctx, "details", &[n, 4], DType::U32).unwrap();
    tokens.poison(ctx);
    details.poison(ctx);
    run(ctx, |rec| encode_sample(ctx, rec, &lg, &sg, &tokens, &details).unwrap());
    let tokens = tokens.read_u32_blocking(ctx).unwrap();
    let details = details.read_u32_blocking(ctx).unwrap();
    (0..n)
        .map(|r| {
            let got = Sampled::from_details(&details[r * 4..][..4]);
            assert_eq!(tokens[r], got.token, "row {r}: the token and its details disagree");
            got
        })
        .collect()
}

/// The definition, in f64 with a full sort: A most likely first with each run's
/// cumulative weight, and the sizes of B that top-p may keep within 1e-4 of weight(A)
/// of its edge (f32 sums in another order may land anywhere in that range).
struct Definition {
    weights: Vec<(u32, f64)>,
    kept_range: (usize, usize),
}

const NEAR: f64 = 1e-4;

fn definition(logits: &[f32], s: RowSampling) -> Definition {
    let (t, k) = if s.temperature > 0.0 {
        (s.temperature, s.top_k as usize)
    } else {
        (1.0, 1)
    };
    let mut order: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| logits[i as usize].is_finite())
        .collect();
    order.sort_by(|&a, &b| {
        order_key(logits[b as usize])
            .cmp(&order_key(logits[a as usize]))
            .then(a.cmp(&b))
    });
    if k > 0 {
        order.truncate(k);
    }
    let top = order.first().map_or(0.0, |&i| logits[i as usize]);
    let weights: Vec<(u32, f64)> = order
        .iter()
        .map(|&i| (i, ((logits[i as usize] - top) / t).exp() as f64))
        .collect();
    let mut kept_range = (weights.len(), weights.len());
    if s.top_p < 1.0 && weights.len() > 1 {
        let total: f64 = weights.iter().map(|w| w.1).sum();
        let goal = s.top_p as f64 * total;
        let first_reaching = |goal: f64| {
            let mut cumulative = 0.0;
            weights
                .iter()
                .position(|w| {
                    cumulative += w.1;
                    cumulative >= goal
                })
                .map_or(weights.len(), |n| n + 1)
        };
        kept_range = (first_reaching(goal - NEAR * total), first_reaching(goal + NEAR * total));
    }
    Definition { weights, kept_range }
}

/// Checks one row's GPU result and the reference against the definition.
fn check_row(what: &str, logits: &[f32], s: RowSampling, gpu: Sampled) {
    let reference = sample_reference(logits, s);
    let def = definition(logits, s);
    for (side, got) in [("reference", reference), ("GPU", gpu)] {
        assert_eq!(got.kept_top_k as usize, def.weights.len(), "{what}: {side} top-k set");
        if def.weights.is_empty() {
            assert_eq!((got.token, got.kept), (0, 0), "{what}: {side} with no finite logit");
            continue;
        }
        let (lo, hi) = def.kept_range;
        let kept = got.kept as usize;
        assert!(
            lo <= kept && kept <= hi,
            "{what}: {side} top-p kept {kept}, the definition {lo}..={hi}"
        );
        // B: the first `kept` of A, in index order.
        let mut b = def.weights[..kept].to_vec();
        b.sort_by_key(|w| w.0);
        let total: f64 = b.iter().map(|w| w.1).sum();
        let weight_error = (got.kept_weight as f64 - total).abs() / total;
        assert!(
            weight_error < 1e-4,
            "{what}: {side} weight(B) {} against {total}",
            got.kept_weight
        );
        // The draw: the token whose interval holds uniform * weight(B), or near an edge
        // either token beside it.
        let point = s.uniform as f64 * total;
        let mut start = 0.0;
        let mut allowed = Vec::new();
        for &(id, w) in &b {
            let end = start + w;
            if w > 0.0 && point >= start - NEAR * total && point < end + NEAR * total {
                allowed.push(id);
            }
            start = end;
        }
        if allowed.is_empty() {
            allowed.push(b.iter().rev().find(|w| w.1 > 0.0).unwrap().0);
        }
        assert!(
            allowed.contains(&got.token),
            "{what}: {side} drew {} where the definition allows {allowed:?}",
            got.token
        );
    }
}

fn setting(temperature: f32, top_k: u32, top_p: f32, uniform: f32) -> RowSampling {
    RowSampling {
        temperature,
        top_k,
        top_p,
        uniform,
    }
}

/// Logits of one kind: `ties` rounds them to a few levels, so cuts fall among equal
/// values.
fn logits_of(rng: &mut ChaCha8Rng, vocab: usize, kind: &str) -> Vec<f32> {
    let mut v = random_vec(rng, vocab, 8.0);
    match kind {
        "ties" => v.iter_mut().for_each(|x| *x = (*x / 2.0).round()),
        "equal" => v.iter_mut().for_each(|x| *x = 1.5),
        "peaked" => {
            let i = rng.random_range(0..vocab);
            v[i] = 40.0;
        }
        "non-finite" => {
            for (i, x) in v.iter_mut().enumerate() {
                match i % 7 {
                    0 => *x = f32::NEG_INFINITY,
                    3 => *x = f32::NAN,
                    5 if i % 2 == 1 => *x = f32::INFINITY,
                    _ => {}
                }
            }
        }
        "none finite" => v.iter_mut().enumerate().for_each(|(i, x)| {
            *x = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY][i % 3];
        }),
        "zeros" => v
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = if i % 2 == 0 { 0.0 } else { -0.0 }),
        _ => {}
    }
    v
}

#[test]
fn sampling_matches_reference_across_vocabularies_and_settings() {
    let ctx = context();
    let mut rng = rng(40);
    for &vocab in &[1usize, 2, 5, 255, 256, 257, 1000, 4099] {
        let v = vocab as u32;
        let mut settings = vec![
            setting(0.0, 0, 1.0, 0.5),
            setting(f32::NAN, 7, 0.3, 0.9),
            setting(1.0, 0, 1.0, 0.0),
            setting(1.0, 0, 1.0, 0.999_999_9),
            setting(0.7, 0, 0.9, 0.37),
            setting(1.0, 1, 1.0, 0.5),
            setting(1.0, 2, 1.0, 0.8),
            setting(0.8, 40, 0.95, 0.61),
            setting(1.3, v.saturating_sub(1), 0.5, 0.25),
            setting(1.0, v, 0.999, 0.75),
            setting(1.0, v + 5, 0.6, 0.1),
            setting(1.0, 0, 0.0, 0.5),
            setting(1.0, 0, 1e-6, 0.99),
            setting(1e-6, 0, 0.9, 0.5),
            setting(100.0, 0, 0.5, 0.42),
            setting(1.0, 0, f32::NAN, 0.3),
        ];
        for _ in 0..8 {
            settings.push(setting(
                rng.random_range(0.2..2.0),
                if rng.random_bool(0.5) {
                    rng.random_range(0..=v + 1)
                } else {
                    0
                },
                if rng.random_bool(0.7) {
                    rng.random_range(0.05..1.0)
                } else {
                    1.0
                },
                rng.random_range(0.0..1.0),
            ));
        }
        for kind in [
            "random",
            "ties",
            "equal",
            "peaked",
            "non-finite",
            "none finite",
            "zeros",
        ] {
            let rows: Vec<(Vec<f32>, RowSampling)> = settings
                .iter()
                .map(|&s| (logits_of(&mut rng, vocab, kind), s))
                .collect();
            let got = sample_on_gpu(&ctx, vocab, &rows);
            for (r, ((logits, s), g)) in rows.iter().zip(got).enumerate() {
                check_row(&format!("vocab {vocab}, {kind} logits, row {r} {s:?}"), logits, *s, g);
            }
        }
    }
}

/// Over many draws of one row, the tokens follow the truncated softmax: with uniforms
/// spread evenly over [0, 1), each kept token is drawn in proportion to its
/// probability (to within one draw), and no other token is.
#[test]
fn sampled_tokens_follow_the_truncated_softmax() {
    let ctx = context();
    let mut rng = rng(41);
    let vocab = 3000;
    let logits = logits_of(&mut rng, vocab, "ties");
    let draws = 2000;
    for base in [
        setting(0.9, 0, 1.0, 0.0),
        setting(1.0, 50, 0.75, 0.0),
        setting(0.6, 0, 0.66, 0.0),
    ] {
        let rows: Vec<(Vec<f32>, RowSampling)> = (0..draws)
            .map(|d| {
                let s = RowSampling {
                    uniform: (d as f32 + 0.5) / draws as f32,
                    ..base
                };
                (logits.clone(), s)
            })
            .collect();
        let got = sample_on_gpu(&ctx, vocab, &rows);
        let def = definition(&logits, base);
        assert_eq!(def.kept_range.0, def.kept_range.1, "{base:?}: the edge is clear");
        let kept = &def.weights[..def.kept_range.0];
        let total: f64 = kept.iter().map(|k| k.1).sum();
        let mut counts = std::collections::HashMap::new();
        for g in &got {
            *counts.entry(g.token).or_insert(0usize) += 1;
        }
        for &(id, w) in kept {
            let expected = w / total * draws as f64;
            let n = counts.remove(&id).unwrap_or(0) as f64;
            assert!(
                (n - expected).abs() <= 1.5,
                "{base:?}: token {id} drawn {n} times, expected {expected:.1}"
            );
        }
        assert!(
            counts.is_empty(),
            "{base:?}: tokens outside the kept set drawn: {counts:?}"
        );
    }
}

/// A vocabulary of Qwen's size, one row, with the settings a chat client sends.
#[test]
fn sampling_a_large_vocabulary_matches_reference() {
    let ctx = context();
    let mut rng = rng(42);
    let vocab = 151_936;
    let rows: Vec<(Vec<f32>, RowSampling)> = [
        setting(0.7, 0, 0.8, 0.3),
        setting(1.0, 20, 0.95, 0.9),
        setting(1.0, 0, 1.0, 0.6),
    ]
    .into_iter()
    .zip(["random", "ties", "peaked"])
    .map(|(s, kind)| (logits_of(&mut rng, vocab, kind), s))
    .collect();
    let got = sample_on_gpu(&ctx, vocab, &rows);
    for (r, ((logits, s), g)) in rows.iter().zip(got).enumerate() {
        check_row(&format!("vocab {vocab}, row {r} {s:?}"), logits, *s, g);
    }
}

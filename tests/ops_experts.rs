//! Permutation, expert matmuls (grouped, GEMV, dense) and combine against their CPU references.

mod common;

use common::*;
use rand::Rng;
use webmoe::gpu::kernel::{Recorder, SENTINEL};
use webmoe::ops::combine::{combine_reference, encode_combine, NextNorm, SharedTerm};
use webmoe::ops::expert_matmul::*;
use webmoe::ops::norm::rms_norm_reference;
use webmoe::ops::permute::{permutation_reference, BlockRows, Permutation};
use webmoe::{DType, GpuContext, GpuTensor, KernelTarget, WeightFormat, WeightMatrix};

/// Routed ids of a given kind for `tokens * k` assignments.
fn routed_ids(rng: &mut impl Rng, tokens: usize, k: usize, experts: usize, kind: &str) -> Vec<u32> {
    (0..tokens)
        .flat_map(|t| {
            let mut row: Vec<u32> = match kind {
                // distinct experts per token, uniformly spread
                "random" => {
                    let mut all: Vec<u32> = (0..experts as u32).collect();
                    for i in 0..k {
                        let j = rng.random_range(i..experts);
                        all.swap(i, j);
                    }
                    all[..k].to_vec()
                }
                // every token's first slot on expert 0, the rest on the last experts
                "one_expert" => (0..k as u32)
                    .map(|j| if j == 0 { 0 } else { experts as u32 - j })
                    .collect(),
                // only even experts used (odd ones empty), some dropped
                "sparse" => (0..k)
                    .map(|j| {
                        if (t + j) % 5 == 0 {
                            SENTINEL
                        } else {
                            ((t * k + j) % experts) as u32 & !1
                        }
                    })
                    .collect(),
                _ => unreachable!(),
            };
            row.truncate(k);
            row
        })
        .collect()
}

#[test]
fn permutation_matches_counting_sort() {
    let ctx = context();
    let mut rng = rng(10);
    for &tokens in &[1, 2, 7, 64, 257] {
        for &experts in &[1, 4, 8, 60, 128] {
            for &k in &[1, 2, 8] {
                if k > experts {
                    continue;
                }
                for (kind, block) in ["random", "one_expert", "sparse"]
                    .into_iter()
                    .flat_map(|kind| [BlockRows::R8, BlockRows::R16, BlockRows::R32].map(|b| (kind, b)))
                {
                    let ids = routed_ids(&mut rng, tokens, k, experts, kind);
                    let ig = GpuTensor::from_u32(&ctx, "ids", &[tokens, k], &ids).unwrap();
                    let perm = Permutation::with_blocks(&ctx, tokens * k, experts, block).unwrap();
                    for t in [
                        &perm.expert_counts,
                        &perm.padded_offsets,
                        &perm.block_expert,
                        &perm.row_assignment,
                        &perm.assignment_row,
                    ] {
                        t.poison(&ctx);
                    }
                    run(&ctx, |enc| perm.encode(&ctx, enc, &ig));
                    let want = permutation_reference(&ids, experts, block);
                    let what = format!("T={tokens} E={experts} k={k} {kind} {block:?}");
                    assert_eq!(
                        perm.expert_counts.read_u32_blocking(&ctx).unwrap(),
                        want.expert_counts,
                        "counts {what}"
                    );
                    assert_eq!(
                        perm.padded_offsets.read_u32_blocking(&ctx).unwrap(),
                        want.padded_offsets,
                        "offsets {what}"
                    );
                    assert_eq!(
                        perm.block_expert.read_u32_blocking(&ctx).unwrap(),
                        want.block_expert,
                        "blocks {what}"
                    );
                    assert_eq!(
                        perm.assignment_row.read_u32_blocking(&ctx).unwrap(),
                        want.assignment_row,
                        "rows {what}"
                    );
                    let rows = perm.row_assignment.read_u32_blocking(&ctx).unwrap();
                    assert_eq!(
                        &rows[..want.row_assignment.len()],
                        &want.row_assignment[..],
                        "row assignment {what}"
                    );
                    assert_eq!(want.padded_offsets[experts] as usize % block.rows(), 0);
                }
            }
        }
    }
}

struct ExpertCase {
    tokens: usize,
    experts: usize,
    k: usize,
    dim: usize,
    ffn: usize,
    dtype: DType,
    kind: &'static str,
}

/// Gate/up then down through every row mode, against the per-assignment CPU reference.
fn check_expert_matmuls(ctx: &GpuContext, case: &ExpertCase, seed: u64) {
    let mut rng = rng(seed);
    let ExpertCase {
        tokens,
        experts,
        k,
        dim,
        ffn,
        dtype,
        kind,
    } = *case;
    let x = random_vec(&mut rng, tokens * dim, 1.0);
    let gate = random_vec(&mut rng, experts * ffn * dim, 0.5);
    let up = random_vec(&mut rng, experts * ffn * dim, 0.5);
    let down = random_vec(&mut rng, experts * dim * ffn, 0.5);
    let ids = routed_ids(&mut rng, tokens, k, experts, kind);

    let round = |v: &[f32]| v.iter().map(|&w| dtype.round_trip(w)).collect::<Vec<_>>();
    let (gr, ur, dr) = (round(&gate), round(&up), round(&down));
    let per = ffn * dim;
    let want: Vec<Option<Vec<f32>>> = ids
        .iter()
        .enumerate()
        .map(|(a, &e)| {
            (e != SENTINEL).then(|| {
                let e = e as usize;
                let h = swiglu_reference(
                    &x[(a / k) * dim..(a / k + 1) * dim],
                    &gr[e * per..(e + 1) * per],
                    &ur[e * per..(e + 1) * per],
                    ffn,
                );
                matvec_reference(&h, &dr[e * per..(e + 1) * per], dim)
            })
        })
        .collect();

    let xg = GpuTensor::from_f32(ctx, "x", &[tokens, dim], &x, DType::F32).unwrap();
    let gw = WeightMatrix::from_f32(
        ctx,
        "gate",
        &gate,
        [experts, ffn, dim],
        WeightFormat::of_dtype(dtype).unwrap(),
    )
    .unwrap();
    let uw = WeightMatrix::from_f32(
        ctx,
        "up",
        &up,
        [experts, ffn, dim],
        WeightFormat::of_dtype(dtype).unwrap(),
    )
    .unwrap();
    let dw = WeightMatrix::from_f32(
        ctx,
        "down",
        &down,
        [experts, dim, ffn],
        WeightFormat::of_dtype(dtype).unwrap(),
    )
    .unwrap();
    let ig = GpuTensor::from_u32(ctx, "ids", &[tokens, k], &ids).unwrap();
    let blocks = [BlockRows::R8, BlockRows::R16, BlockRows::R32];
    let perms: Vec<Permutation> = blocks
        .iter()
        .map(|&b| Permutation::with_blocks(ctx, tokens * k, experts, b).unwrap())
        .collect();
    let tol = if dtype == DType::F32 { 1e-5 } else { 2e-5 };
    // Grouped in each block size, then the per-assignment GEMV. The grouped kernel
    // differs by kernel target (shared tiles, or read directly on a CPU target when K
    // is a multiple of 8) but not by the GEMV's reduction: it runs on the first context
    // of each target (not again on the GPU target with its subgroups turned off).
    let subgroups_off = ctx.features.contains(wgpu::Features::SUBGROUP) && !ctx.subgroup_reductions;
    let first_mode = if ctx.kernel_target == KernelTarget::Gpu && subgroups_off {
        blocks.len()
    } else {
        0
    };
    for mode in first_mode..=blocks.len() {
        let grouped = mode < blocks.len();
        let perm = &perms[mode.min(blocks.len() - 1)];
        let rows = if grouped {
            ExpertRows::Permuted {
                permutation: perm,
                top_k: k,
            }
        } else {
            ExpertRows::PerAssignment {
                routed_ids: &ig,
                top_k: k,
            }
        };
        let h = GpuTensor::empty(ctx, "h", &[rows.output_rows(), ffn], DType::F32).unwrap();
        let y = GpuTensor::empty(ctx, "y", &[rows.output_rows(), dim], DType::F32).unwrap();
        h.poison(ctx);
        y.poison(ctx);
        run(ctx, |enc| {
            perm.encode(ctx, enc, &ig);
            encode_gate_up(ctx, enc, rows, &xg, &gw, &uw, &h).unwrap();
            encode_down(ctx, enc, rows, &h, &dw, &y).unwrap();
        });
        let y_host = y.read_f32_blocking(ctx).unwrap();
        let assignment_row = perm.assignment_row.read_u32_blocking(ctx).unwrap();
        for (a, expected) in want.iter().enumerate() {
            let Some(expected) = expected else { continue };
            let row = if grouped { assignment_row[a] as usize } else { a };
            let got = &y_host[row * dim..(row + 1) * dim];
            let what = format!(
                "{} T={tokens} E={experts} k={k} d={dim} ffn={ffn} {dtype:?} {kind} assignment {a}",
                if grouped {
                    format!("grouped {:?}", perm.block_rows)
                } else {
                    format!("gemv for {}", ctx.kernel_choices())
                }
            );
            assert_close(&what, got, expected, tol);
        }
    }
}

#[test]
fn grouped_and_gemv_expert_matmuls_match_reference() {
    let contexts = contexts_for_every_gemv();
    let mut seed = 100;
    for &(tokens, experts, k) in &[(1, 4, 2), (2, 8, 8), (7, 60, 4), (64, 8, 2), (257, 4, 1), (64, 128, 8)] {
        // Row lengths (K) from 9 to 600: every GEMV row group (16, 8 and 4 rows).
        let sizes: &[(usize, usize)] = if tokens * k <= 32 {
            &[(13, 9), (67, 45), (64, 128), (600, 300)]
        } else {
            &[(13, 9), (67, 45), (64, 128)]
        };
        for &(dim, ffn) in sizes {
            for kind in ["random", "one_expert", "sparse"] {
                seed += 1;
                for ctx in &contexts {
                    check_expert_matmuls(
                        ctx,
                        &ExpertCase {
                            tokens,
                            experts,
                            k,
                            dim,
                            ffn,
                            dtype: DType::F32,
                            kind,
                        },
                        seed,
                    );
                }
            }
        }
    }
}

#[test]
fn half_precision_weights_match_rounded_reference() {
    for ctx in &contexts_for_every_gemv() {
        for (i, dtype) in [DType::F16, DType::BF16].into_iter().enumerate() {
            for &(tokens, experts, k, dim, ffn) in &[(3, 8, 2, 33, 17), (40, 8, 2, 67, 45), (9, 4, 4, 64, 64)] {
                check_expert_matmuls(
                    ctx,
                    &ExpertCase {
                        tokens,
                        experts,
                        k,
                        dim,
                        ffn,
                        dtype,
                        kind: "random",
                    },
                    200 + i as u64,
                );
            }
        }
    }
}

#[test]
fn dense_shared_expert_tiled_and_gemv_agree_with_reference() {
    for ctx in &contexts_for_every_gemv() {
        check_dense_shared_expert(ctx);
    }
}

fn check_dense_shared_expert(ctx: &GpuContext) {
    let mut rng = rng(300);
    for &(tokens, dim, ffn) in &[
        (1, 13, 9),
        (2, 40, 17),
        (3, 300, 21),
        (5, 67, 45),
        (7, 600, 33),
        (70, 64, 100),
        // Three 64-row blocks, the last with one row; K off the 8-run and the tile.
        (129, 20, 70),
    ] {
        let x = random_vec(&mut rng, tokens * dim, 1.0);
        let gate = random_vec(&mut rng, ffn * dim, 0.5);
        let up = random_vec(&mut rng, ffn * dim, 0.5);
        let down = random_vec(&mut rng, dim * ffn, 0.5);
        let want: Vec<f32> = (0..tokens)
            .flat_map(|t| {
                matvec_reference(
                    &swiglu_reference(&x[t * dim..(t + 1) * dim], &gate, &up, ffn),
                    &down,
                    dim,
                )
            })
            .collect();
        let xg = GpuTensor::from_f32(ctx, "x", &[tokens, dim], &x, DType::F32).unwrap();
        let gw = WeightMatrix::from_f32(ctx, "gate", &gate, [1, ffn, dim], WeightFormat::F32).unwrap();
        let uw = WeightMatrix::from_f32(ctx, "up", &up, [1, ffn, dim], WeightFormat::F32).unwrap();
        let dw = WeightMatrix::from_f32(ctx, "down", &down, [1, dim, ffn], WeightFormat::F32).unwrap();
        // The down projection's epilogue: a bias [1, d] and a residual add into a stream.
        let bias = random_vec(&mut rng, dim, 0.5);
        let stream = random_vec(&mut rng, tokens * dim, 2.0);
        let scale = 0.75;
        let bg = GpuTensor::from_f32(ctx, "bias", &[1, dim], &bias, DType::F32).unwrap();
        let want_stream: Vec<f32> = (0..tokens * dim)
            .map(|i| stream[i] + scale * (want[i] + bias[i % dim]))
            .collect();
        for gemv in [false, true] {
            let rows = ExpertRows::Dense { tokens, gemv };
            let what = format!("dense T={tokens} gemv={gemv} for {}", ctx.kernel_choices());
            let (h, y) = dense_mlp(ctx, rows, &xg, [&gw, &uw, &dw]);
            assert_close(&what, &y, &want, 1e-5);
            let hg = GpuTensor::from_f32(ctx, "h", &[tokens, ffn], &h, DType::F32).unwrap();
            let sg = GpuTensor::from_f32(ctx, "stream", &[tokens, dim], &stream, DType::F32).unwrap();
            let epilogue = Epilogue {
                biases: Some([&bg, &bg]),
                residual: Some(scale),
                ..Epilogue::default()
            };
            run(ctx, |enc| {
                encode_down_epilogue(ctx, enc, rows, &hg, &dw, &sg, epilogue).unwrap()
            });
            let got = sg.read_f32_blocking(ctx).unwrap();
            assert_close(&format!("{what}, bias and residual add"), &got, &want_stream, 1e-5);
        }
        // A residual add needs a down projection.
        let mut enc = Recorder::new();
        let residual_gate_up = Epilogue {
            residual: Some(1.0),
            ..Epilogue::default()
        };
        let h = GpuTensor::empty(ctx, "h", &[tokens, ffn], DType::F32).unwrap();
        let rows = ExpertRows::Dense { tokens, gemv: true };
        assert!(encode_gate_up_with(ctx, &mut enc, rows, &xg, &gw, &uw, &h, residual_gate_up).is_err());
    }
}

/// Runs gate/up then down on `x` through the dense `rows` mode: (h, y), poisoned first.
fn dense_mlp(
    ctx: &GpuContext,
    rows: ExpertRows,
    x: &GpuTensor,
    [gate, up, down]: [&WeightMatrix; 3],
) -> (Vec<f32>, Vec<f32>) {
    let tokens = x.shape[0];
    let h = GpuTensor::empty(ctx, "h", &[tokens, gate.out_dim], DType::F32).unwrap();
    let y = GpuTensor::empty(ctx, "y", &[tokens, down.out_dim], DType::F32).unwrap();
    h.poison(ctx);
    y.poison(ctx);
    run(ctx, |enc| {
        encode_gate_up(ctx, enc, rows, x, gate, up, &h).unwrap();
        encode_down(ctx, enc, rows, &h, down, &y).unwrap();
    });
    (h.read_f32_blocking(ctx).unwrap(), y.read_f32_blocking(ctx).unwrap())
}

/// The dense GEMV reads each weight once for up to four tokens: a token's outputs must
/// be bit-identical whether it runs alone or among others (batch invariance), for every
/// batch size, including groups the token count does not fill.
#[test]
fn dense_gemv_token_is_the_same_alone_or_batched() {
    for ctx in &contexts_for_every_gemv() {
        check_dense_gemv_batch_invariance(ctx);
    }
}

fn check_dense_gemv_batch_invariance(ctx: &GpuContext) {
    let mut rng = rng(301);
    for &(dim, ffn, format) in &[
        (40, 17, WeightFormat::F32),
        (300, 21, WeightFormat::F16),
        (600, 9, WeightFormat::F32),
    ] {
        let gate = random_vec(&mut rng, ffn * dim, 0.5);
        let up = random_vec(&mut rng, ffn * dim, 0.5);
        let down = random_vec(&mut rng, dim * ffn, 0.5);
        let gw = WeightMatrix::from_f32(ctx, "gate", &gate, [1, ffn, dim], format).unwrap();
        let uw = WeightMatrix::from_f32(ctx, "up", &up, [1, ffn, dim], format).unwrap();
        let dw = WeightMatrix::from_f32(ctx, "down", &down, [1, dim, ffn], format).unwrap();
        let x = random_vec(&mut rng, 9 * dim, 1.0);
        let run_tokens = |tokens: &[usize]| -> (Vec<f32>, Vec<f32>) {
            let rows_x: Vec<f32> = tokens
                .iter()
                .flat_map(|&t| x[t * dim..(t + 1) * dim].to_vec())
                .collect();
            let t = tokens.len();
            let xg = GpuTensor::from_f32(ctx, "x", &[t, dim], &rows_x, DType::F32).unwrap();
            dense_mlp(ctx, ExpertRows::Dense { tokens: t, gemv: true }, &xg, [&gw, &uw, &dw])
        };
        let alone: Vec<(Vec<f32>, Vec<f32>)> = (0..9).map(|t| run_tokens(&[t])).collect();
        for batch in 2..=9 {
            // Token order reversed, so a token lands in another slot of its group.
            let tokens: Vec<usize> = (0..batch).rev().collect();
            let (h, y) = run_tokens(&tokens);
            for (slot, &t) in tokens.iter().enumerate() {
                let what = format!(
                    "d={dim} {format:?} batch {batch} token {t} for {}",
                    ctx.kernel_choices()
                );
                assert_eq!(bits(&h[slot * ffn..(slot + 1) * ffn]), bits(&alone[t].0), "{what}: h");
                assert_eq!(bits(&y[slot * dim..(slot + 1) * dim]), bits(&alone[t].1), "{what}: y");
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn combine_matches_reference() {
    let ctx = context();
    let mut rng = rng(400);
    // Dims up to 700 (model widths are larger than a workgroup).
    for &(tokens, k, dim, rows_total) in &[
        (1, 1, 5, 3),
        (7, 4, 33, 40),
        (257, 2, 16, 600),
        (2, 2, 256, 5),
        (3, 8, 300, 30),
        (1, 3, 700, 3),
    ] {
        let mut ids: Vec<u32> = (0..tokens * k).map(|_| rng.random_range(0..8)).collect();
        ids[0] = SENTINEL;
        let weights = random_vec(&mut rng, tokens * k, 1.0);
        // Distinct rows per assignment, in a shuffled order.
        let mut rows: Vec<u32> = (0..rows_total as u32).collect();
        for i in 0..rows.len() {
            let j = rng.random_range(i..rows.len());
            rows.swap(i, j);
        }
        rows.truncate(tokens * k);
        let y = random_vec(&mut rng, rows_total * dim, 1.0);
        let shared = random_vec(&mut rng, tokens * dim, 1.0);
        let gate_logits = random_vec(&mut rng, tokens, 2.0);
        let expert_rows: Vec<Option<Vec<f32>>> = rows
            .iter()
            .map(|&r| Some(y[r as usize * dim..(r as usize + 1) * dim].to_vec()))
            .collect();

        let ig = GpuTensor::from_u32(&ctx, "ids", &[tokens, k], &ids).unwrap();
        let rg = GpuTensor::from_u32(&ctx, "rows", &[tokens * k], &rows).unwrap();
        let wg = GpuTensor::from_f32(&ctx, "w", &[tokens, k], &weights, DType::F32).unwrap();
        let yg = GpuTensor::from_f32(&ctx, "y", &[rows_total, dim], &y, DType::F32).unwrap();
        let sg = GpuTensor::from_f32(&ctx, "shared", &[tokens, dim], &shared, DType::F32).unwrap();
        let gg = GpuTensor::from_f32(&ctx, "gate", &[tokens, 1], &gate_logits, DType::F32).unwrap();
        for mode in 0..3 {
            let term = match mode {
                0 => None,
                1 => Some(SharedTerm {
                    output: &sg,
                    gate_logits: None,
                }),
                _ => Some(SharedTerm {
                    output: &sg,
                    gate_logits: Some(&gg),
                }),
            };
            let out = GpuTensor::empty(&ctx, "out", &[tokens, dim], DType::F32).unwrap();
            out.poison(&ctx);
            run(&ctx, |enc| {
                encode_combine(&ctx, enc, &ig, Some(&rg), &wg, &yg, term, &out, None, None).unwrap()
            });
            let shared_ref = match mode {
                0 => None,
                1 => Some((shared.as_slice(), None)),
                _ => Some((shared.as_slice(), Some(gate_logits.as_slice()))),
            };
            let want = combine_reference(&ids, &weights, &expert_rows, shared_ref, tokens, k, dim);
            assert_close(
                &format!("combine T={tokens} mode {mode}"),
                &out.read_f32_blocking(&ctx).unwrap(),
                &want,
                1e-5,
            );
            // Added into a residual stream instead.
            let stream = random_vec(&mut rng, tokens * dim, 2.0);
            let sg = GpuTensor::from_f32(&ctx, "stream", &[tokens, dim], &stream, DType::F32).unwrap();
            run(&ctx, |enc| {
                encode_combine(&ctx, enc, &ig, Some(&rg), &wg, &yg, term, &sg, Some(-1.5), None).unwrap()
            });
            let want_stream: Vec<f32> = stream.iter().zip(&want).map(|(s, w)| s + -1.5 * w).collect();
            assert_close(
                &format!("combine into a residual stream T={tokens} mode {mode}"),
                &sg.read_f32_blocking(&ctx).unwrap(),
                &want_stream,
                1e-5,
            );
            // And then the next layer's norm of the updated stream, in the same dispatch.
            let sg = GpuTensor::from_f32(&ctx, "stream", &[tokens, dim], &stream, DType::F32).unwrap();
            let norm_weight = random_vec(&mut rng, dim, 1.5);
            let wn = GpuTensor::from_f32(&ctx, "norm weight", &[dim], &norm_weight, DType::F32).unwrap();
            let normed = GpuTensor::empty(&ctx, "normed", &[tokens, dim], DType::F32).unwrap();
            normed.poison(&ctx);
            let next = NextNorm {
                weight: &wn,
                eps: 1e-5,
                output: &normed,
            };
            run(&ctx, |enc| {
                encode_combine(&ctx, enc, &ig, Some(&rg), &wg, &yg, term, &sg, Some(-1.5), Some(next)).unwrap()
            });
            // The norm follows only a residual add.
            let mut rec = Recorder::new();
            assert!(encode_combine(&ctx, &mut rec, &ig, Some(&rg), &wg, &yg, term, &sg, None, Some(next)).is_err());
            let what = format!("combine then norm T={tokens} mode {mode}");
            assert_close(&what, &sg.read_f32_blocking(&ctx).unwrap(), &want_stream, 1e-5);
            assert_close(
                &format!("{what}: normed"),
                &normed.read_f32_blocking(&ctx).unwrap(),
                &rms_norm_reference(&want_stream, &norm_weight, 1e-5),
                1e-5,
            );
        }
    }
}

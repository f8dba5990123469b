//! Model / Session / Workspace: a decode step after the first creates no GPU buffers
//! and no bind groups; sessions on one model are independent (interleaved steps give
//! the same tokens as each session alone); a session's routing totals add up.

mod common;

use common::*;
use webmoe::model::config::{Family, QkNorm};
use webmoe::model::generate::{Sampler, SamplingParams};
use webmoe::model::model::{moe_gemv_by_size, Model};
use webmoe::model::session::{Readback, Session};
use webmoe::model::synthetic::{model_from_weights, random_weights, synthetic_config, Dims};
use webmoe::moe::MoeConfig;
use webmoe::GpuContext;

fn tiny_model(ctx: &GpuContext) -> Model {
    let dims = Dims {
        layers: 3,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        vocab: 101,
        max_positions: 64,
    };
    let mut moe = MoeConfig::new(32, 24, 8, 2);
    moe.routing.renormalize = true;
    let mut config = synthetic_config(Family::Qwen3Moe, dims, moe);
    config.qk_norm = QkNorm::PerHead;
    let weights = random_weights(&config, 7);
    model_from_weights(ctx, &config, &weights, 64).unwrap()
}

/// Greedy tokens after `prompt`, one step at a time.
fn greedy(ctx: &GpuContext, model: &Model, session: &mut Session, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut token = pollster::block_on(session.next_greedy(ctx, model, prompt)).unwrap();
    let mut out = vec![token];
    for _ in 1..steps {
        token = pollster::block_on(session.next_greedy(ctx, model, &[token])).unwrap();
        out.push(token);
    }
    out
}

#[test]
fn decode_steps_after_the_first_create_no_buffers_or_bind_groups() {
    let ctx = context();
    let model = tiny_model(&ctx);
    let mut session = Session::new(&ctx, &model, None).unwrap();
    let prompt = [5, 17, 3, 99];
    let mut token = pollster::block_on(session.next_greedy(&ctx, &model, &prompt)).unwrap();
    // The first decode step records the decode workspace.
    token = pollster::block_on(session.next_greedy(&ctx, &model, &[token])).unwrap();
    let before = ctx.resource_counts();
    for _ in 0..6 {
        token = pollster::block_on(session.next_greedy(&ctx, &model, &[token])).unwrap();
    }
    let after = ctx.resource_counts();
    assert_eq!(
        after, before,
        "decode steps created GPU resources: {before:?} -> {after:?}"
    );
    assert!(
        before.buffers > 0 && before.bind_groups > 0,
        "the counters do not count"
    );
    // Sampling decode (logits read back) has its own workspace, reused the same way.
    let step = |s: &mut Session, t: u32| pollster::block_on(s.step(&ctx, &model, &[t], Readback::LastLogits)).unwrap();
    step(&mut session, token);
    let before = ctx.resource_counts();
    for _ in 0..3 {
        step(&mut session, token);
    }
    assert_eq!(ctx.resource_counts(), before);
    assert_eq!(session.position(), prompt.len() + 1 + 6 + 4);
}

/// Greedy decode with the next step submitted before a token is read back (its input
/// chained on the GPU) gives the step-by-step tokens, positions and routing totals;
/// stopping it discards the step in flight, and decoding on from there (over the cache
/// rows that step wrote) continues as if never stopped; it ends at the context's end.
#[test]
fn pipelined_greedy_decode_gives_the_step_by_step_tokens() {
    let ctx = context();
    let model = tiny_model(&ctx);
    let prompt = [5u32, 17, 3, 99];
    let steps = 12;
    let mut reference = Session::new(&ctx, &model, None).unwrap();
    let want = greedy(&ctx, &model, &mut reference, &prompt, steps);
    let distinct: std::collections::HashSet<_> = want.iter().collect();
    assert!(
        distinct.len() >= 4,
        "the tokens should change from step to step: {want:?}"
    );

    let decode = |session: &mut Session, first: u32, max: usize, stop_after: usize, got: &mut Vec<u32>| {
        let mut accepted = 0;
        pollster::block_on(session.decode_greedy(&ctx, &model, first, max, |token, routing| {
            assert_eq!(routing.len(), session_routing_len(&model));
            got.push(token);
            accepted += 1;
            accepted < stop_after
        }))
        .unwrap()
    };

    let mut session = Session::new(&ctx, &model, None).unwrap();
    let first = pollster::block_on(session.next_greedy(&ctx, &model, &prompt)).unwrap();
    let mut got = vec![first];
    assert_eq!(decode(&mut session, first, steps - 1, usize::MAX, &mut got), steps - 1);
    assert_eq!(got, want);
    assert_eq!(session.position(), reference.position());
    assert_eq!(session.routing_totals, reference.routing_totals);
    // Another decode reuses the workspace: no buffers, no bind groups.
    let before = ctx.resource_counts();
    session.rewind(prompt.len()).unwrap();
    let mut again = vec![first];
    decode(&mut session, first, steps - 1, usize::MAX, &mut again);
    assert_eq!(again, want);
    assert_eq!(ctx.resource_counts(), before);

    // Stopped after 3 tokens (a step in flight past them), then on from the last.
    let mut session = Session::new(&ctx, &model, None).unwrap();
    let first = pollster::block_on(session.next_greedy(&ctx, &model, &prompt)).unwrap();
    let mut got = vec![first];
    assert_eq!(decode(&mut session, first, steps - 1, 3, &mut got), 3);
    assert_eq!(session.position(), prompt.len() + 3);
    let last = *got.last().unwrap();
    decode(&mut session, last, steps - 4, usize::MAX, &mut got);
    assert_eq!(got, want);
    // A step-by-step step after a pipelined decode writes its own input.
    session.rewind(prompt.len() + 2).unwrap();
    let next = pollster::block_on(session.next_greedy(&ctx, &model, &[want[2]])).unwrap();
    assert_eq!(next, want[3]);

    // A session of prompt + 5 positions decodes 5 tokens, whatever the maximum asked.
    let mut short = Session::new(&ctx, &model, Some(prompt.len() + 5)).unwrap();
    let first = pollster::block_on(short.next_greedy(&ctx, &model, &prompt)).unwrap();
    let mut got = vec![first];
    assert_eq!(decode(&mut short, first, steps, usize::MAX, &mut got), 5);
    assert_eq!(got, want[..6]);
    assert_eq!(short.position(), short.max_context);
    assert_eq!(decode(&mut short, want[5], 3, usize::MAX, &mut got), 0);
}

/// Sampled decode (on a GPU kernel target with the `sample` kernel, steps queued
/// ahead, only tokens read back; on a CPU one from read-back logits) gives the tokens
/// the CPU sampler draws, with the same seed, from the step-by-step logits of those
/// tokens; decoding again reuses the workspaces.
#[test]
fn pipelined_sampled_decode_gives_the_cpu_samplers_tokens() {
    for ctx in &contexts_for_both_targets() {
        check_sampled_decode(ctx);
    }
}

fn check_sampled_decode(ctx: &GpuContext) {
    let model = tiny_model(ctx);
    let prompt = [5u32, 17, 3, 99];
    let steps = 16;
    let logits = |s: &mut Session, ids: &[u32]| {
        pollster::block_on(s.step(ctx, &model, ids, Readback::LastLogits))
            .unwrap()
            .logits
    };
    let mut runs = Vec::new();
    for (temperature, top_k, top_p, seed) in [(1.0, 0, 1.0, 1), (0.8, 20, 0.9, 2), (1.5, 0, 0.7, 3), (1.0, 0, 1.0, 4)] {
        let params = SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        };
        let mut session = Session::new(ctx, &model, None).unwrap();
        let mut sampler = Sampler::new(params);
        let first = sampler.sample(&logits(&mut session, &prompt));
        let decode = |session: &mut Session, sampler: &mut Sampler| {
            let mut got = vec![first];
            let n = pollster::block_on(session.decode(ctx, &model, first, steps - 1, sampler, |token, _| {
                got.push(token);
                true
            }))
            .unwrap();
            assert_eq!(n, steps - 1);
            got
        };
        let got = decode(&mut session, &mut sampler);
        let mut cpu = Sampler::new(params);
        let mut check = Session::new(ctx, &model, None).unwrap();
        let mut step_logits = logits(&mut check, &prompt);
        for (k, &token) in got.iter().enumerate() {
            assert_eq!(cpu.sample(&step_logits), token, "{params:?}: token {k} of {got:?}");
            step_logits = logits(&mut check, &[token]);
        }
        // Again from the same seed: the same tokens, no new buffers or bind groups.
        session.rewind(prompt.len()).unwrap();
        let before = ctx.resource_counts();
        let mut sampler = Sampler::new(params);
        sampler.next_draw();
        assert_eq!(decode(&mut session, &mut sampler), got);
        assert_eq!(ctx.resource_counts(), before);
        runs.push(got);
    }
    assert!(
        runs.iter()
            .all(|r| r.iter().collect::<std::collections::HashSet<_>>().len() >= 4),
        "the tokens should vary: {runs:?}"
    );
    assert_ne!(runs[0], runs[3], "another seed, other tokens");
}

fn session_routing_len(model: &Model) -> usize {
    model.moe_layers() * model.config.moe.num_experts()
}

#[test]
fn interleaved_sessions_give_the_same_tokens_as_each_alone() {
    let ctx = context();
    let model = tiny_model(&ctx);
    let (prompt_a, prompt_b) = ([1u32, 2, 3, 4, 5, 6], [60u32, 7, 7]);
    let steps = 10;
    let alone_a = greedy(
        &ctx,
        &model,
        &mut Session::new(&ctx, &model, None).unwrap(),
        &prompt_a,
        steps,
    );
    let alone_b = greedy(
        &ctx,
        &model,
        &mut Session::new(&ctx, &model, Some(32)).unwrap(),
        &prompt_b,
        steps,
    );
    assert_ne!(alone_a, alone_b, "the two prompts should continue differently");

    let mut a = Session::new(&ctx, &model, None).unwrap();
    let mut b = Session::new(&ctx, &model, Some(32)).unwrap();
    let mut ta = pollster::block_on(a.next_greedy(&ctx, &model, &prompt_a)).unwrap();
    let mut tb = pollster::block_on(b.next_greedy(&ctx, &model, &prompt_b)).unwrap();
    let (mut got_a, mut got_b) = (vec![ta], vec![tb]);
    for _ in 1..steps {
        tb = pollster::block_on(b.next_greedy(&ctx, &model, &[tb])).unwrap();
        ta = pollster::block_on(a.next_greedy(&ctx, &model, &[ta])).unwrap();
        got_a.push(ta);
        got_b.push(tb);
    }
    assert_eq!(got_a, alone_a);
    assert_eq!(got_b, alone_b);
}

#[test]
fn routing_totals_count_every_assignment() {
    let ctx = context();
    let model = tiny_model(&ctx);
    let mut session = Session::new(&ctx, &model, None).unwrap();
    let prompt = [9u32, 8, 7, 6, 5];
    let generated = greedy(&ctx, &model, &mut session, &prompt, 5);
    // Every token fed (the prompt and all but the last generated one) is routed to
    // top-k experts in each MoE layer.
    let fed = prompt.len() + generated.len() - 1;
    let total: u64 = session.routing_totals.iter().sum();
    let c = &model.config;
    assert_eq!(total, (fed * model.moe_layers() * c.moe.top_k()) as u64);
    assert_eq!(session.routing_totals.len(), model.moe_layers() * c.moe.num_experts());
    // Rewinding and replaying the prompt gives the same first token.
    session.rewind(0).unwrap();
    let again = pollster::block_on(session.next_greedy(&ctx, &model, &prompt)).unwrap();
    assert_eq!(again, generated[0]);
    assert!(session.rewind(50).is_err());
}

#[test]
fn the_model_is_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Model>();
    shareable::<GpuContext>();
    // Two threads, two sessions, one model.
    let ctx = std::sync::Arc::new(context());
    let model = std::sync::Arc::new(tiny_model(&ctx));
    let alone = greedy(
        &ctx,
        &model,
        &mut Session::new(&ctx, &model, None).unwrap(),
        &[4, 4, 2],
        4,
    );
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (ctx, model) = (ctx.clone(), model.clone());
            std::thread::spawn(move || {
                greedy(
                    &ctx,
                    &model,
                    &mut Session::new(&ctx, &model, None).unwrap(),
                    &[4, 4, 2],
                    4,
                )
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), alone);
    }
}

#[test]
fn after_the_warm_up_generations_compile_no_pipelines() {
    // The warm-up (throwaway steps of 8, 3, 2 and 1 tokens and a sampled decode step,
    // run at load) compiles every kernel of greedy and sampled decode and of prompts of 2 to 4 tokens on both kernel
    // targets, and on a CPU kernel target (GEMV in token groups at every size) those of
    // any prompt.
    for ctx in &contexts_for_both_targets() {
        let model = tiny_model(ctx);
        let seconds = pollster::block_on(webmoe::model::warm_up::warm_up(ctx, &model)).unwrap();
        assert!(seconds > 0.0);
        let compiled = ctx.compiled_pipelines();
        assert!(compiled > 0, "the pipeline counter does not count");
        let mut prompts: Vec<Vec<u32>> = vec![vec![5], vec![5, 17], vec![5, 17, 3], vec![5, 17, 3, 8]];
        if ctx.kernel_target == webmoe::KernelTarget::Cpu {
            prompts.push(vec![4; 13]);
        }
        for prompt in &prompts {
            let mut session = Session::new(ctx, &model, None).unwrap();
            let token = greedy(ctx, &model, &mut session, prompt, 4)[3];
            pollster::block_on(session.step(ctx, &model, &[token], Readback::LastLogits)).unwrap();
            let mut sampler = Sampler::new(SamplingParams {
                temperature: 0.8,
                top_k: 0,
                top_p: 0.9,
                seed: 1,
            });
            pollster::block_on(session.decode(ctx, &model, token, 2, &mut sampler, |_, _| true)).unwrap();
            assert_eq!(
                ctx.compiled_pipelines(),
                compiled,
                "a {}-token prompt on the {:?} target compiled kernels the warm-up did not",
                prompt.len(),
                ctx.kernel_target
            );
        }
    }
}

#[test]
fn the_warm_up_fits_a_tiny_context() {
    // A model whose context holds fewer positions than the warm-up's steps runs the
    // steps that fit.
    let ctx = context();
    let dims = Dims {
        layers: 1,
        heads: 2,
        kv_heads: 1,
        head_dim: 8,
        vocab: 11,
        max_positions: 4,
    };
    let config = synthetic_config(Family::Qwen3Moe, dims, MoeConfig::new(16, 8, 4, 2));
    let model = model_from_weights(&ctx, &config, &random_weights(&config, 3), 4).unwrap();
    pollster::block_on(webmoe::model::warm_up::warm_up(&ctx, &model)).unwrap();
}

#[test]
fn residual_adds_biases_and_routing_live_in_the_producing_kernels() {
    // The forward records no separate residual add or bias dispatch: the combine and the
    // down projections add into the residual stream, the projections add their biases;
    // a decode step routes each MoE layer in one dispatch and counts no experts.
    for ctx in &contexts_for_both_targets() {
        if !ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            eprintln!("skipped: the adapter has no timestamp queries (profiles need them)");
            return;
        }
        let dims = Dims {
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            vocab: 101,
            max_positions: 64,
        };
        let mut config = synthetic_config(Family::Qwen2Moe, dims, MoeConfig::new(32, 24, 8, 2));
        config.attention_bias = true;
        config.output_bias = true;
        let model = model_from_weights(ctx, &config, &random_weights(&config, 9), 64).unwrap();
        let mut session = Session::new(ctx, &model, None).unwrap();
        for ids in [&[3u32, 9, 4, 7, 1][..], &[5]] {
            let times = pollster::block_on(session.profile_step(ctx, &model, ids)).unwrap();
            let calls = |kernel: &str| -> usize { times.iter().filter(|k| k.kernel == kernel).map(|k| k.calls).sum() };
            let what = format!("{} tokens on the {:?} target", ids.len(), ctx.kernel_target);
            let split_down = if ctx.subgroup_reductions {
                "expert_gemv_subgroup::down"
            } else {
                "expert_gemv::down"
            };
            let gemv_down = match ctx.kernel_target {
                webmoe::KernelTarget::Gpu => split_down,
                webmoe::KernelTarget::Cpu => "expert_gemv::down_serial",
            };
            assert!(calls(gemv_down) > 0, "{what}: no {gemv_down} seen");
            for separate in ["elementwise::add_scaled", "elementwise::add_row_bias"] {
                assert_eq!(calls(separate), 0, "{what}: {separate} dispatched");
            }
            // The MoE layers route in one dispatch where they take the GEMV.
            let decode = moe_gemv_by_size(ctx, ids.len(), &config.moe);
            let fused = if decode { dims.layers } else { 0 };
            assert_eq!(calls("routing::route_fused"), fused, "{what}: fused routing");
            assert_eq!(calls("routing::route"), dims.layers - fused, "{what}: separate routing");
            // The routing statistics of a decode step are its routed ids, counted after
            // the readback: no counting dispatch.
            assert_eq!(calls("permute::count_experts"), 0, "{what}: a counting dispatch");
        }
    }
}

/// A prompt longer than `prefill_chunk` runs as several forwards: the logits of every
/// row, of the last row, the greedy token and the routing counts match one forward, on
/// both kernel targets (the GPU target takes tiles for long chunks and the GEMV for
/// short ones, so the chunks also cross kernels).
#[test]
fn chunked_prompts_give_what_one_forward_gives() {
    for ctx in contexts_for_both_targets() {
        let model = tiny_model(&ctx);
        let prompt: Vec<u32> = (0..37u32).map(|i| (i * 31 + 7) % 101).collect();
        let run = |chunk: usize, read: Readback| {
            let mut session = Session::new(&ctx, &model, None).unwrap();
            session.prefill_chunk = chunk;
            let out = pollster::block_on(session.step(&ctx, &model, &prompt, read)).unwrap();
            assert_eq!(session.position(), prompt.len());
            let totals: Vec<u32> = session.routing_totals.iter().map(|&t| t as u32).collect();
            assert_eq!(totals, out.routing_counts, "routing totals add the step's counts once");
            out
        };
        let vocab = model.config.vocab_size;
        for read in [Readback::AllLogits, Readback::LastLogits, Readback::Argmax] {
            let whole = run(64, read);
            for chunk in [1, 5, 16, 36] {
                let what = format!("{:?}, {read:?}, chunks of {chunk}", ctx.kernel_target);
                let chunked = run(chunk, read);
                let rows = match read {
                    Readback::AllLogits => prompt.len(),
                    Readback::LastLogits => 1,
                    Readback::Argmax => 0,
                };
                assert_eq!(chunked.logits.len(), rows * vocab, "{what}");
                assert_close(&what, &chunked.logits, &whole.logits, 1e-4);
                assert_eq!(chunked.token, whole.token, "{what}");
                assert_eq!(chunked.routing_counts, whole.routing_counts, "{what}");
            }
        }
    }
}

/// Chunks are recorded once: a second prompt of the same length creates no buffers.
#[test]
fn a_chunked_prompt_reuses_its_workspaces() {
    let ctx = context();
    let model = tiny_model(&ctx);
    let mut session = Session::new(&ctx, &model, None).unwrap();
    session.prefill_chunk = 8;
    let prompt: Vec<u32> = (0..21u32).collect();
    let first = pollster::block_on(session.next_greedy(&ctx, &model, &prompt)).unwrap();
    session.rewind(0).unwrap();
    let before = ctx.resource_counts();
    let again = pollster::block_on(session.next_greedy(&ctx, &model, &prompt)).unwrap();
    assert_eq!(ctx.resource_counts(), before, "chunks of 8 and the last 5 re-recorded");
    assert_eq!(again, first);
}

/// A chunk whose activations pass the adapter's storage binding limit makes the session
/// take smaller chunks by itself, with the same result.
#[test]
fn chunks_shrink_to_the_binding_limit() {
    let ctx = context();
    let model = tiny_model(&ctx);
    let prompt: Vec<u32> = (0..40u32).map(|i| (i * 13 + 2) % 101).collect();
    let mut session = Session::new(&ctx, &model, None).unwrap();
    let want = pollster::block_on(session.step(&ctx, &model, &prompt, Readback::LastLogits)).unwrap();
    // The widest activation of the tiny model's forward is the experts' gate/up rows,
    // top-k x 2 x 24 f32 per token: a limit of about 10 tokens' worth.
    let small = context_with(webmoe::ContextOptions {
        max_binding_bytes: Some(4096),
        ..webmoe::ContextOptions::from_env()
    });
    let small_model = tiny_model(&small);
    let mut session = Session::new(&small, &small_model, None).unwrap();
    let got = pollster::block_on(session.step(&small, &small_model, &prompt, Readback::LastLogits)).unwrap();
    assert!(
        session.prefill_chunk < 40 && session.prefill_chunk >= 1,
        "chunk {} after a 4096-byte limit",
        session.prefill_chunk
    );
    assert_close("shrunk chunks", &got.logits, &want.logits, 1e-4);
}

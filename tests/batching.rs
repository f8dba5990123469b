//! Continuous batching: a batched step's logits match each sequence run alone; the
//! server's engine gives a greedy request the same tokens alone or among 31 others;
//! cancelled requests free their slot at once; a full queue and an oversize prompt
//! are refused.

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use webmoe::model::batch::{Batch, BatchEntry, BatchRead};
use webmoe::model::config::{Family, MlaConfig, QkNorm};
use webmoe::model::generate::{generate, SamplingParams};
use webmoe::model::load::{load_model_dir, LoadOptions};
use webmoe::model::model::{Kernels, LogitsFor, Model};
use webmoe::model::session::Session;
use webmoe::model::synthetic::{model_from_weights, random_weights, synthetic_config, Dims};
use webmoe::moe::MoeConfig;
use webmoe::ops::expert_matmul::Activation;
use webmoe::ops::routing::{Scoring, TopKOrder};
use webmoe::ops::sampling::{sample_reference, RowSampling};
use webmoe::serve::engine::{
    prompt_kernels_for, Engine, EngineHandle, EngineOptions, Event, Finish, Request, SubmitError,
};
use webmoe::GpuContext;

fn synthetic_model(ctx: &GpuContext) -> Model {
    let dims = Dims {
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        vocab: 97,
        max_positions: 64,
    };
    let mut moe = MoeConfig::new(32, 24, 8, 2);
    moe.routing.renormalize = true;
    let mut config = synthetic_config(Family::Qwen3Moe, dims, moe);
    config.qk_norm = QkNorm::PerHead;
    model_from_weights(ctx, &config, &random_weights(&config, 11), 64).unwrap()
}

/// A DeepSeek-V3-shaped model (MLA with q compression over a latent cache) and a
/// gpt-oss-shaped one (sinks, a sliding window shorter than the prompts, biases).
fn mla_and_gpt_oss_models(ctx: &GpuContext) -> Vec<Model> {
    let dims = Dims {
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        vocab: 97,
        max_positions: 64,
    };
    let mut deepseek = synthetic_config(Family::DeepseekV3, dims, MoeConfig::new(32, 24, 8, 2));
    deepseek.mla = Some(MlaConfig {
        q_lora_rank: Some(12),
        kv_lora_rank: 20,
        qk_nope_head_dim: 10,
        qk_rope_head_dim: 6,
        v_head_dim: 12,
    });
    deepseek.rotary_dim = 6;
    deepseek.rope_interleaved = true;
    deepseek.moe.routing.scoring = Scoring::Sigmoid;
    deepseek.moe.routing.renormalize = true;
    let mut gpt_oss = synthetic_config(Family::GptOss, dims, MoeConfig::new(32, 24, 8, 2));
    gpt_oss.moe.routing.order = TopKOrder::TopKThenSoftmax;
    gpt_oss.moe.activation = Activation::ClampedSwiglu {
        alpha: 1.702,
        limit: 0.8,
    };
    gpt_oss.attention_bias = true;
    gpt_oss.output_bias = true;
    gpt_oss.attention_sinks = true;
    gpt_oss.attention_windows = vec![Some(4), None];
    [deepseek, gpt_oss]
        .iter()
        .map(|c| model_from_weights(ctx, c, &random_weights(c, 12), 64).unwrap())
        .collect()
}

/// On both kernel targets: the GPU target's GEMV steps split attention over the
/// context, and a sequence's logits must still not depend on the batch.
/// A batched step sampling on the GPU (each entry under its own draw; temperature 0
/// greedy) gives the tokens the CPU reference samples from the same step's logits; a
/// step given a draw too few is refused.
#[test]
fn a_batched_step_samples_each_entry_under_its_own_draw() {
    let ctx = context();
    let model = synthetic_model(&ctx);
    let prompts: Vec<Vec<u32>> = vec![vec![3, 9, 27], vec![11], vec![5, 6, 7, 8, 9], vec![40, 41]];
    let draws = [
        RowSampling {
            temperature: 0.9,
            top_k: 0,
            top_p: 0.9,
            uniform: 0.3,
        },
        RowSampling::default(),
        RowSampling {
            temperature: 1.2,
            top_k: 5,
            top_p: 1.0,
            uniform: 0.8,
        },
        RowSampling {
            temperature: 0.7,
            top_k: 0,
            top_p: 1.0,
            uniform: 0.55,
        },
    ];
    let step = |read: BatchRead| {
        let mut batch = Batch::new(&ctx, &model, 4, 16).unwrap();
        let slots: Vec<usize> = (0..prompts.len()).map(|_| batch.acquire().unwrap()).collect();
        let entries: Vec<BatchEntry> = slots
            .iter()
            .zip(&prompts)
            .map(|(&s, p)| BatchEntry::new(s, p))
            .collect();
        pollster::block_on(batch.step(&ctx, &model, &entries, read, Kernels::Gemv))
    };
    let logits = step(BatchRead::Logits).unwrap().logits;
    let sampled = step(BatchRead::Sample(&draws)).unwrap().tokens;
    let vocab = model.config.vocab_size;
    let want: Vec<u32> = draws
        .iter()
        .enumerate()
        .map(|(k, &d)| sample_reference(&logits[k * vocab..][..vocab], d).token)
        .collect();
    assert_eq!(sampled, want);
    let error = step(BatchRead::Sample(&draws[..3])).unwrap_err();
    assert!(error.to_string().contains("4 entries got 3 sampling draws"), "{error}");
}

#[test]
fn a_batched_step_gives_each_sequence_the_logits_it_gets_alone() {
    for ctx in contexts_for_both_targets() {
        check_batched_step(&ctx, &synthetic_model(&ctx));
    }
}

#[test]
fn batched_steps_over_latent_caches_and_sliding_windows_equal_each_sequence_alone() {
    for ctx in contexts_for_both_targets() {
        for model in mla_and_gpt_oss_models(&ctx) {
            check_batched_step(&ctx, &model);
        }
    }
}

fn check_batched_step(ctx: &GpuContext, model: &Model) {
    let vocab = model.config.vocab_size;
    let prompts: Vec<Vec<u32>> = vec![
        vec![3, 9, 27, 81, 50, 2, 7],
        vec![11],
        vec![5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
        vec![40, 41],
    ];
    let follow = [60u32, 61, 62, 63];
    // Alone: each sequence in its own session.
    let mut alone = Vec::new();
    for (p, &next) in prompts.iter().zip(&follow) {
        let mut session = Session::new(ctx, model, None).unwrap();
        let first = pollster::block_on(session.logits(ctx, model, p, LogitsFor::Last)).unwrap();
        let second = pollster::block_on(session.logits(ctx, model, &[next], LogitsFor::Last)).unwrap();
        alone.push((first, second));
    }
    // Together: every prompt in one step (slots out of order), then one token each.
    let mut batch = Batch::new(ctx, model, 6, 32).unwrap();
    let slots: Vec<usize> = (0..prompts.len()).map(|_| batch.acquire().unwrap()).collect();
    batch.release(slots[1]);
    let reused = batch.acquire().unwrap();
    assert_eq!(reused, slots[1], "a freed slot is reused");
    for kernels in [Kernels::Tiled, Kernels::Gemv] {
        let mut batch = Batch::new(ctx, model, 6, 32).unwrap();
        let slots: Vec<usize> = (0..prompts.len()).map(|_| batch.acquire().unwrap()).rev().collect();
        let entries: Vec<BatchEntry> = slots
            .iter()
            .zip(&prompts)
            .map(|(&slot, p)| BatchEntry::new(slot, p))
            .collect();
        let out = pollster::block_on(batch.step(ctx, model, &entries, BatchRead::Logits, kernels)).unwrap();
        let tokens: Vec<[u32; 1]> = follow.iter().map(|&t| [t]).collect();
        let entries: Vec<BatchEntry> = slots
            .iter()
            .zip(&tokens)
            .map(|(&slot, t)| BatchEntry::new(slot, t))
            .collect();
        let next = pollster::block_on(batch.step(ctx, model, &entries, BatchRead::Logits, kernels)).unwrap();
        let argmax = pollster::block_on(
            batch.step(
                ctx,
                model,
                &slots
                    .iter()
                    .map(|&slot| BatchEntry::new(slot, &[1]))
                    .collect::<Vec<_>>(),
                BatchRead::Argmax,
                kernels,
            ),
        )
        .unwrap();
        assert_eq!(argmax.tokens.len(), prompts.len());
        for (i, (first, second)) in alone.iter().enumerate() {
            assert_close(
                &format!("{kernels:?}: prompt {i}"),
                &out.logits[i * vocab..][..vocab],
                first,
                1e-4,
            );
            assert_close(
                &format!("{kernels:?}: next token {i}"),
                &next.logits[i * vocab..][..vocab],
                second,
                1e-4,
            );
        }
        for (slot, p) in slots.iter().zip(&prompts) {
            assert_eq!(batch.position(*slot), p.len() + 2);
        }
        // Bit for bit what each sequence gets alone with the same kernels: no row's
        // arithmetic depends on the other rows of its step.
        for (i, (p, &follow)) in prompts.iter().zip(&follow).enumerate() {
            let mut single = Batch::new(ctx, model, 1, 32).unwrap();
            let slot = single.acquire().unwrap();
            let first =
                pollster::block_on(single.step(ctx, model, &[BatchEntry::new(slot, p)], BatchRead::Logits, kernels))
                    .unwrap();
            let second = pollster::block_on(single.step(
                ctx,
                model,
                &[BatchEntry::new(slot, &[follow])],
                BatchRead::Logits,
                kernels,
            ))
            .unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&first.logits),
                bits(&out.logits[i * vocab..][..vocab]),
                "{kernels:?}: prompt {i}"
            );
            assert_eq!(
                bits(&second.logits),
                bits(&next.logits[i * vocab..][..vocab]),
                "{kernels:?}: next {i}"
            );
        }
        // Bad steps are errors, not GPU faults.
        let twice = [BatchEntry::new(slots[0], &[1]), BatchEntry::new(slots[0], &[2])];
        assert!(pollster::block_on(batch.step(ctx, model, &twice, BatchRead::Argmax, kernels)).is_err());
        let long = vec![1u32; 40];
        let past = [BatchEntry::new(slots[1], &long)];
        let err = pollster::block_on(batch.step(ctx, model, &past, BatchRead::Argmax, kernels)).unwrap_err();
        assert!(err.to_string().contains("pass the context"), "{err}");
        let free = [BatchEntry::new(5, &[1])];
        assert!(pollster::block_on(batch.step(ctx, model, &free, BatchRead::Argmax, kernels)).is_err());
    }
}

fn tiny_moe(ctx: &GpuContext) -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-moe");
    load_model_dir(ctx, &dir, LoadOptions::default()).unwrap().model
}

/// An engine on the embedded model, with prompt kernels as the server picks them.
fn engine(max_sequences: usize, max_queue: usize) -> EngineHandle {
    let ctx = context();
    let model = tiny_moe(&ctx);
    let kernels = prompt_kernels_for(ctx.kernel_target);
    engine_on(ctx, model, max_sequences, max_queue, kernels)
}

fn engine_on(
    ctx: GpuContext,
    model: Model,
    max_sequences: usize,
    max_queue: usize,
    prompt_kernels: Kernels,
) -> EngineHandle {
    let context = model.max_context;
    Engine::start(
        Arc::new(ctx),
        Arc::new(model),
        EngineOptions {
            max_sequences,
            context,
            prefill_chunk: 16,
            max_queue,
            prompt_kernels,
        },
    )
    .unwrap()
}

/// Submits a greedy request; the receiver, or why it was refused.
fn try_submit(
    engine: &EngineHandle,
    prompt: Vec<u32>,
    max_tokens: usize,
) -> Result<UnboundedReceiver<Event>, SubmitError> {
    try_submit_sampling(engine, prompt, max_tokens, SamplingParams::greedy())
}

fn try_submit_sampling(
    engine: &EngineHandle,
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
) -> Result<UnboundedReceiver<Event>, SubmitError> {
    let (events, receiver) = unbounded_channel();
    engine.submit(Request {
        prompt,
        max_tokens,
        sampling,
        stop_ids: Vec::new(),
        events,
    })?;
    Ok(receiver)
}

fn submit(engine: &EngineHandle, prompt: Vec<u32>, max_tokens: usize) -> UnboundedReceiver<Event> {
    try_submit(engine, prompt, max_tokens).unwrap()
}

fn collect(mut receiver: UnboundedReceiver<Event>) -> (Vec<u32>, Finish) {
    let mut tokens = Vec::new();
    loop {
        match receiver.blocking_recv() {
            Some(Event::Token(t)) => tokens.push(t),
            Some(Event::Done(f)) => return (tokens, f),
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// 32 prompts of 1 to 20 tokens below `vocab`.
fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    let mut rng = rng(5);
    (0..32)
        .map(|i| {
            let len = 1 + (i * 7) % 20;
            (0..len).map(|_| rand::Rng::random_range(&mut rng, 1..vocab)).collect()
        })
        .collect()
}

#[test]
fn a_greedy_request_gets_the_same_tokens_alone_or_among_31_others() {
    // The server's engine on the embedded model (GEMV prompt steps on a CPU adapter).
    same_tokens_alone_or_batched(&engine(32, 64), 2048);
}

#[test]
fn with_tiled_prompt_steps_tokens_also_do_not_depend_on_the_batch() {
    // What a GPU runs: tiled prompt steps beside GEMV decode steps (synthetic model,
    // small enough for tiles on a CPU adapter).
    let ctx = context();
    let model = synthetic_model(&ctx);
    same_tokens_alone_or_batched(&engine_on(ctx, model, 32, 64, Kernels::Tiled), 97);
}

fn same_tokens_alone_or_batched(engine: &EngineHandle, vocab: u32) {
    let engine = engine.clone();
    let prompts = prompts(vocab);
    let max_tokens = |i: usize| 4 + i % 5;
    // Alone: every fourth request (prompts of 1 to 20 tokens), one at a time.
    let checked: Vec<usize> = (0..32).step_by(4).collect();
    let alone: Vec<(Vec<u32>, Finish)> = checked
        .iter()
        .map(|&i| collect(submit(&engine, prompts[i].clone(), max_tokens(i))))
        .collect();
    // Together: all 32 at once, so prompts join in chunks while others decode.
    let receivers: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| submit(&engine, p.clone(), max_tokens(i)))
        .collect();
    let together: Vec<_> = receivers.into_iter().map(collect).collect();
    for (a, &i) in alone.iter().zip(&checked) {
        assert_eq!(a, &together[i], "request {i}: alone vs among 31 others");
        assert_eq!(a.0.len(), max_tokens(i), "request {i} ran to max_tokens");
    }
    let m = &engine.metrics;
    assert_eq!(m.completed.load(Ordering::Relaxed), 40);
    // The engine publishes the active count after the turn that finished the last.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m.active.load(Ordering::Relaxed) != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let rendered = m.render();
    assert!(rendered.contains("webmoe_active_sequences 0"), "{rendered}");
    assert!(rendered.contains("webmoe_expert_assignments_total{layer=\"1\",expert=\"7\"}"));
}

/// Sampled requests, six at once with greedy ones among them (on a GPU kernel target
/// drawn by the `sample` kernel in the batched steps, on a CPU one from read-back
/// logits), get the tokens `generate` draws for their seeds on a session alone.
#[test]
fn sampled_requests_get_the_tokens_generate_draws_for_their_seeds() {
    for ctx in contexts_for_both_targets() {
        let model = synthetic_model(&ctx);
        let params = |i: usize| SamplingParams {
            temperature: if i % 3 == 2 { 0.0 } else { 0.9 },
            top_k: if i.is_multiple_of(2) { 0 } else { 20 },
            top_p: 0.9,
            seed: i as u64,
        };
        let prompts = &prompts(97)[..6];
        let max_tokens = 8;
        let want: Vec<Vec<u32>> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut session = Session::new(&ctx, &model, None).unwrap();
                let run = generate(&ctx, &model, &mut session, p, max_tokens, params(i), &[], |_, _| true);
                pollster::block_on(run).unwrap().generated_ids
            })
            .collect();
        let target = ctx.kernel_target;
        let engine = engine_on(ctx, model, 8, 16, prompt_kernels_for(target));
        let receivers: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| try_submit_sampling(&engine, p.clone(), max_tokens, params(i)).unwrap())
            .collect();
        for (i, (receiver, want)) in receivers.into_iter().zip(&want).enumerate() {
            assert_eq!(&collect(receiver).0, want, "{target:?}: request {i} {:?}", params(i));
        }
        assert!(want
            .iter()
            .any(|w| w.iter().collect::<std::collections::HashSet<_>>().len() > 3));
    }
}

#[test]
fn a_cancelled_request_frees_its_slot_for_the_next_and_a_full_queue_refuses() {
    let engine = engine(1, 2);
    // The first request holds the only slot for a long time; drop its receiver.
    let mut first = submit(&engine, vec![5, 6, 7], 200);
    assert!(matches!(first.blocking_recv(), Some(Event::Token(_))));
    let second = submit(&engine, vec![8, 9], 4);
    let third = submit(&engine, vec![10], 4);
    // Slot busy and two waiting: the queue (2) is full.
    let refused = try_submit(&engine, vec![1], 1);
    assert_eq!(refused.err(), Some(SubmitError::QueueFull));
    drop(first);
    let (tokens, finish) = collect(second);
    assert_eq!((tokens.len(), finish), (4, Finish::Length));
    assert_eq!(collect(third).0.len(), 4);
    assert_eq!(engine.metrics.cancelled.load(Ordering::Relaxed), 1);
    // Too long a prompt, and ids past the vocabulary, are refused at submission.
    let long = try_submit(&engine, vec![1; 256], 1);
    assert!(matches!(long, Err(SubmitError::Invalid(m)) if m.contains("context holds 256")));
    // Shutdown: new requests are refused; the engine thread ends.
    engine.shutdown(Duration::from_millis(0));
    assert_eq!(try_submit(&engine, vec![1], 1).err(), Some(SubmitError::ShuttingDown));
}

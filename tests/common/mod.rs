//! Helpers shared by the GPU tests: a context on the test adapter, seeded random
//! data, and tolerance checks.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use webmoe::gpu::kernel::Recorder;
use webmoe::{ContextOptions, GpuContext, KernelTarget};

/// A context on the adapter the environment selects (lavapipe in CI). Tests fail,
/// not skip, without one: a green run must mean the kernels ran.
pub fn context() -> GpuContext {
    context_with(ContextOptions::from_env())
}

/// Contexts on the test adapter picking kernels for a GPU and for a CPU driver, in that
/// order: ops tests run the GPU-only choices on lavapipe too.
pub fn contexts_for_both_targets() -> [GpuContext; 2] {
    [KernelTarget::Gpu, KernelTarget::Cpu].map(|target| {
        context_with(ContextOptions {
            kernel_target: Some(target),
            ..ContextOptions::from_env()
        })
    })
}

/// As [`contexts_for_both_targets`], plus, where the adapter has subgroups (lavapipe
/// does), the GPU target reducing through shared memory alone, as on adapters without
/// them (every browser): the GEMV tests run both of the split GEMV's reductions.
pub fn contexts_for_every_gemv() -> Vec<GpuContext> {
    let [gpu, cpu] = contexts_for_both_targets();
    let mut contexts = vec![gpu];
    if contexts[0].subgroup_reductions {
        contexts.push(context_with(ContextOptions {
            kernel_target: Some(KernelTarget::Gpu),
            subgroups: Some(false),
            ..ContextOptions::from_env()
        }));
    }
    contexts.push(cpu);
    contexts
}

pub fn context_with(options: ContextOptions) -> GpuContext {
    pollster::block_on(GpuContext::new(options)).unwrap_or_else(|e| panic!("no GPU context for the tests: {e}"))
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform values in [-scale, scale).
pub fn random_vec(rng: &mut ChaCha8Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Records work and submits it in one command buffer.
pub fn run(ctx: &GpuContext, record: impl FnOnce(&mut Recorder)) {
    let mut recorder = Recorder::new();
    record(&mut recorder);
    recorder.submit(ctx);
}

/// Largest |a - b| relative to the largest |b| (at least `floor`), over all elements.
/// Elements are compared one by one; NaN anywhere fails.
pub fn max_relative_error(actual: &[f32], expected: &[f32], floor: f32) -> f32 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let scale = expected.iter().fold(floor, |m, v| m.max(v.abs()));
    actual
        .iter()
        .zip(expected)
        .map(|(a, b)| {
            if a.is_nan() || b.is_nan() {
                f32::INFINITY
            } else {
                (a - b).abs() / scale
            }
        })
        .fold(0.0, f32::max)
}

#[track_caller]
/// [`assert_close`] against whichever of `expected` is nearer (e.g. references for
/// either rounding of f16 caches: WGSL leaves pack2x16float's rounding open).
pub fn assert_close_to_either(what: &str, actual: &[f32], expected: &[&[f32]], tolerance: f32) {
    let nearest = expected
        .iter()
        .min_by(|a, b| max_relative_error(actual, a, 1e-6).total_cmp(&max_relative_error(actual, b, 1e-6)))
        .expect("at least one reference");
    assert_close(what, actual, nearest, tolerance);
}

pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], tolerance: f32) {
    let err = max_relative_error(actual, expected, 1e-6);
    if err > tolerance {
        let worst = actual
            .iter()
            .zip(expected)
            .enumerate()
            .max_by(|x, y| {
                let ex = (x.1 .0 - x.1 .1).abs();
                let ey = (y.1 .0 - y.1 .1).abs();
                ex.partial_cmp(&ey).unwrap_or(std::cmp::Ordering::Greater)
            })
            .unwrap();
        panic!(
            "{what}: max relative error {err:e} > {tolerance:e}; worst at {}: got {}, expected {}",
            worst.0, worst.1 .0, worst.1 .1
        );
    }
}

/// The u32 array of a JSON value (fixtures' token ids).
pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Up to `n` greedy tokens after `prompt` on a fresh session of `model`, stopping at `stop`.
pub fn greedy_tokens(
    ctx: &GpuContext,
    model: &webmoe::model::model::Model,
    prompt: &[u32],
    n: usize,
    stop: &[u32],
) -> Vec<u32> {
    let mut session = webmoe::model::session::Session::new(ctx, model, None).unwrap();
    let generation = pollster::block_on(webmoe::model::generate::generate(
        ctx,
        model,
        &mut session,
        prompt,
        n,
        webmoe::model::generate::SamplingParams::greedy(),
        stop,
        |_, _| true,
    ))
    .unwrap();
    generation.generated_ids
}

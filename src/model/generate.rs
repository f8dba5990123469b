//! Text generation: batched prefill, then token-by-token decode with one submit
//! and one small readback per token; greedy or sampled (temperature, top-k, top-p).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::model::Model;
use crate::model::session::{Readback, Session};
use crate::ops::embedding::argmax_reference;

/// How the next token is chosen. `temperature == 0` means greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches top_p (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// Picks tokens from logits on the CPU (sampling); greedy decoding stays on the GPU.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax_reference(logits).unwrap_or(0) as u32;
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / self.params.temperature))
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k.max(1));
        }
        let max = candidates.first().map_or(0.0, |c| c.1);
        let mut probs: Vec<f32> = candidates.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= self.params.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            candidates.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random_range(0.0..total.max(f32::MIN_POSITIVE));
        for (c, p) in candidates.iter().zip(&probs) {
            if r < *p {
                return c.0;
            }
            r -= p;
        }
        candidates.last().map_or(0, |c| c.0)
    }
}

/// What a generation produced, with timings.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    /// The 10 highest logits of the last prompt position, best first.
    pub first_logits_top: Vec<(u32, f32)>,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

impl Generation {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_ids.len() as f64 / self.prefill_seconds.max(1e-9)
    }

    /// Decode rate over the tokens after the first (the first comes from prefill).
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.generated_ids.len().saturating_sub(1) as f64 / self.decode_seconds.max(1e-9)
    }
}

/// The `n` highest logits, best first (lower id first on ties).
pub fn top_logits(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

/// Generates up to `max_new_tokens` after `prompt` (fed at the session's position),
/// stopping at any of `stop_ids`. `on_token` sees each new token with the routing
/// counts (`[MoE layers * experts]`) of the forward that produced it, and may return
/// false to stop (cancel).
#[allow(clippy::too_many_arguments)]
pub async fn generate(
    ctx: &GpuContext,
    model: &Model,
    session: &mut Session,
    prompt: &[u32],
    max_new_tokens: usize,
    sampling: SamplingParams,
    stop_ids: &[u32],
    mut on_token: impl FnMut(u32, &[u32]) -> bool,
) -> Result<Generation> {
    let clock = crate::util::Clock::start();
    let first = session.step(ctx, model, prompt, Readback::LastLogits).await?;
    let mut gen = Generation {
        prompt_ids: prompt.to_vec(),
        first_logits_top: top_logits(&first.logits, 10),
        ..Default::default()
    };
    let mut sampler = Sampler::new(sampling);
    let mut token = sampler.sample(&first.logits);
    let mut routing = first.routing_counts;
    gen.prefill_seconds = clock.seconds();
    let clock = crate::util::Clock::start();
    if max_new_tokens == 0 {
        gen.decode_seconds = clock.seconds();
        return Ok(gen);
    }
    loop {
        gen.generated_ids.push(token);
        let go_on = on_token(token, &routing);
        if !go_on || stop_ids.contains(&token) || gen.generated_ids.len() >= max_new_tokens {
            break;
        }
        if session.position() + 1 > session.max_context {
            break;
        }
        let read = if sampling.is_greedy() {
            Readback::Argmax
        } else {
            Readback::LastLogits
        };
        let step = session.step(ctx, model, &[token], read).await?;
        token = step.token.unwrap_or_else(|| sampler.sample(&step.logits));
        routing = step.routing_counts;
    }
    gen.decode_seconds = clock.seconds();
    Ok(gen)
}

//! Text generation: batched prefill, then token-by-token decode with one submit
//! and one small readback per token, greedy or sampled (temperature, top-k, top-p),
//! the token chosen on the GPU and the next step submitted before it is read back
//! (see [`Session::decode`]).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::model::Model;
use crate::model::session::{Readback, Session};
use crate::ops::sampling::{argmax_reference, sample_reference, RowSampling};

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

    /// Temperature 0 (or not a positive number) means greedy.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.temperature.is_nan()
    }
}

/// The draws of one generation: each token's sampling settings, with the uniform
/// from a seeded generator, one per sampled token (greedy tokens take none), so a
/// seed gives the same tokens whether a token is drawn on the GPU (the `sample`
/// kernel) or on the CPU ([`sample_reference`], the same rules).
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

    pub fn params(&self) -> SamplingParams {
        self.params
    }

    /// The settings of the next draw (greedy: temperature 0, no uniform drawn).
    pub fn next_draw(&mut self) -> RowSampling {
        if self.params.is_greedy() {
            return RowSampling::default();
        }
        RowSampling {
            temperature: self.params.temperature,
            top_k: self.params.top_k.min(u32::MAX as usize) as u32,
            top_p: self.params.top_p,
            uniform: self.rng.random::<f32>(),
        }
    }

    /// The next token from `logits`, on the CPU: greedy (the argmax, as on the GPU), or
    /// drawn at the temperature from the `top_k` most likely tokens, then from the
    /// shortest run of them, most likely first, whose probability reaches `top_p`
    /// (see [`sample_reference`]).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax_reference(logits).unwrap_or(0) as u32;
        }
        sample_reference(logits, self.next_draw()).token
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
    let token = sampler.sample(&first.logits);
    let routing = first.routing_counts;
    gen.prefill_seconds = clock.seconds();
    let clock = crate::util::Clock::start();
    if max_new_tokens == 0 {
        gen.decode_seconds = clock.seconds();
        return Ok(gen);
    }
    // Takes each new token; false when generation ends with it.
    let generated = &mut gen.generated_ids;
    let mut accept = |token: u32, routing: &[u32]| {
        generated.push(token);
        let go_on = on_token(token, routing);
        go_on && !stop_ids.contains(&token) && generated.len() < max_new_tokens
    };
    if accept(token, &routing) {
        let more = max_new_tokens - 1;
        session.decode(ctx, model, token, more, &mut sampler, accept).await?;
    }
    gen.decode_seconds = clock.seconds();
    Ok(gen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(logits: &[f32], params: SamplingParams) -> u32 {
        Sampler::new(params).sample(logits)
    }

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    /// The tokens the definition keeps and their probabilities, by a full sort: the top
    /// k (ties: lower id first), then the shortest most-likely-first prefix reaching top_p.
    fn kept_distribution(logits: &[f32], p: SamplingParams) -> Vec<(u32, f64)> {
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            c.truncate(p.top_k);
        }
        let max = c[0].1 as f64;
        let w: Vec<f64> = c.iter().map(|x| (x.1 as f64 - max).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut keep = c.len();
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            keep = w
                .iter()
                .position(|x| {
                    cumulative += x / total;
                    cumulative >= p.top_p as f64
                })
                .map_or(keep, |i| i + 1);
        }
        let kept_total: f64 = w[..keep].iter().sum();
        c[..keep].iter().zip(&w).map(|(x, w)| (x.0, w / kept_total)).collect()
    }

    #[test]
    fn greedy_and_top_1_take_the_most_likely_token_lower_id_on_ties() {
        let logits = [0.5, 3.0, -1.0, 3.0, f32::NAN, 2.9];
        assert_eq!(sampled(&logits, SamplingParams::greedy()), 1);
        assert_eq!(
            sampled(&logits, params(f32::NAN, 0, 1.0, 0)),
            1,
            "NaN temperature: greedy"
        );
        // A temperature so small that l / T would overflow: the most likely tokens only.
        for seed in 0..20 {
            for p in [
                params(1e-39, 0, 1.0, seed),
                params(1e-39, 0, 0.9, seed),
                params(1e-39, 3, 1.0, seed),
            ] {
                let id = sampled(&logits, p);
                assert!(id == 1 || id == 3, "{p:?}: {id}");
            }
        }
        assert_eq!(
            sampled(&[f32::NAN, f32::INFINITY], params(0.8, 0, 1.0, 0)),
            0,
            "nothing finite"
        );
        for seed in 0..20 {
            assert_eq!(sampled(&logits, params(0.7, 1, 1.0, seed)), 1);
            assert_eq!(sampled(&logits, params(1.3, 1, 0.5, seed)), 1);
        }
    }

    /// Sampled frequencies follow the truncated softmax within 5 standard deviations,
    /// and no token outside the kept set is ever drawn; non-finite logits never are.
    #[test]
    fn samples_follow_the_truncated_softmax() {
        let logits = [2.0, 1.0, 0.5, 0.0, -1.0, f32::NEG_INFINITY, 1.0, f32::NAN, -0.5];
        let draws = 20_000;
        for p in [
            params(0.8, 0, 1.0, 1),
            params(0.8, 3, 1.0, 2),
            params(1.5, 0, 0.8, 3),
            params(1.0, 4, 0.7, 4),
            params(0.5, 0, 0.3, 5),
        ] {
            let want = kept_distribution(&logits, p);
            let mut sampler = Sampler::new(p);
            let mut counts = vec![0usize; logits.len()];
            for _ in 0..draws {
                counts[sampler.sample(&logits) as usize] += 1;
            }
            for (id, &count) in counts.iter().enumerate() {
                let prob = want.iter().find(|w| w.0 as usize == id).map_or(0.0, |w| w.1);
                let freq = count as f64 / draws as f64;
                let sigma = (prob * (1.0 - prob) / draws as f64).sqrt();
                assert!(
                    (freq - prob).abs() <= 5.0 * sigma + 1e-9,
                    "{p:?}: token {id} drawn {freq:.4}, its probability {prob:.4}"
                );
            }
        }
    }

    /// Top-p without top-k over a large vocabulary sorts only a growing prefix: the
    /// nucleus it keeps is the full sort's, whether it is 1 token, about 100 (past the
    /// first 64) or about 3,000 (past 256 and 1,024), and every draw comes from it.
    #[test]
    fn top_p_over_a_large_vocabulary_keeps_the_full_sorts_nucleus() {
        let mut x: u64 = 7;
        let mut noise = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 40) as f32 / 16_777_216.0
        };
        let vocab = 151_936;
        let peaked: Vec<f32> = (0..vocab).map(|i| if i == 4242 { 30.0 } else { noise() }).collect();
        let flat: Vec<f32> = (0..vocab).map(|_| noise() * 0.05).collect();
        let mut hundred = flat.clone();
        for (i, l) in hundred.iter_mut().enumerate().step_by(1500) {
            *l = 12.0 + (i % 7) as f32 * 0.01;
        }
        for (logits, top_p, nucleus) in [
            (&peaked, 0.9, 1..=1),
            (&hundred, 0.9, 65..=101),
            (&flat, 0.02, 1025..=4000),
        ] {
            let p = params(1.0, 0, top_p, 9);
            let want = kept_distribution(logits, p);
            assert!(nucleus.contains(&want.len()), "nucleus of {} tokens", want.len());
            let kept: std::collections::HashSet<u32> = want.iter().map(|w| w.0).collect();
            let mut sampler = Sampler::new(p);
            for _ in 0..200 {
                let draw = sampler.next_draw();
                let got = sample_reference(logits, draw);
                assert_eq!(got.kept as usize, want.len(), "nucleus of {}", want.len());
                assert!(kept.contains(&got.token), "a token outside the {} kept", kept.len());
            }
        }
    }
}

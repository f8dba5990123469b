//! Host-side weights of one MoE layer, in Hugging Face orientation (`[out, in]`).

use crate::error::{Error, Result};
use crate::moe::config::MoeConfig;

#[derive(Clone, Debug, Default)]
pub struct SharedExpertWeights {
    /// `[ffn_s, d]`
    pub gate: Vec<f32>,
    /// `[ffn_s, d]`
    pub up: Vec<f32>,
    /// `[d, ffn_s]`
    pub down: Vec<f32>,
    /// `[1, d]`, when the shared expert is gated.
    pub gate_weight: Option<Vec<f32>>,
}

/// Biases of the routed experts' outputs (gpt-oss).
#[derive(Clone, Debug, Default)]
pub struct ExpertBiasWeights {
    /// `[E, ffn]`
    pub gate: Vec<f32>,
    /// `[E, ffn]`
    pub up: Vec<f32>,
    /// `[E, d]`
    pub down: Vec<f32>,
}

#[derive(Clone, Debug, Default)]
pub struct MoeWeights {
    /// `[E, d]`
    pub router: Vec<f32>,
    /// `[E]`: added to the router logits (gpt-oss).
    pub router_bias: Option<Vec<f32>>,
    pub expert_biases: Option<ExpertBiasWeights>,
    /// `[E]`: added to the selection key only (DeepSeek-V3 e_score_correction_bias).
    pub selection_bias: Option<Vec<f32>>,
    /// `[E, ffn, d]`
    pub gate: Vec<f32>,
    /// `[E, ffn, d]`
    pub up: Vec<f32>,
    /// `[E, d, ffn]`
    pub down: Vec<f32>,
    pub shared: Option<SharedExpertWeights>,
}

fn check(name: &str, values: &[f32], shape: &[usize]) -> Result<()> {
    if values.len() != shape.iter().product::<usize>() {
        return Err(Error::Shape {
            what: name.to_string(),
            expected: shape.to_vec(),
            actual: vec![values.len()],
        });
    }
    Ok(())
}

impl MoeWeights {
    /// Checks every tensor against the config; errors name the tensor.
    pub fn validate(&self, config: &MoeConfig) -> Result<()> {
        let (d, f, e) = (config.hidden_size, config.expert_ffn, config.num_experts());
        check("router weight", &self.router, &[e, d])?;
        if let Some(b) = &self.router_bias {
            check("router bias", b, &[e])?;
        }
        if let Some(b) = &self.expert_biases {
            check("experts gate_proj bias", &b.gate, &[e, f])?;
            check("experts up_proj bias", &b.up, &[e, f])?;
            check("experts down_proj bias", &b.down, &[e, d])?;
        }
        if let Some(b) = &self.selection_bias {
            check("expert selection bias", b, &[e])?;
        }
        check("experts gate_proj", &self.gate, &[e, f, d])?;
        check("experts up_proj", &self.up, &[e, f, d])?;
        check("experts down_proj", &self.down, &[e, d, f])?;
        match (&config.shared_expert, &self.shared) {
            (None, None) => {}
            (Some(cfg), Some(w)) => {
                check("shared expert gate_proj", &w.gate, &[cfg.ffn, d])?;
                check("shared expert up_proj", &w.up, &[cfg.ffn, d])?;
                check("shared expert down_proj", &w.down, &[d, cfg.ffn])?;
                match (&w.gate_weight, cfg.gated) {
                    (Some(g), true) => check("shared expert gate", g, &[1, d])?,
                    (None, false) => {}
                    (_, gated) => {
                        return Err(Error::Config(format!(
                            "shared expert gate weight {} but the config says gated = {gated}",
                            if gated { "missing" } else { "given" }
                        )))
                    }
                }
            }
            (Some(_), None) => {
                return Err(Error::Config(
                    "the config has a shared expert but no weights were given".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "shared expert weights given but the config has none".into(),
                ))
            }
        }
        Ok(())
    }
}

impl MoeWeights {
    /// Seeded random weights for `config` (uniform in ±0.3, router ±1, bias ±0.3,
    /// shared gate ±0.5), for tests, self-tests and benchmarks.
    pub fn random(config: &MoeConfig, seed: u64, with_bias: bool) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut random = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-s..s)).collect() };
        let (d, f, e) = (config.hidden_size, config.expert_ffn, config.num_experts());
        Self {
            router: random(e * d, 1.0),
            router_bias: None,
            expert_biases: None,
            selection_bias: if with_bias { Some(random(e, 0.3)) } else { None },
            gate: random(e * f * d, 0.3),
            up: random(e * f * d, 0.3),
            down: random(e * d * f, 0.3),
            shared: config.shared_expert.map(|s| SharedExpertWeights {
                gate: random(s.ffn * d, 0.3),
                up: random(s.ffn * d, 0.3),
                down: random(d * s.ffn, 0.3),
                gate_weight: if s.gated { Some(random(d, 0.5)) } else { None },
            }),
        }
    }

    /// Adds seeded random router and expert biases (gpt-oss style, ±0.5).
    pub fn with_random_biases(mut self, config: &MoeConfig, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-0.5..0.5)).collect() };
        let (d, f, e) = (config.hidden_size, config.expert_ffn, config.num_experts());
        self.router_bias = Some(random(e));
        self.expert_biases = Some(ExpertBiasWeights {
            gate: random(e * f),
            up: random(e * f),
            down: random(e * d),
        });
        self
    }
}

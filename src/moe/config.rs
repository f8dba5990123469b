//! Configuration of one MoE feed-forward layer.

use crate::error::{Error, Result};
use crate::ops::expert_matmul::Activation;
use crate::ops::routing::RoutingConfig;
use crate::weights::WeightFormat;

/// A dense SwiGLU expert every token goes through, besides the routed ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedExpertConfig {
    /// Intermediate size (DeepSeek: n_shared_experts * moe_intermediate_size).
    pub ffn: usize,
    /// Scale its output by sigmoid(x . w_gate) (Qwen2-MoE).
    pub gated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeConfig {
    pub hidden_size: usize,
    /// Intermediate size of each routed expert.
    pub expert_ffn: usize,
    pub routing: RoutingConfig,
    /// Switch/GShard capacity factor; `None` (the default) drops nothing.
    pub capacity_factor: Option<f32>,
    pub shared_expert: Option<SharedExpertConfig>,
    /// The routed experts' gated activation.
    pub activation: Activation,
    /// Storage type of expert (and router) weights on the GPU.
    pub weight_format: WeightFormat,
    /// Batches of at most this many tokens take the GEMV decode path.
    pub decode_max_tokens: usize,
}

impl MoeConfig {
    /// A config with softmax-then-top-k routing and defaults elsewhere.
    pub fn new(hidden_size: usize, expert_ffn: usize, num_experts: usize, top_k: usize) -> Self {
        Self {
            hidden_size,
            expert_ffn,
            routing: RoutingConfig::softmax_top_k(num_experts, top_k, false),
            capacity_factor: None,
            shared_expert: None,
            activation: Activation::Silu,
            weight_format: WeightFormat::F32,
            decode_max_tokens: 4,
        }
    }

    pub fn num_experts(&self) -> usize {
        self.routing.num_experts
    }

    pub fn top_k(&self) -> usize {
        self.routing.top_k
    }

    pub fn validate(&self) -> Result<()> {
        self.routing.validate()?;
        if self.hidden_size == 0 || self.expert_ffn == 0 {
            return Err(Error::Config(format!(
                "hidden_size ({}) and expert ffn size ({}) must be positive",
                self.hidden_size, self.expert_ffn
            )));
        }
        if let Some(s) = self.shared_expert {
            if s.ffn == 0 {
                return Err(Error::Config("shared expert ffn size must be positive".into()));
            }
        }
        if let Some(f) = self.capacity_factor {
            crate::ops::capacity::expert_capacity(1, 1, 1, f)?;
        }
        let shared_ffn = self.shared_expert.map_or(0, |s| s.ffn);
        for (what, n) in [
            ("hidden_size", self.hidden_size),
            ("expert ffn size", self.expert_ffn),
            ("shared expert ffn size", shared_ffn),
        ] {
            if !n.is_multiple_of(self.weight_format.block_elements()) {
                return Err(Error::Config(format!(
                    "{what} {n} is not a whole number of {} blocks of {}",
                    self.weight_format,
                    self.weight_format.block_elements()
                )));
            }
        }
        Ok(())
    }
}

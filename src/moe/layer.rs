//! `MoeLayer`: one MoE feed-forward layer on the GPU, recorded into one command
//! encoder: router logits -> top-k routing -> [capacity] -> permutation ->
//! expert gate/up (SwiGLU) -> expert down -> [shared expert] -> weighted combine.

use crate::error::{Error, Result};
use crate::gpu::kernel::Recorder;
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::moe::config::MoeConfig;
use crate::moe::weights::MoeWeights;
use crate::ops::capacity::{encode_capacity, expert_capacity};
use crate::ops::combine::{encode_combine, NextNorm, SharedTerm};
use crate::ops::expect_shape;
use crate::ops::expert_matmul::{
    encode_down, encode_down_with, encode_gate_up, encode_gate_up_with, Epilogue, ExpertRows,
};
use crate::ops::permute::{encode_expert_counts, expert_counts_reference, Permutation};
use crate::ops::router::{encode_router_logits, encode_router_logits_tiled};
use crate::ops::routing::{encode_routing, encode_routing_fused, Router};
use crate::weights::WeightMatrix;

/// A dense SwiGLU expert every token goes through, on the GPU.
pub struct SharedExpert {
    pub gate: WeightMatrix,
    pub up: WeightMatrix,
    pub down: WeightMatrix,
    /// `[1, d]` f32: the output is scaled by sigmoid(x . w) (Qwen2-MoE).
    pub gate_weight: Option<GpuTensor>,
}

/// Biases of the routed experts' outputs on the GPU (gpt-oss).
pub struct ExpertBiases {
    /// `[E, ffn]`
    pub gate: GpuTensor,
    /// `[E, ffn]`
    pub up: GpuTensor,
    /// `[E, d]`
    pub down: GpuTensor,
}

/// The weights of one MoE layer on the GPU, ready to run.
pub struct MoeLayer {
    pub config: MoeConfig,
    /// `[E, d]`
    pub router: GpuTensor,
    /// `[E]`: added to the router logits (gpt-oss).
    pub router_bias: Option<GpuTensor>,
    pub expert_biases: Option<ExpertBiases>,
    /// `[E]`
    pub selection_bias: Option<GpuTensor>,
    pub gate: WeightMatrix,
    pub up: WeightMatrix,
    pub down: WeightMatrix,
    pub shared: Option<SharedExpert>,
}

/// A residual stream `[T, d]` a layer adds its output into, times `scale`.
#[derive(Clone, Copy)]
pub struct Residual<'a> {
    pub stream: &'a GpuTensor,
    pub scale: f32,
}

/// The layer's output and the intermediate results worth inspecting.
pub struct MoeOutputs {
    /// `[T, d]`: the layer's output, or the residual stream it was added into.
    pub output: GpuTensor,
    /// `[T, E]`
    pub router_logits: GpuTensor,
    /// `[T, k]` experts chosen per token (before any capacity drop).
    pub topk_ids: GpuTensor,
    /// `[T, k]`
    pub topk_weights: GpuTensor,
    /// `[T, k]` experts actually used (SENTINEL where capacity dropped one).
    pub routed_ids: GpuTensor,
    /// `[E]` tokens routed to each expert (routing statistics).
    pub expert_counts: GpuTensor,
    /// `[E]` assignments dropped per expert, in capacity mode.
    pub dropped: Option<GpuTensor>,
}

/// [`MoeOutputs`] with the counts only where the permutation made them (see
/// `MoeLayer::encode_routed`).
struct Encoded {
    output: GpuTensor,
    router_logits: GpuTensor,
    topk_ids: GpuTensor,
    topk_weights: GpuTensor,
    routed_ids: GpuTensor,
    permutation_counts: Option<GpuTensor>,
    dropped: Option<GpuTensor>,
}

/// What a model's step keeps of a layer's routing for its statistics (tokens per
/// expert): the permutation's counts where the layer permuted its rows, else the
/// routed ids themselves, counted on the CPU after the step's readback
/// ([`RoutingRecord::counts`]), so a decode step needs no counting dispatch per layer
/// and reads back T * k words per layer instead of E.
pub enum RoutingRecord {
    /// `[E]` tokens routed to each expert.
    Counts(GpuTensor),
    /// `[T, k]` experts used (SENTINEL where capacity dropped one), of `experts`.
    Ids { ids: GpuTensor, experts: usize },
}

impl RoutingRecord {
    /// The tensor the step reads back.
    pub fn tensor(&self) -> &GpuTensor {
        match self {
            RoutingRecord::Counts(t) | RoutingRecord::Ids { ids: t, .. } => t,
        }
    }

    /// Tokens per expert from the tensor's words as read back.
    pub fn counts(&self, words: &[u32]) -> Vec<u32> {
        match self {
            RoutingRecord::Counts(_) => words.to_vec(),
            RoutingRecord::Ids { experts, .. } => expert_counts_reference(words, *experts),
        }
    }
}

impl MoeLayer {
    /// Validates `weights` against `config` and uploads them.
    pub fn new(ctx: &GpuContext, config: MoeConfig, weights: &MoeWeights) -> Result<Self> {
        config.validate()?;
        weights.validate(&config)?;
        let (d, f, e) = (config.hidden_size, config.expert_ffn, config.num_experts());
        let format = config.weight_format;
        let experts =
            |name: &str, values: &[f32], shape: [usize; 3]| WeightMatrix::from_f32(ctx, name, values, shape, format);
        let shared = match (&config.shared_expert, &weights.shared) {
            (Some(cfg), Some(w)) => Some(SharedExpert {
                gate: experts("shared_expert.gate_proj", &w.gate, [1, cfg.ffn, d])?,
                up: experts("shared_expert.up_proj", &w.up, [1, cfg.ffn, d])?,
                down: experts("shared_expert.down_proj", &w.down, [1, d, cfg.ffn])?,
                gate_weight: match &w.gate_weight {
                    Some(g) => Some(GpuTensor::from_f32(ctx, "shared_expert_gate", &[1, d], g, DType::F32)?),
                    None => None,
                },
            }),
            _ => None,
        };
        let vector =
            |name: &str, shape: &[usize], values: &[f32]| GpuTensor::from_f32(ctx, name, shape, values, DType::F32);
        Ok(Self {
            router: vector("router", &[e, d], &weights.router)?,
            router_bias: match &weights.router_bias {
                Some(b) => Some(vector("router bias", &[e], b)?),
                None => None,
            },
            expert_biases: match &weights.expert_biases {
                Some(b) => Some(ExpertBiases {
                    gate: vector("experts.gate_proj bias", &[e, f], &b.gate)?,
                    up: vector("experts.up_proj bias", &[e, f], &b.up)?,
                    down: vector("experts.down_proj bias", &[e, d], &b.down)?,
                }),
                None => None,
            },
            selection_bias: match &weights.selection_bias {
                Some(b) => Some(GpuTensor::from_f32(ctx, "selection bias", &[e], b, DType::F32)?),
                None => None,
            },
            gate: experts("experts.gate_proj", &weights.gate, [e, f, d])?,
            up: experts("experts.up_proj", &weights.up, [e, f, d])?,
            down: experts("experts.down_proj", &weights.down, [e, d, f])?,
            shared,
            config,
        })
    }

    /// Records the whole layer for `hidden [T, d]`, choosing the decode path (GEMV per
    /// assignment) for at most `decode_max_tokens` tokens. (The model applies
    /// `model::moe_gemv_by_size` instead, which on a CPU kernel target also takes the GEMV
    /// while experts get few rows; `encode_with` picks the path explicitly.)
    pub fn encode(&self, ctx: &GpuContext, rec: &mut Recorder, hidden: &GpuTensor) -> Result<MoeOutputs> {
        let tokens = hidden.shape.first().copied().unwrap_or(0);
        self.encode_with(ctx, rec, hidden, tokens <= self.config.decode_max_tokens)
    }

    /// Records the whole layer for `hidden [T, d]`, on the decode path (GEMV per
    /// assignment, no permutation) when `decode`, else permuted grouped matmuls.
    pub fn encode_with(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        hidden: &GpuTensor,
        decode: bool,
    ) -> Result<MoeOutputs> {
        self.encode_into(ctx, rec, hidden, decode, None)
    }

    /// [`Self::encode_with`], adding the output into `residual`'s stream (by the
    /// combine, no separate add) when given.
    pub fn encode_into(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        hidden: &GpuTensor,
        decode: bool,
        residual: Option<Residual>,
    ) -> Result<MoeOutputs> {
        let o = self.encode_routed(ctx, rec, hidden, decode, residual, None)?;
        let expert_counts = match o.permutation_counts {
            Some(counts) => counts,
            // Decode reads each assignment's expert directly (no permutation): count.
            None => {
                let counts = GpuTensor::empty(ctx, "expert counts", &[self.config.num_experts()], DType::U32)?;
                encode_expert_counts(ctx, rec, &o.routed_ids, &counts);
                counts
            }
        };
        Ok(MoeOutputs {
            output: o.output,
            router_logits: o.router_logits,
            topk_ids: o.topk_ids,
            topk_weights: o.topk_weights,
            routed_ids: o.routed_ids,
            expert_counts,
            dropped: o.dropped,
        })
    }

    /// [`Self::encode_into`] for a model's step: the routing statistics as a
    /// [`RoutingRecord`] (on the decode path the routed ids, no counting dispatch).
    /// With `next_norm`, the combine also writes the next layer's normed input.
    pub fn encode_step(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        hidden: &GpuTensor,
        decode: bool,
        residual: Residual,
        next_norm: Option<NextNorm>,
    ) -> Result<RoutingRecord> {
        let o = self.encode_routed(ctx, rec, hidden, decode, Some(residual), next_norm)?;
        Ok(match o.permutation_counts {
            Some(counts) => RoutingRecord::Counts(counts),
            None => RoutingRecord::Ids {
                ids: o.routed_ids,
                experts: self.config.num_experts(),
            },
        })
    }

    /// The layer, with the tokens per expert where the grouped path's permutation
    /// counted them.
    fn encode_routed(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        hidden: &GpuTensor,
        decode: bool,
        residual: Option<Residual>,
        next_norm: Option<NextNorm>,
    ) -> Result<Encoded> {
        let cfg = &self.config;
        let (d, e, k) = (cfg.hidden_size, cfg.num_experts(), cfg.top_k());
        let tokens = hidden.shape.first().copied().unwrap_or(0);
        if hidden.shape.len() != 2 || hidden.shape[1] != d || tokens == 0 || hidden.dtype != DType::F32 {
            return Err(Error::Shape {
                what: "MoE layer input (f32 [tokens > 0, hidden_size])".into(),
                expected: vec![tokens.max(1), d],
                actual: hidden.shape.clone(),
            });
        }
        let f32_tensor = |name: &str, shape: &[usize]| GpuTensor::empty(ctx, name, shape, DType::F32);

        let router_logits = f32_tensor("router logits", &[tokens, e])?;
        let topk_ids = GpuTensor::empty(ctx, "top-k ids", &[tokens, k], DType::U32)?;
        let topk_weights = f32_tensor("top-k weights", &[tokens, k])?;
        let router = Router {
            weight: &self.router,
            bias: self.router_bias.as_ref(),
        };
        let selection_bias = self.selection_bias.as_ref();
        if decode {
            // Decode's few tokens: logits and selection in one dispatch.
            encode_routing_fused(
                ctx,
                rec,
                &cfg.routing,
                hidden,
                router,
                selection_bias,
                &router_logits,
                &topk_ids,
                &topk_weights,
            )?;
        } else {
            encode_router_logits_tiled(ctx, rec, hidden, router, &router_logits)?;
            encode_routing(
                ctx,
                rec,
                &cfg.routing,
                &router_logits,
                selection_bias,
                &topk_ids,
                &topk_weights,
            )?;
        }

        let (routed_ids, dropped) = match cfg.capacity_factor {
            None => (topk_ids.clone(), None),
            Some(factor) => {
                let capacity = expert_capacity(tokens, k, e, factor)?;
                let routed = GpuTensor::empty(ctx, "routed ids", &[tokens, k], DType::U32)?;
                let dropped = GpuTensor::empty(ctx, "dropped per expert", &[e], DType::U32)?;
                encode_capacity(ctx, rec, &topk_ids, &topk_weights, capacity, &routed, &dropped)?;
                (routed, Some(dropped))
            }
        };

        // Decode reads each assignment's expert directly (GEMV): no permutation.
        let (permutation, permutation_counts) = if decode {
            (None, None)
        } else {
            let permutation = Permutation::new(ctx, tokens * k, e)?;
            permutation.encode(ctx, rec, &routed_ids);
            let counts = permutation.expert_counts.clone();
            (Some(permutation), Some(counts))
        };
        let rows = match &permutation {
            None => ExpertRows::PerAssignment {
                routed_ids: &routed_ids,
                top_k: k,
            },
            Some(permutation) => ExpertRows::Permuted { permutation, top_k: k },
        };
        let h = f32_tensor("expert intermediate", &[rows.output_rows(), cfg.expert_ffn])?;
        let y = f32_tensor("expert outputs", &[rows.output_rows(), d])?;
        let epilogue = Epilogue {
            biases: self.expert_biases.as_ref().map(|b| [&b.gate, &b.up]),
            activation: cfg.activation,
            ..Epilogue::default()
        };
        encode_gate_up_with(ctx, rec, rows, hidden, &self.gate, &self.up, &h, epilogue)?;
        let down_bias = self.expert_biases.as_ref().map(|b| &b.down);
        encode_down_with(ctx, rec, rows, &h, &self.down, &y, down_bias)?;

        let shared_out = match &self.shared {
            None => None,
            Some(s) => {
                let rows = ExpertRows::Dense { tokens, gemv: decode };
                let hs = f32_tensor("shared expert intermediate", &[tokens, s.gate.out_dim])?;
                let ys = f32_tensor("shared expert output", &[tokens, d])?;
                encode_gate_up(ctx, rec, rows, hidden, &s.gate, &s.up, &hs)?;
                encode_down(ctx, rec, rows, &hs, &s.down, &ys)?;
                let gate_logits = match &s.gate_weight {
                    None => None,
                    Some(w) => {
                        let logits = f32_tensor("shared expert gate logits", &[tokens, 1])?;
                        encode_router_logits(ctx, rec, hidden, Router { weight: w, bias: None }, &logits)?;
                        Some(logits)
                    }
                };
                Some((ys, gate_logits))
            }
        };

        let output = match residual {
            Some(r) => {
                expect_shape("residual stream", r.stream, &[tokens, d])?;
                r.stream.clone()
            }
            None => f32_tensor("MoE output", &[tokens, d])?,
        };
        encode_combine(
            ctx,
            rec,
            &routed_ids,
            permutation.as_ref().map(|p| &p.assignment_row),
            &topk_weights,
            &y,
            shared_out.as_ref().map(|(ys, g)| SharedTerm {
                output: ys,
                gate_logits: g.as_ref(),
            }),
            &output,
            residual.map(|r| r.scale),
            next_norm,
        )?;
        Ok(Encoded {
            output,
            router_logits,
            topk_ids,
            topk_weights,
            routed_ids,
            permutation_counts,
            dropped,
        })
    }

    /// Runs the layer on `hidden [T, d]`: one command encoder, one submit.
    pub async fn forward(&self, ctx: &GpuContext, hidden: &GpuTensor) -> Result<MoeOutputs> {
        ctx.scoped("MoE layer forward", || {
            let mut rec = Recorder::new();
            let outputs = self.encode(ctx, &mut rec, hidden)?;
            rec.submit(ctx);
            Ok(outputs)
        })
        .await
    }

    /// Blocking form of [`MoeLayer::forward`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(&self, ctx: &GpuContext, hidden: &GpuTensor) -> Result<MoeOutputs> {
        pollster::block_on(self.forward(ctx, hidden))
    }
}

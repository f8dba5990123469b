//! The generic MoE decoder on the GPU. Every supported family (Mixtral, Qwen2-MoE,
//! Qwen3-MoE, OLMoE, GraniteMoE) is a configuration of this one model:
//!
//! ```text
//! x = embed(ids) * embedding_multiplier
//! per layer:
//!   h = rms_norm(x)
//!   q, k, v = h W_q (+b), h W_k (+b), h W_v (+b)       [q/k norm per head or whole, clip]
//!   q, k = rope(q), rope(k); store k, v in the KV cache
//!   x += residual_multiplier * attention(q, cache) W_o
//!   x += residual_multiplier * ffn(rms_norm(x))         [MoE layer or dense SwiGLU]
//! logits = rms_norm(x) W_lm / logits_scaling            [W_lm tied to embed or not]
//! ```
//!
//! A forward records everything into one command encoder; the only readback is
//! what the caller asks for (the sampled token, or logits).

use crate::error::{Error, Result};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::model::config::{ModelConfig, QkNorm};
use crate::model::weights::{FeedForwardWeights, LayerWeights, ModelWeights};
use crate::moe::MoeLayer;
use crate::ops::attention::{encode_attention, KvCache};
use crate::ops::elementwise::{encode_add_row_bias, encode_add_scaled, encode_scale_clamp};
use crate::ops::embedding::{encode_argmax, encode_embedding};
use crate::ops::expert_matmul::{encode_down, encode_gate_up, ExpertRows, ExpertWeights};
use crate::ops::norm::encode_rms_norm;
use crate::ops::rope::{encode_rope, upload_rope_table};

/// Batches of at most this many tokens use the GEMV kernels for dense projections.
const GEMV_MAX_TOKENS: usize = 4;

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// The last position only: `[1, vocab]` (generation).
    Last,
    /// Every position: `[T, vocab]` (perplexity).
    All,
}

struct Attention {
    q: ExpertWeights,
    k: ExpertWeights,
    v: ExpertWeights,
    o: ExpertWeights,
    biases: Option<[GpuTensor; 3]>,
    qk_norm: Option<(GpuTensor, GpuTensor)>,
}

struct DenseMlp {
    gate: ExpertWeights,
    up: ExpertWeights,
    down: ExpertWeights,
}

enum FeedForward {
    Moe(Box<MoeLayer>),
    Dense(Box<DenseMlp>),
}

struct Layer {
    input_norm: GpuTensor,
    attention: Attention,
    post_attention_norm: GpuTensor,
    ffn: FeedForward,
}

/// A loaded model with its KV cache.
pub struct Transformer {
    pub config: ModelConfig,
    /// Positions the KV cache holds.
    pub max_context: usize,
    embed: ExpertWeights,
    lm_head: Option<ExpertWeights>,
    layers: Vec<Layer>,
    final_norm: GpuTensor,
    rope: GpuTensor,
    caches: Vec<KvCache>,
}

/// Uploads one `[out, in]` matrix as a single-"expert" weight.
fn matrix(
    ctx: &GpuContext,
    name: &str,
    values: &[f32],
    out: usize,
    input: usize,
    dtype: DType,
) -> Result<ExpertWeights> {
    ExpertWeights::upload(ctx, name, values, [1, out, input], dtype)
}

fn vector(ctx: &GpuContext, name: &str, values: &[f32]) -> Result<GpuTensor> {
    GpuTensor::from_f32(ctx, name, &[values.len()], values, DType::F32)
}

impl Transformer {
    /// Uploads `weights` and allocates a KV cache of `max_context` positions
    /// (at most `max_position_embeddings`).
    pub fn new(ctx: &GpuContext, config: ModelConfig, weights: &ModelWeights, max_context: usize) -> Result<Self> {
        let c = &config;
        if max_context == 0 || max_context > c.max_position_embeddings {
            return Err(Error::Config(format!(
                "context of {max_context} positions must be between 1 and max_position_embeddings = {}",
                c.max_position_embeddings
            )));
        }
        let dtype = c.moe.weight_dtype;
        let embed = matrix(
            ctx,
            "model.embed_tokens.weight",
            &weights.embed_tokens,
            c.vocab_size,
            c.hidden_size,
            dtype,
        )?;
        let lm_head = match &weights.lm_head {
            Some(w) => Some(matrix(ctx, "lm_head.weight", w, c.vocab_size, c.hidden_size, dtype)?),
            None => None,
        };
        let layers = weights
            .layers
            .iter()
            .enumerate()
            .map(|(i, w)| Self::upload_layer(ctx, c, i, w))
            .collect::<Result<Vec<_>>>()?;
        let caches = (0..c.num_layers)
            .map(|_| KvCache::new(ctx, c.num_kv_heads, c.head_dim, max_context))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            final_norm: vector(ctx, "model.norm.weight", &weights.final_norm)?,
            rope: upload_rope_table(ctx, c.rope_theta, c.rotary_dim, max_context)?,
            embed,
            lm_head,
            layers,
            caches,
            max_context,
            config,
        })
    }

    fn upload_layer(ctx: &GpuContext, c: &ModelConfig, i: usize, w: &LayerWeights) -> Result<Layer> {
        let dtype = c.moe.weight_dtype;
        let name = |s: &str| format!("model.layers.{i}.{s}");
        let (d, q_width, kv_width) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let a = &w.attention;
        let biases = match (&a.q_bias, &a.k_bias, &a.v_bias) {
            (Some(q), Some(k), Some(v)) => Some([
                vector(ctx, &name("self_attn.q_proj.bias"), q)?,
                vector(ctx, &name("self_attn.k_proj.bias"), k)?,
                vector(ctx, &name("self_attn.v_proj.bias"), v)?,
            ]),
            _ => None,
        };
        let qk_norm = match (&a.q_norm, &a.k_norm) {
            (Some(q), Some(k)) => Some((
                vector(ctx, &name("self_attn.q_norm.weight"), q)?,
                vector(ctx, &name("self_attn.k_norm.weight"), k)?,
            )),
            _ => None,
        };
        let ffn = match &w.ffn {
            FeedForwardWeights::Moe(moe) => FeedForward::Moe(Box::new(MoeLayer::new(ctx, c.moe, moe)?)),
            FeedForwardWeights::Dense { gate, up, down } => {
                let f = c.dense_ffn;
                FeedForward::Dense(Box::new(DenseMlp {
                    gate: matrix(ctx, &name("mlp.gate_proj.weight"), gate, f, d, dtype)?,
                    up: matrix(ctx, &name("mlp.up_proj.weight"), up, f, d, dtype)?,
                    down: matrix(ctx, &name("mlp.down_proj.weight"), down, d, f, dtype)?,
                }))
            }
        };
        Ok(Layer {
            input_norm: vector(ctx, &name("input_layernorm.weight"), &w.input_norm)?,
            attention: Attention {
                q: matrix(ctx, &name("self_attn.q_proj.weight"), &a.q, q_width, d, dtype)?,
                k: matrix(ctx, &name("self_attn.k_proj.weight"), &a.k, kv_width, d, dtype)?,
                v: matrix(ctx, &name("self_attn.v_proj.weight"), &a.v, kv_width, d, dtype)?,
                o: matrix(ctx, &name("self_attn.o_proj.weight"), &a.o, d, q_width, dtype)?,
                biases,
                qk_norm,
            },
            post_attention_norm: vector(ctx, &name("post_attention_layernorm.weight"), &w.post_attention_norm)?,
            ffn,
        })
    }

    /// Checks token ids and positions before anything is recorded.
    fn check_input(&self, ids: &[u32], pos0: usize) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::Config("no tokens to run".into()));
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(Error::Config(format!(
                "token id {bad} is not below vocab_size = {}",
                self.config.vocab_size
            )));
        }
        if pos0 + ids.len() > self.max_context {
            return Err(Error::Config(format!(
                "{} tokens at position {pos0} pass the context of {} positions (max_position_embeddings = {})",
                ids.len(),
                self.max_context,
                self.config.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// Records the forward of `ids` at positions `pos0..`.
    pub fn encode_forward(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        ids: &[u32],
        pos0: usize,
        logits_for: LogitsFor,
    ) -> Result<ForwardOutputs> {
        self.check_input(ids, pos0)?;
        let c = &self.config;
        let (t, d) = (ids.len(), c.hidden_size);
        let ids_gpu = GpuTensor::from_u32(ctx, "token ids", &[t], ids)?;
        let x = GpuTensor::empty(ctx, "hidden", &[t, d], DType::F32)?;
        encode_embedding(
            ctx,
            encoder,
            &ids_gpu,
            &self.embed.chunks[0].tensor,
            c.embedding_multiplier,
            &x,
        );
        let experts = c.moe.num_experts();
        let moe_layers = c.sparse_layers.iter().filter(|s| **s).count();
        let routing_counts = GpuTensor::empty(ctx, "routing counts", &[moe_layers, experts], DType::U32)?;
        let mut moe_index = 0;
        for (layer, cache) in self.layers.iter().zip(&self.caches) {
            let h = norm(ctx, encoder, &x, &layer.input_norm, c.rms_norm_eps)?;
            let attn = self.encode_attention(ctx, encoder, layer, cache, &h, pos0)?;
            encode_add_scaled(ctx, encoder, &x, &attn, c.residual_multiplier);
            let h = norm(ctx, encoder, &x, &layer.post_attention_norm, c.rms_norm_eps)?;
            let f = match &layer.ffn {
                FeedForward::Moe(moe) => {
                    let out = moe.encode(ctx, encoder, &h)?;
                    let row_bytes = (experts * 4) as u64;
                    encoder.copy_buffer_to_buffer(
                        &out.expert_counts.buffer,
                        0,
                        &routing_counts.buffer,
                        moe_index * row_bytes,
                        row_bytes,
                    );
                    moe_index += 1;
                    out.output
                }
                FeedForward::Dense(mlp) => {
                    let mid = GpuTensor::empty(ctx, "dense mlp intermediate", &[t, mlp.gate.out_dim], DType::F32)?;
                    encode_gate_up(ctx, encoder, dense_rows(t), &h, &mlp.gate, &mlp.up, &mid)?;
                    linear(ctx, encoder, &mid, &mlp.down)?
                }
            };
            encode_add_scaled(ctx, encoder, &x, &f, c.residual_multiplier);
        }
        let rows = match logits_for {
            LogitsFor::All => x,
            LogitsFor::Last => {
                let last = GpuTensor::empty(ctx, "last hidden", &[1, d], DType::F32)?;
                encoder.copy_buffer_to_buffer(&x.buffer, ((t - 1) * d * 4) as u64, &last.buffer, 0, (d * 4) as u64);
                last
            }
        };
        let h = norm(ctx, encoder, &rows, &self.final_norm, c.rms_norm_eps)?;
        let logits = linear(ctx, encoder, &h, self.lm_head.as_ref().unwrap_or(&self.embed))?;
        if c.logits_scaling != 1.0 {
            encode_scale_clamp(ctx, encoder, &logits, 1.0 / c.logits_scaling, f32::MAX);
        }
        Ok(ForwardOutputs { logits, routing_counts })
    }

    fn encode_attention(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        layer: &Layer,
        cache: &KvCache,
        h: &GpuTensor,
        pos0: usize,
    ) -> Result<GpuTensor> {
        let c = &self.config;
        let a = &layer.attention;
        let (mut q, mut k, v) = (
            linear(ctx, encoder, h, &a.q)?,
            linear(ctx, encoder, h, &a.k)?,
            linear(ctx, encoder, h, &a.v)?,
        );
        if let Some([qb, kb, vb]) = &a.biases {
            encode_add_row_bias(ctx, encoder, &q, qb);
            encode_add_row_bias(ctx, encoder, &k, kb);
            encode_add_row_bias(ctx, encoder, &v, vb);
        }
        if let Some((qn, kn)) = &a.qk_norm {
            // PerHead norms have head_dim weights, Full norms the projection width:
            // the kernel normalises rows of the weight's length either way.
            debug_assert!(c.qk_norm != QkNorm::None);
            q = norm(ctx, encoder, &q, qn, c.rms_norm_eps)?;
            k = norm(ctx, encoder, &k, kn, c.rms_norm_eps)?;
        }
        if let Some(limit) = c.clip_qkv {
            for x in [&q, &k, &v] {
                encode_scale_clamp(ctx, encoder, x, 1.0, limit);
            }
        }
        encode_rope(ctx, encoder, &q, &self.rope, c.num_heads, c.head_dim, pos0);
        encode_rope(ctx, encoder, &k, &self.rope, c.num_kv_heads, c.head_dim, pos0);
        let out = GpuTensor::empty(ctx, "attention output", &q.shape, DType::F32)?;
        encode_attention(
            ctx,
            encoder,
            cache,
            &q,
            &k,
            &v,
            c.num_heads,
            pos0,
            c.attention_scale,
            &out,
        )?;
        linear(ctx, encoder, &out, &a.o)
    }

    /// Runs `ids` at `pos0` in one submit and reads back, in one readback, what `read`
    /// asks for plus the routing counts.
    pub async fn step(&self, ctx: &GpuContext, ids: &[u32], pos0: usize, read: Readback) -> Result<StepOutput> {
        let (pack, logits_len) = ctx
            .scoped("model forward", || {
                let mut encoder = ctx.device.create_command_encoder(&Default::default());
                let logits_for = match read {
                    Readback::AllLogits => LogitsFor::All,
                    _ => LogitsFor::Last,
                };
                let out = self.encode_forward(ctx, &mut encoder, ids, pos0, logits_for)?;
                let head = match read {
                    Readback::Argmax => {
                        let token = GpuTensor::empty(ctx, "sampled token", &[1], DType::U32)?;
                        encode_argmax(ctx, &mut encoder, &out.logits, &token);
                        token
                    }
                    _ => out.logits,
                };
                let head_len = head.len();
                let pack = GpuTensor::empty(ctx, "step readback", &[head_len + out.routing_counts.len()], DType::U32)?;
                encoder.copy_buffer_to_buffer(&head.buffer, 0, &pack.buffer, 0, (head_len * 4) as u64);
                if !out.routing_counts.is_empty() {
                    let bytes = (out.routing_counts.len() * 4) as u64;
                    encoder.copy_buffer_to_buffer(
                        &out.routing_counts.buffer,
                        0,
                        &pack.buffer,
                        (head_len * 4) as u64,
                        bytes,
                    );
                }
                ctx.queue.submit([encoder.finish()]);
                Ok((pack, head_len))
            })
            .await?;
        let words = pack.read_u32(ctx).await?;
        let (head, counts) = words.split_at(logits_len);
        Ok(match read {
            Readback::Argmax => StepOutput {
                token: Some(head[0]),
                logits: Vec::new(),
                routing_counts: counts.to_vec(),
            },
            _ => StepOutput {
                token: None,
                logits: head.iter().map(|w| f32::from_bits(*w)).collect(),
                routing_counts: counts.to_vec(),
            },
        })
    }

    /// Runs `ids` at `pos0` (one submit) and reads back the requested logits.
    pub async fn logits(&self, ctx: &GpuContext, ids: &[u32], pos0: usize, logits_for: LogitsFor) -> Result<Vec<f32>> {
        let read = match logits_for {
            LogitsFor::All => Readback::AllLogits,
            LogitsFor::Last => Readback::LastLogits,
        };
        Ok(self.step(ctx, ids, pos0, read).await?.logits)
    }

    /// Runs `ids` at `pos0` (one submit) and returns the argmax token.
    pub async fn next_greedy(&self, ctx: &GpuContext, ids: &[u32], pos0: usize) -> Result<u32> {
        let out = self.step(ctx, ids, pos0, Readback::Argmax).await?;
        Ok(out.token.unwrap_or(0))
    }
}

/// What a recorded forward leaves on the GPU.
pub struct ForwardOutputs {
    /// `[1 or T, vocab]`
    pub logits: GpuTensor,
    /// `[MoE layers, experts]`: assignments routed to each expert in this forward.
    pub routing_counts: GpuTensor,
}

/// What a step reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readback {
    /// Only the greedy token (argmax on the GPU).
    Argmax,
    LastLogits,
    AllLogits,
}

/// A step's readback.
#[derive(Clone, Debug)]
pub struct StepOutput {
    pub token: Option<u32>,
    /// Empty for `Readback::Argmax`.
    pub logits: Vec<f32>,
    /// `[MoE layers * experts]`, row-major.
    pub routing_counts: Vec<u32>,
}

fn dense_rows(tokens: usize) -> ExpertRows<'static> {
    ExpertRows::Dense {
        tokens,
        gemv: tokens <= GEMV_MAX_TOKENS,
    }
}

/// `x [T, in] W^T -> [T, out]` for a single-matrix weight.
fn linear(ctx: &GpuContext, encoder: &mut wgpu::CommandEncoder, x: &GpuTensor, w: &ExpertWeights) -> Result<GpuTensor> {
    let t = x.shape[0];
    let y = GpuTensor::empty(ctx, &format!("{} output", w.name), &[t, w.out_dim], DType::F32)?;
    encode_down(ctx, encoder, dense_rows(t), x, w, &y)?;
    Ok(y)
}

fn norm(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    x: &GpuTensor,
    w: &GpuTensor,
    eps: f32,
) -> Result<GpuTensor> {
    let y = GpuTensor::empty(ctx, "normed", &x.shape, DType::F32)?;
    encode_rms_norm(ctx, encoder, x, w, eps, &y)?;
    Ok(y)
}

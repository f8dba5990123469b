//! The generic MoE decoder's weights on the GPU: an immutable [`Model`] (shared by any
//! number of [`crate::model::session::Session`]s), planned from a checkpoint's headers
//! and filled by streaming its bytes ([`crate::model::load`]), and the recording of
//! one forward pass. Every supported family (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
//! GraniteMoE, gpt-oss, DeepSeek-V2/V3) is a configuration of this one model:
//!
//! ```text
//! x = embed(ids) * embedding_multiplier
//! per layer:
//!   h = rms_norm(x)
//!   x += residual_multiplier * attention(h)   [GQA or MLA, owning its KV cache layout:
//!                                              crate::model::attention]
//!   x += residual_multiplier * ffn(rms_norm(x))         [MoE layer or dense SwiGLU]
//! logits = rms_norm(x) W_lm / logits_scaling            [W_lm tied to embed or not]
//! ```
//!
//! Family specifics beyond these switches (config mapping, tensor names) live in
//! [`crate::model::families`].

use crate::error::{Error, Result};
use crate::gpu::kernel::Recorder;
use crate::gpu::{DType, GpuContext, GpuTensor, KernelTarget};
use crate::model::attention::{AttentionInputs, LayerAttention};
use crate::model::config::{Family, ModelConfig};
use crate::model::families::{self, gpt_oss};
use crate::model::names::{self, ExpertTensors};
use crate::model::planner::{Planner, Role};
use crate::model::safetensors_io::Checkpoint;
use crate::moe::layer::{ExpertBiases, RoutingRecord, SharedExpert};
use crate::moe::{MoeConfig, MoeLayer, Residual};
use crate::ops::attention::{attention_workgroups, decode_splits, KvCache};
use crate::ops::combine::NextNorm;
use crate::ops::elementwise::{encode_gather_rows, encode_scale_clamp};
use crate::ops::embedding::encode_embedding;
use crate::ops::expect_shape;
use crate::ops::expert_matmul::{encode_down_epilogue, encode_gate_up, Epilogue, ExpertRows};
use crate::ops::norm::encode_rms_norm;
use crate::ops::permute::average_rows;
use crate::ops::rope::{upload_rope_table, DynamicNtk, RopeAngles, RopeScaling};
use crate::ops::TokenPositions;
use crate::weights::{Placement, WeightFormat, WeightMatrix};

/// Batches of at most this many tokens use the GEMV kernels for dense projections on
/// a GPU kernel target.
const GEMV_MAX_TOKENS: usize = 4;

/// On a CPU kernel target the serial GEMV has no padding rows, which a tile pays for;
/// the tiles (barrier-free there, 4 x 4 outputs per invocation read straight from the
/// buffers) win once a batch has this many tokens for dense projections, and once the
/// experts average this many rows for MoE layers. GEMV against tiles, ms, lavapipe /
/// SwiftShader (2026-12-03): dense Mixtral / 16 at 4 tokens 4.4 / 2.3 and 7.4 / 7.6,
/// OLMoE / 16 0.48 / 0.48 and 1.27 / 2.09, at 8 tokens Mixtral 4.8 / 2.6 and 14.6 /
/// 12.4; MoE layers at 1 row per expert OLMoE 1.5 / 2.7, Qwen3 4.7 / 5.3, at 2 rows
/// Mixtral 7.2 / 6.6 and 26.8 / 17.0, OLMoE 4.7 / 3.2 and 11.2 / 9.9, Qwen3 7.4 / 6.8
/// and 21.9 / 17.0.
const CPU_DENSE_TILE_TOKENS: usize = 8;
const CPU_EXPERT_TILE_ROWS: usize = 2;

/// `Kernels::BySize`'s choice for a step of `tokens` through the dense projections: the
/// GEMV up to `GEMV_MAX_TOKENS` on the GPU target; on the CPU target below
/// `CPU_DENSE_TILE_TOKENS`. `webmoe bench` times the same.
pub fn dense_gemv_by_size(ctx: &GpuContext, tokens: usize) -> bool {
    match ctx.kernel_target {
        KernelTarget::Gpu => tokens <= GEMV_MAX_TOKENS,
        KernelTarget::Cpu => tokens < CPU_DENSE_TILE_TOKENS,
    }
}

/// `Kernels::BySize`'s choice for a step of `tokens` through an MoE layer: the GEMV up
/// to the config's `decode_max_tokens` on the GPU target; on the CPU target while the
/// experts average fewer than `CPU_EXPERT_TILE_ROWS` rows.
pub fn moe_gemv_by_size(ctx: &GpuContext, tokens: usize, config: &MoeConfig) -> bool {
    if tokens <= config.decode_max_tokens {
        return true;
    }
    let routing = &config.routing;
    let rows = average_rows(tokens * routing.top_k, routing.num_experts);
    match ctx.kernel_target {
        KernelTarget::Gpu => false,
        KernelTarget::Cpu => rows < CPU_EXPERT_TILE_ROWS,
    }
}

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogitsFor {
    /// The last position only: `[1, vocab]` (generation).
    Last,
    /// Every position: `[T, vocab]` (perplexity).
    All,
}

/// The rows of a recorded forward that get logits.
#[derive(Clone, Copy)]
pub enum LogitRows<'a> {
    Last,
    All,
    /// The rows a `[R]` u32 tensor lists (written before each submit): `[R, vocab]`,
    /// e.g. the last token of each sequence of a batched step.
    Listed(&'a GpuTensor),
}

impl From<LogitsFor> for LogitRows<'_> {
    fn from(which: LogitsFor) -> Self {
        match which {
            LogitsFor::Last => LogitRows::Last,
            LogitsFor::All => LogitRows::All,
        }
    }
}

/// Which matmul kernels a recorded forward uses.
///
/// GEMV (one workgroup per token and group of outputs, a strided split of the inner
/// dimension and a tree reduction) and the tiled matmul (the inner dimension summed in
/// index order) round differently, so a token's logits depend on which one ran. Each
/// token's result never depends on the other tokens of its step: a server that always
/// runs decode steps as `Gemv` and prompt chunks as `Tiled` gives every request the
/// same tokens whatever it is batched with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernels {
    /// GEMV for steps of a few tokens, tiles above (the fastest for one sequence; on a
    /// CPU kernel target the GEMV for more tokens, see `dense_gemv_by_size` and
    /// `moe_gemv_by_size`). A prompt's consecutive tokens also share
    /// attention workgroups (`AttentionOptions::share_tokens`), which `Gemv` and `Tiled`
    /// leave off so that a token's result never depends on its step.
    BySize,
    Gemv,
    Tiled,
}

impl Kernels {
    /// Whether to take the GEMV, given what `BySize` would pick.
    fn gemv(self, by_size: bool) -> bool {
        match self {
            Kernels::BySize => by_size,
            Kernels::Gemv => true,
            Kernels::Tiled => false,
        }
    }
}

struct DenseMlp {
    gate: WeightMatrix,
    up: WeightMatrix,
    down: WeightMatrix,
}

enum FeedForward {
    Moe(Box<MoeLayer>),
    Dense(Box<DenseMlp>),
}

struct Layer {
    input_norm: GpuTensor,
    attention: LayerAttention,
    post_attention_norm: GpuTensor,
    ffn: FeedForward,
}

/// How a model rotates queries and keys.
enum ModelRope {
    Table(GpuTensor),
    DynamicNtk(DynamicNtk),
}

/// A loaded model: weights on the GPU and the RoPE table. Immutable once loaded;
/// per-sequence state lives in sessions.
pub struct Model {
    pub config: ModelConfig,
    /// Positions the RoPE table covers: the longest context a session may have.
    pub max_context: usize,
    /// Element type of the KV caches sessions get: f32 or f16.
    pub kv_cache: DType,
    embed: WeightMatrix,
    lm_head: Option<WeightMatrix>,
    layers: Vec<Layer>,
    final_norm: GpuTensor,
    /// RoPE's (cos, sin) table over `max_context` positions, or, for dynamic NTK,
    /// how each step computes its own rows.
    rope: ModelRope,
}

/// What a recorded forward leaves on the GPU.
pub struct ForwardOutputs {
    /// `[1 or T, vocab]`
    pub logits: GpuTensor,
    /// Per MoE layer, what counts the assignments routed to each expert in this
    /// forward (the counts, or the routed ids to count after the readback).
    pub routing: Vec<RoutingRecord>,
}

/// How the caller wants weights stored on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageFormats {
    /// Element format for every matrix (`--dtype`); else each tensor's own.
    pub convert: Option<WeightFormat>,
    /// Block format for the projections — attention, dense MLPs, experts
    /// (`--quantize`: Q8_0, Q4_0 or MXFP4); lm_head then becomes Q8_0, embeddings keep `convert` or their own
    /// format (a lookup reads one row per token), routers, norms and biases stay f32.
    pub quantize: Option<WeightFormat>,
}

impl Planner<'_> {
    fn layer(&mut self, c: &ModelConfig, i: usize) -> Result<Layer> {
        let p = names::layer(i);
        let name = |s: &str| format!("{p}.{s}");
        let d = c.hidden_size;
        let attention = LayerAttention::plan(self, c, i)?;
        let ffn = if c.sparse_layers[i] {
            FeedForward::Moe(Box::new(self.moe(c, i)?))
        } else {
            let f = c.dense_ffn;
            FeedForward::Dense(Box::new(DenseMlp {
                gate: self.matrix(&name("mlp.gate_proj.weight"), f, d)?,
                up: self.matrix(&name("mlp.up_proj.weight"), f, d)?,
                down: self.matrix(&name("mlp.down_proj.weight"), d, f)?,
            }))
        };
        Ok(Layer {
            input_norm: self.vector(&name("input_layernorm.weight"), &[d])?,
            attention,
            post_attention_norm: self.vector(&name("post_attention_layernorm.weight"), &[d])?,
            ffn,
        })
    }

    fn moe(&mut self, c: &ModelConfig, i: usize) -> Result<MoeLayer> {
        let (d, f, e) = (c.hidden_size, c.moe.expert_ffn, c.moe.num_experts());
        let n = names::moe(c.family, i, c.per_expert_names);
        let label = |kind: &str| format!("{}.experts.{kind}", names::layer(i));
        let (gate, up, down) = match &n.experts {
            ExpertTensors::PerExpert { prefix, gate, up, down } => {
                let mut kind = |suffix: &str, out: usize, input: usize| {
                    self.stacked(Role::Projection, &label(suffix), e, out, input, &|x| {
                        (ExpertTensors::expert(prefix, x, suffix), vec![out, input], 0)
                    })
                };
                (kind(gate, f, d)?, kind(up, f, d)?, kind(down, d, f)?)
            }
            ExpertTensors::Fused { input, output } => {
                let fused = |x: usize, first: usize| (input.clone(), vec![e, 2 * f, d], x * 2 * f + first);
                (
                    self.stacked(Role::Projection, &label("gate"), e, f, d, &|x| fused(x, 0))?,
                    self.stacked(Role::Projection, &label("up"), e, f, d, &|x| fused(x, f))?,
                    self.stacked(Role::Projection, &label("down"), e, d, f, &|x| {
                        (output.clone(), vec![e, d, f], x * d)
                    })?,
                )
            }
            ExpertTensors::GptOss(g) if c.experts_mxfp4 => (
                self.hf_mxfp4(&label("gate"), &g.gate_up, e, f, d, 2 * f, (0, 2))?,
                self.hf_mxfp4(&label("up"), &g.gate_up, e, f, d, 2 * f, (1, 2))?,
                self.hf_mxfp4(&label("down"), &g.down, e, d, f, d, (0, 1))?,
            ),
            ExpertTensors::GptOss(g) => (
                self.columns(&label("gate"), &g.gate_up, e, f, d, 2 * f, (0, 2))?,
                self.columns(&label("up"), &g.gate_up, e, f, d, 2 * f, (1, 2))?,
                self.columns(&label("down"), &g.down, e, d, f, d, (0, 1))?,
            ),
        };
        let (router_bias, expert_biases) = if c.family == Family::GptOss {
            let g = gpt_oss::expert_names(&names::layer(i));
            let (gate, up) = if c.per_expert_names {
                let (gate, up) = gpt_oss::split_bias_names(&names::layer(i));
                (self.vector(&gate, &[e, f])?, self.vector(&up, &[e, f])?)
            } else {
                (
                    self.vector_columns(&g.gate_up_bias, e, 2 * f, (0, 2), f)?,
                    self.vector_columns(&g.gate_up_bias, e, 2 * f, (1, 2), f)?,
                )
            };
            let down = self.vector(&g.down_bias, &[e, d])?;
            (
                Some(self.vector(&g.router_bias, &[e])?),
                Some(ExpertBiases { gate, up, down }),
            )
        } else {
            (None, None)
        };
        let shared = match c.moe.shared_expert {
            None => None,
            Some(s) => Some(SharedExpert {
                gate: self.matrix(&n.shared_gate, s.ffn, d)?,
                up: self.matrix(&n.shared_up, s.ffn, d)?,
                down: self.matrix(&n.shared_down, d, s.ffn)?,
                gate_weight: if s.gated {
                    Some(self.vector(&n.shared_expert_gate, &[1, d])?)
                } else {
                    None
                },
            }),
        };
        let mut config = c.moe;
        config.weight_format = gate.format;
        Ok(MoeLayer {
            config,
            router: self.vector(&n.router, &[e, d])?,
            router_bias,
            expert_biases,
            selection_bias: match families::selection_bias(c, &names::layer(i)) {
                Some((name, shape)) => Some(self.vector(&name, &shape)?.reshaped(&[e])),
                None => None,
            },
            gate,
            up,
            down,
            shared,
        })
    }
}

impl Model {
    /// Allocates every buffer of `config`'s model, checking each tensor of
    /// `checkpoint` (shape, dtype), and returns the model (contents not yet written)
    /// with the placements that fill it, stored as `formats` asks.
    pub fn plan(
        ctx: &GpuContext,
        mut config: ModelConfig,
        checkpoint: &Checkpoint,
        formats: StorageFormats,
        max_context: usize,
    ) -> Result<(Self, Vec<Placement>)> {
        if max_context == 0 || max_context > config.context_limit() {
            return Err(Error::Config(format!(
                "context of {max_context} positions must be between 1 and {} (max_position_embeddings = {}{})",
                config.context_limit(),
                config.max_position_embeddings,
                match config.rope_scaling {
                    RopeScaling::DynamicNtk { factor, .. } => format!(" times the dynamic NTK factor {factor}"),
                    _ => String::new(),
                }
            )));
        }
        let mut planner = Planner {
            ctx,
            checkpoint,
            formats,
            placements: Vec::new(),
        };
        let c = &config;
        let (v, d) = (c.vocab_size, c.hidden_size);
        let embed = planner.matrix_as(Role::Embedding, names::EMBED_TOKENS, v, d)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(planner.matrix_as(Role::Output, names::LM_HEAD, v, d)?)
        };
        let layers = (0..c.num_layers)
            .map(|i| planner.layer(c, i))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = planner.vector(names::FINAL_NORM, &[d])?;
        if let Some(FeedForward::Moe(moe)) = layers.iter().map(|l| &l.ffn).find(|f| matches!(f, FeedForward::Moe(_))) {
            config.moe.weight_format = moe.config.weight_format;
        } else {
            config.moe.weight_format = embed.format;
        }
        let rope = match config.rope_scaling {
            RopeScaling::DynamicNtk { factor, max_positions } => ModelRope::DynamicNtk(DynamicNtk {
                theta: config.rope_theta,
                rotary_dim: config.rotary_dim,
                factor,
                max_positions,
            }),
            _ => ModelRope::Table(upload_rope_table(
                ctx,
                config.rope_theta,
                config.rotary_dim,
                max_context,
                &config.rope_scaling,
            )?),
        };
        let model = Self {
            config,
            max_context,
            kv_cache: crate::model::load::DEFAULT_KV_CACHE,
            embed,
            lm_head,
            layers,
            final_norm,
            rope,
        };
        Ok((model, planner.placements))
    }

    /// Room for the slots and positions of `tokens` tokens of a step (with the step's
    /// rotation rows when RoPE is dynamic NTK).
    pub fn new_positions(&self, ctx: &GpuContext, tokens: usize) -> Result<TokenPositions> {
        match self.rope {
            ModelRope::DynamicNtk(ntk) => TokenPositions::with_dynamic_ntk(ctx, tokens, ntk),
            ModelRope::Table(_) => TokenPositions::new(ctx, tokens),
        }
    }

    /// Where the RoPE kernel reads the rotation of a step placed by `positions`.
    fn rope_angles<'a>(&'a self, positions: &'a TokenPositions) -> Result<RopeAngles<'a>> {
        match (&self.rope, &positions.step_angles) {
            (ModelRope::Table(table), _) => Ok(RopeAngles::ByPosition(table)),
            (ModelRope::DynamicNtk(_), Some((rows, _))) => Ok(RopeAngles::ByToken(rows)),
            (ModelRope::DynamicNtk(_), None) => Err(Error::Config(
                "dynamic NTK RoPE needs token positions with rotation rows (Model::new_positions)".into(),
            )),
        }
    }

    /// One KV cache per layer, each as its attention needs (keys and values per kv
    /// head, or MLA's latents), for `slots` sequences of up to `max_context` positions.
    pub fn new_caches(&self, ctx: &GpuContext, slots: usize, max_context: usize) -> Result<Vec<KvCache>> {
        self.layers
            .iter()
            .map(|l| {
                l.attention
                    .new_cache(ctx, &self.config, self.kv_cache, slots, max_context)
            })
            .collect()
    }

    /// Bytes the KV caches of all layers hold per position of one sequence.
    pub fn kv_bytes_per_position(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.attention.cache_bytes_per_position(&self.config, self.kv_cache))
            .sum()
    }

    /// Number of MoE layers.
    pub fn moe_layers(&self) -> usize {
        self.config.sparse_layers.iter().filter(|s| **s).count()
    }

    /// Number of layers whose q, k and v projections run as one matrix (all grouped-
    /// query layers whose three are stored in one format, without whole-projection q/k
    /// norms).
    pub fn joined_qkv_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.attention.joined_qkv()).count()
    }

    /// Bytes of GPU memory the weights take.
    pub fn weight_bytes(&self) -> u64 {
        let matrices = |m: &WeightMatrix| m.bytes();
        let mut total =
            matrices(&self.embed) + self.lm_head.as_ref().map_or(0, matrices) + self.final_norm.buffer.size();
        for l in &self.layers {
            total += l.attention.weight_bytes();
            total += l.input_norm.buffer.size() + l.post_attention_norm.buffer.size();
            total += match &l.ffn {
                FeedForward::Moe(m) => {
                    m.gate.bytes()
                        + m.up.bytes()
                        + m.down.bytes()
                        + m.router.buffer.size()
                        + m.shared
                            .as_ref()
                            .map_or(0, |s| s.gate.bytes() + s.up.bytes() + s.down.bytes())
                }
                FeedForward::Dense(m) => m.gate.bytes() + m.up.bytes() + m.down.bytes(),
            };
        }
        total
    }

    /// Records the forward of `ids [T]` at the slots and positions `positions` holds,
    /// reading and writing `caches` (one per layer).
    #[allow(clippy::too_many_arguments)]
    pub fn record_forward(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        ids: &GpuTensor,
        positions: &TokenPositions,
        caches: &[KvCache],
        logit_rows: LogitRows,
        kernels: Kernels,
    ) -> Result<ForwardOutputs> {
        let c = &self.config;
        let (t, d) = (ids.len(), c.hidden_size);
        if caches.len() != self.layers.len() {
            return Err(Error::Config(format!(
                "{} KV caches for {} layers",
                caches.len(),
                self.layers.len()
            )));
        }
        if positions.tokens < t {
            return Err(Error::Config(format!(
                "{} token positions for {t} tokens",
                positions.tokens
            )));
        }
        let rope = self.rope_angles(positions)?;
        let gemv = kernels.gemv(dense_gemv_by_size(ctx, t));
        // Steps that take the GEMV (few tokens) split attention over the context on
        // GPUs; a CPU adapter's few cores are busy with one workgroup per (token, head
        // chunk).
        let per_head = !ctx.group_attention;
        let splits = match caches.first() {
            Some(cache) if gemv && ctx.split_attention => {
                Some(decode_splits(attention_workgroups(c.num_heads, cache, per_head)))
            }
            _ => None,
        };
        let x = GpuTensor::empty(ctx, "hidden", &[t, d], DType::F32)?;
        rec.section("embedding");
        encode_embedding(ctx, rec, ids, &self.embed, c.embedding_multiplier, &x)?;
        let mut routing = Vec::new();
        // A layer's normed input, where the layer before wrote it (its MoE combine).
        let mut normed_input: Option<GpuTensor> = None;
        for (i, (layer, cache)) in self.layers.iter().zip(caches).enumerate() {
            rec.section("attention");
            let h = match normed_input.take() {
                Some(h) => h,
                None => norm(ctx, rec, &x, &layer.input_norm, c.rms_norm_eps)?,
            };
            let inputs = AttentionInputs {
                config: c,
                rope,
                cache,
                positions,
                gemv,
                splits,
                per_head,
                // Only `BySize` (one sequence, the fastest): the server's explicit kinds
                // keep every token's arithmetic the same in any batch.
                share_tokens: kernels == Kernels::BySize,
            };
            let residual = Residual {
                stream: &x,
                scale: c.residual_multiplier,
            };
            // Attention's output projection adds into the residual stream.
            layer.attention.record(ctx, rec, &inputs, &h, residual)?;
            rec.section(match layer.ffn {
                FeedForward::Moe(_) => "moe",
                FeedForward::Dense(_) => "dense mlp",
            });
            let h = norm(ctx, rec, &x, &layer.post_attention_norm, c.rms_norm_eps)?;
            // The MoE combine and the dense down projection add into the residual stream.
            match &layer.ffn {
                FeedForward::Moe(moe) => {
                    let decode = kernels.gemv(moe_gemv_by_size(ctx, t, &moe.config));
                    // On GPUs the combine also norms the stream for the next layer (a
                    // CPU driver pays more for its workgroup-per-token barriers than for
                    // the dispatch it saves: BENCHMARKS.md).
                    let next = match self.layers.get(i + 1) {
                        Some(next) if ctx.kernel_target == KernelTarget::Gpu => {
                            Some((next, GpuTensor::empty(ctx, "normed", &[t, d], DType::F32)?))
                        }
                        _ => None,
                    };
                    let next_norm = next.as_ref().map(|(next, output)| NextNorm {
                        weight: &next.input_norm,
                        eps: c.rms_norm_eps,
                        output,
                    });
                    routing.push(moe.encode_step(ctx, rec, &h, decode, residual, next_norm)?);
                    normed_input = next.map(|(_, output)| output);
                }
                FeedForward::Dense(mlp) => {
                    let mid = GpuTensor::empty(ctx, "dense mlp intermediate", &[t, mlp.gate.out_dim], DType::F32)?;
                    encode_gate_up(ctx, rec, dense_rows(t, gemv), &h, &mlp.gate, &mlp.up, &mid)?;
                    linear_with(ctx, rec, &mid, &mlp.down, gemv, None, Some(residual))?;
                }
            }
        }
        rec.section("lm head");
        let rows = match logit_rows {
            LogitRows::All => x,
            LogitRows::Last => {
                let last = GpuTensor::empty(ctx, "last hidden", &[1, d], DType::F32)?;
                rec.copy(&x.buffer, ((t - 1) * d * 4) as u64, &last.buffer, 0, (d * 4) as u64);
                last
            }
            LogitRows::Listed(list) => {
                let picked = GpuTensor::empty(ctx, "hidden rows for logits", &[list.len(), d], DType::F32)?;
                encode_gather_rows(ctx, rec, &x, list, &picked);
                picked
            }
        };
        let h = norm(ctx, rec, &rows, &self.final_norm, c.rms_norm_eps)?;
        // Picked rows (the last token of each sequence) always take the GEMV: a prompt's
        // single row would otherwise fill a 32-row tile (about 10x slower), and the GEMV
        // gives each row the same logits whatever else the step holds.
        let lm_head_gemv = gemv || !matches!(logit_rows, LogitRows::All);
        let logits = linear(ctx, rec, &h, self.lm_head.as_ref().unwrap_or(&self.embed), lm_head_gemv)?;
        if c.logits_scaling != 1.0 {
            encode_scale_clamp(ctx, rec, &logits, 1.0 / c.logits_scaling, f32::MAX);
        }
        Ok(ForwardOutputs { logits, routing })
    }
}

fn dense_rows(tokens: usize, gemv: bool) -> ExpertRows<'static> {
    ExpertRows::Dense { tokens, gemv }
}

/// `x [T, in] W^T -> [T, out]` for a plain matrix.
pub(crate) fn linear(
    ctx: &GpuContext,
    rec: &mut Recorder,
    x: &GpuTensor,
    w: &WeightMatrix,
    gemv: bool,
) -> Result<GpuTensor> {
    linear_with(ctx, rec, x, w, gemv, None, None)
}

/// `x [T, in] W^T + bias [out]` in the matmul's epilogue (no separate bias add), into a
/// new tensor, or added times `residual.scale` into `residual.stream` (returned).
pub(crate) fn linear_with(
    ctx: &GpuContext,
    rec: &mut Recorder,
    x: &GpuTensor,
    w: &WeightMatrix,
    gemv: bool,
    bias: Option<&GpuTensor>,
    residual: Option<Residual>,
) -> Result<GpuTensor> {
    let t = x.shape[0];
    let y = match residual {
        Some(r) => r.stream.clone(),
        None => GpuTensor::empty(ctx, &format!("{} output", w.name), &[t, w.out_dim], DType::F32)?,
    };
    let bias = match bias {
        Some(b) => {
            expect_shape(&format!("{} bias", w.name), b, &[w.out_dim])?;
            Some(b.reshaped(&[1, w.out_dim]))
        }
        None => None,
    };
    let epilogue = Epilogue {
        biases: bias.as_ref().map(|b| [b, b]),
        residual: residual.map(|r| r.scale),
        ..Epilogue::default()
    };
    encode_down_epilogue(ctx, rec, dense_rows(t, gemv), x, w, &y, epilogue)?;
    Ok(y)
}

pub(crate) fn norm(ctx: &GpuContext, rec: &mut Recorder, x: &GpuTensor, w: &GpuTensor, eps: f32) -> Result<GpuTensor> {
    let y = GpuTensor::empty(ctx, "normed", &x.shape, DType::F32)?;
    encode_rms_norm(ctx, rec, x, w, eps, &y)?;
    Ok(y)
}

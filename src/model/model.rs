//! The generic MoE decoder's weights on the GPU: an immutable [`Model`] (shared by any
//! number of [`crate::model::session::Session`]s), planned from a checkpoint's headers
//! and filled by streaming its bytes ([`crate::model::load`]), and the recording of
//! one forward pass. Every supported family (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
//! GraniteMoE) is a configuration of this one model:
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

use crate::error::{Error, Result};
use crate::gpu::kernel::Recorder;
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::model::config::{ModelConfig, QkNorm};
use crate::model::families::gpt_oss;
use crate::model::names::{self, ExpertTensors};
use crate::model::safetensors_io::Checkpoint;
use crate::moe::layer::{ExpertBiases, SharedExpert};
use crate::moe::MoeLayer;
use crate::ops::attention::{encode_attention, AttentionOptions, KvCache};
use crate::ops::elementwise::{encode_add_row_bias, encode_add_scaled, encode_gather_rows, encode_scale_clamp};
use crate::ops::embedding::encode_embedding;
use crate::ops::expert_matmul::{encode_down, encode_gate_up, ExpertRows};
use crate::ops::norm::encode_rms_norm;
use crate::ops::rope::{encode_rope, upload_rope_table};
use crate::ops::TokenPositions;
use crate::weights::{Assembly, Placement, WeightFormat, WeightMatrix};

/// Batches of at most this many tokens use the GEMV kernels for dense projections.
const GEMV_MAX_TOKENS: usize = 4;

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
    /// GEMV for steps of a few tokens, tiles above (the fastest for one sequence).
    BySize,
    Gemv,
    Tiled,
}

impl Kernels {
    fn gemv(self, tokens: usize, threshold: usize) -> bool {
        match self {
            Kernels::BySize => tokens <= threshold,
            Kernels::Gemv => true,
            Kernels::Tiled => false,
        }
    }
}

struct Attention {
    q: WeightMatrix,
    k: WeightMatrix,
    v: WeightMatrix,
    o: WeightMatrix,
    biases: Option<[GpuTensor; 3]>,
    o_bias: Option<GpuTensor>,
    qk_norm: Option<(GpuTensor, GpuTensor)>,
    /// `[heads]` sink logits (gpt-oss).
    sinks: Option<GpuTensor>,
    /// Sliding window in positions, or full causal attention.
    window: Option<usize>,
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
    attention: Attention,
    post_attention_norm: GpuTensor,
    ffn: FeedForward,
}

/// A loaded model: weights on the GPU and the RoPE table. Immutable once loaded;
/// per-sequence state lives in sessions.
pub struct Model {
    pub config: ModelConfig,
    /// Positions the RoPE table covers: the longest context a session may have.
    pub max_context: usize,
    embed: WeightMatrix,
    lm_head: Option<WeightMatrix>,
    layers: Vec<Layer>,
    final_norm: GpuTensor,
    rope: GpuTensor,
}

/// What a recorded forward leaves on the GPU.
pub struct ForwardOutputs {
    /// `[1 or T, vocab]`
    pub logits: GpuTensor,
    /// Per MoE layer, `[E]` assignments routed to each expert in this forward.
    pub expert_counts: Vec<GpuTensor>,
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

/// What a matrix is for, which decides its storage when quantizing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Embedding,
    Output,
    Projection,
}

/// Allocates the model's buffers from a checkpoint's headers and lists where each
/// tensor's bytes go.
struct Planner<'a> {
    ctx: &'a GpuContext,
    checkpoint: &'a Checkpoint,
    formats: StorageFormats,
    placements: Vec<Placement>,
}

impl Planner<'_> {
    /// The storage format of a matrix of `role` with rows of `input` elements stored
    /// as `stored`. Rows that are not whole blocks keep the element format.
    fn format_for(&self, role: Role, stored: WeightFormat, input: usize) -> WeightFormat {
        let element = self.formats.convert.unwrap_or(stored);
        let block = match (role, self.formats.quantize) {
            (_, None) | (Role::Embedding, _) => None,
            (Role::Output, Some(_)) => Some(WeightFormat::Q8_0),
            (Role::Projection, Some(q)) => Some(q),
        };
        match block {
            Some(q) if input.is_multiple_of(q.block_elements()) => q,
            _ => element,
        }
    }

    /// A plain `[out, in]` matrix.
    fn matrix(&mut self, name: &str, out: usize, input: usize) -> Result<WeightMatrix> {
        self.matrix_as(Role::Projection, name, out, input)
    }

    fn matrix_as(&mut self, role: Role, name: &str, out: usize, input: usize) -> Result<WeightMatrix> {
        self.stacked(role, name, 1, out, input, &|_| (name.to_string(), vec![out, input], 0))
    }

    /// `[experts, out, in]` gathered from the checkpoint: `source(e)` names the tensor
    /// holding expert e, its full shape, and the row where expert e's rows begin.
    fn stacked(
        &mut self,
        role: Role,
        label: &str,
        experts: usize,
        out: usize,
        input: usize,
        source: &dyn Fn(usize) -> (String, Vec<usize>, usize),
    ) -> Result<WeightMatrix> {
        let (first, shape, _) = source(0);
        let (_, _, first_format) = self.checkpoint.expect(&first, &shape)?;
        let format = self.format_for(role, first_format, input);
        let matrix = WeightMatrix::allocate(self.ctx, label, [experts, out, input], format)?;
        for e in 0..experts {
            let (name, shape, row0) = source(e);
            let (shard, info, src_format) = self.checkpoint.expect(&name, &shape)?;
            let src_row = src_format.bytes_for(input)? as u64;
            for (chunk, rows, dst_offset) in matrix.destinations(e, 0..out) {
                self.placements.push(Placement {
                    tensor: name.clone(),
                    shard,
                    src_offset: info.start + (row0 + rows.start) as u64 * src_row,
                    src_len: rows.len() as u64 * src_row,
                    src_format,
                    dst: chunk.buffer.clone(),
                    dst_offset,
                    dst_format: format,
                    assembly: Assembly::Stream,
                });
            }
        }
        Ok(matrix)
    }

    /// `[experts, out, in]` from a `[experts, in, cols]` tensor applied as `x @ W`
    /// (gpt-oss): expert e's output row r is its column `first + r * step`.
    #[allow(clippy::too_many_arguments)]
    fn columns(
        &mut self,
        label: &str,
        name: &str,
        experts: usize,
        out: usize,
        input: usize,
        cols: usize,
        (first, step): (usize, usize),
    ) -> Result<WeightMatrix> {
        let (shard, info, src_format) = self.checkpoint.expect(name, &[experts, input, cols])?;
        if src_format.block_elements() != 1 {
            return Err(Error::Unsupported(format!(
                "tensor `{name}`: {src_format} cannot be transposed"
            )));
        }
        let format = self.format_for(Role::Projection, src_format, input);
        let matrix = WeightMatrix::allocate(self.ctx, label, [experts, out, input], format)?;
        let expert_bytes = (input * cols * src_format.block_bytes()) as u64;
        for e in 0..experts {
            for (chunk, rows, dst_offset) in matrix.destinations(e, 0..out) {
                self.placements.push(Placement {
                    tensor: name.to_string(),
                    shard,
                    src_offset: info.start + e as u64 * expert_bytes,
                    src_len: expert_bytes,
                    src_format,
                    dst: chunk.buffer.clone(),
                    dst_offset,
                    dst_format: format,
                    assembly: Assembly::Columns {
                        rows: input,
                        cols,
                        first: first + rows.start * step,
                        step,
                        count: rows.len(),
                    },
                });
            }
        }
        Ok(matrix)
    }

    /// `[experts, out, in]` from Hugging Face MXFP4 tensors `{name}_blocks`
    /// `[experts, rows, in / 32, 16]` and `{name}_scales` `[experts, rows, in / 32]`:
    /// expert e's output row r is its stored row `first + r * step`.
    #[allow(clippy::too_many_arguments)]
    fn hf_mxfp4(
        &mut self,
        label: &str,
        name: &str,
        experts: usize,
        out: usize,
        input: usize,
        rows_stored: usize,
        (first, step): (usize, usize),
    ) -> Result<WeightMatrix> {
        let blocks = input / 32;
        let blocks_name = format!("{name}_blocks");
        let scales_name = format!("{name}_scales");
        let (shard, info) = self
            .checkpoint
            .expect_raw(&blocks_name, &[experts, rows_stored, blocks, 16], "U8")?;
        let (scale_shard, scale_info) =
            self.checkpoint
                .expect_raw(&scales_name, &[experts, rows_stored, blocks], "U8")?;
        if scale_shard != shard {
            return Err(Error::Unsupported(format!(
                "`{blocks_name}` and `{scales_name}` are in different shards"
            )));
        }
        let format = self.format_for(Role::Projection, WeightFormat::Mxfp4, input);
        let matrix = WeightMatrix::allocate(self.ctx, label, [experts, out, input], format)?;
        let (expert_blocks, expert_scales) = ((rows_stored * blocks * 16) as u64, (rows_stored * blocks) as u64);
        for e in 0..experts {
            let scales_start = scale_info.start + e as u64 * expert_scales;
            for (chunk, rows, dst_offset) in matrix.destinations(e, 0..out) {
                self.placements.push(Placement {
                    tensor: blocks_name.clone(),
                    shard,
                    src_offset: info.start + e as u64 * expert_blocks,
                    src_len: expert_blocks,
                    src_format: WeightFormat::Mxfp4,
                    dst: chunk.buffer.clone(),
                    dst_offset,
                    dst_format: format,
                    assembly: Assembly::HfMxfp4 {
                        scales: scales_start..scales_start + expert_scales,
                        blocks,
                        first: first + rows.start * step,
                        step,
                        count: rows.len(),
                    },
                });
            }
        }
        Ok(matrix)
    }

    /// `[experts, count]` f32 from a `[experts, cols]` tensor: columns `first + j * step`.
    fn vector_columns(
        &mut self,
        name: &str,
        experts: usize,
        cols: usize,
        (first, step): (usize, usize),
        count: usize,
    ) -> Result<GpuTensor> {
        let (shard, info, src_format) = self.checkpoint.expect(name, &[experts, cols])?;
        let tensor = GpuTensor::empty(self.ctx, name, &[experts, count], DType::F32)?;
        let row_bytes = (cols * src_format.block_bytes()) as u64;
        for e in 0..experts {
            self.placements.push(Placement {
                tensor: name.to_string(),
                shard,
                src_offset: info.start + e as u64 * row_bytes,
                src_len: row_bytes,
                src_format,
                dst: tensor.buffer.clone(),
                dst_offset: (e * count * 4) as u64,
                dst_format: WeightFormat::F32,
                assembly: Assembly::Columns {
                    rows: 1,
                    cols,
                    first,
                    step,
                    count,
                },
            });
        }
        Ok(tensor)
    }

    /// A small tensor kept in f32 (norms, biases, routers).
    fn vector(&mut self, name: &str, shape: &[usize]) -> Result<GpuTensor> {
        let (shard, info, src_format) = self.checkpoint.expect(name, shape)?;
        let tensor = GpuTensor::empty(self.ctx, name, shape, DType::F32)?;
        self.placements.push(Placement {
            tensor: name.to_string(),
            shard,
            src_offset: info.start,
            src_len: info.len,
            src_format,
            dst: tensor.buffer.clone(),
            dst_offset: 0,
            dst_format: WeightFormat::F32,
            assembly: Assembly::Stream,
        });
        Ok(tensor)
    }

    fn layer(&mut self, c: &ModelConfig, i: usize) -> Result<Layer> {
        let p = names::layer(i);
        let name = |s: &str| format!("{p}.{s}");
        let (d, hd) = (c.hidden_size, c.head_dim);
        let (qw, kvw) = (c.num_heads * hd, c.num_kv_heads * hd);
        let biases = if c.attention_bias {
            Some([
                self.vector(&name("self_attn.q_proj.bias"), &[qw])?,
                self.vector(&name("self_attn.k_proj.bias"), &[kvw])?,
                self.vector(&name("self_attn.v_proj.bias"), &[kvw])?,
            ])
        } else {
            None
        };
        let qk_norm = match c.qk_norm {
            QkNorm::None => None,
            QkNorm::PerHead => Some((
                self.vector(&name("self_attn.q_norm.weight"), &[hd])?,
                self.vector(&name("self_attn.k_norm.weight"), &[hd])?,
            )),
            QkNorm::Full => Some((
                self.vector(&name("self_attn.q_norm.weight"), &[qw])?,
                self.vector(&name("self_attn.k_norm.weight"), &[kvw])?,
            )),
        };
        let attention = Attention {
            q: self.matrix(&name("self_attn.q_proj.weight"), qw, d)?,
            k: self.matrix(&name("self_attn.k_proj.weight"), kvw, d)?,
            v: self.matrix(&name("self_attn.v_proj.weight"), kvw, d)?,
            o: self.matrix(&name("self_attn.o_proj.weight"), d, qw)?,
            biases,
            o_bias: if c.output_bias {
                Some(self.vector(&name("self_attn.o_proj.bias"), &[d])?)
            } else {
                None
            },
            qk_norm,
            sinks: if c.attention_sinks {
                Some(self.vector(&gpt_oss::sinks_name(&p), &[c.num_heads])?)
            } else {
                None
            },
            window: c.attention_windows[i],
        };
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
        let (router_bias, expert_biases) = match &n.experts {
            ExpertTensors::GptOss(g) => (
                Some(self.vector(&g.router_bias, &[e])?),
                Some(ExpertBiases {
                    gate: self.vector_columns(&g.gate_up_bias, e, 2 * f, (0, 2), f)?,
                    up: self.vector_columns(&g.gate_up_bias, e, 2 * f, (1, 2), f)?,
                    down: self.vector(&g.down_bias, &[e, d])?,
                }),
            ),
            _ => (None, None),
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
            selection_bias: None,
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
        if max_context == 0 || max_context > config.max_position_embeddings {
            return Err(Error::Config(format!(
                "context of {max_context} positions must be between 1 and max_position_embeddings = {}",
                config.max_position_embeddings
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
        let rope = upload_rope_table(
            ctx,
            config.rope_theta,
            config.rotary_dim,
            max_context,
            &config.rope_scaling,
        )?;
        let model = Self {
            config,
            max_context,
            embed,
            lm_head,
            layers,
            final_norm,
            rope,
        };
        Ok((model, planner.placements))
    }

    /// Number of MoE layers.
    pub fn moe_layers(&self) -> usize {
        self.config.sparse_layers.iter().filter(|s| **s).count()
    }

    /// Bytes of GPU memory the weights take.
    pub fn weight_bytes(&self) -> u64 {
        let matrices = |m: &WeightMatrix| m.bytes();
        let mut total =
            matrices(&self.embed) + self.lm_head.as_ref().map_or(0, matrices) + self.final_norm.buffer.size();
        for l in &self.layers {
            let a = &l.attention;
            total += [&a.q, &a.k, &a.v, &a.o].iter().map(|m| m.bytes()).sum::<u64>();
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
        let gemv = kernels.gemv(t, GEMV_MAX_TOKENS);
        let x = GpuTensor::empty(ctx, "hidden", &[t, d], DType::F32)?;
        encode_embedding(ctx, rec, ids, &self.embed, c.embedding_multiplier, &x)?;
        let mut expert_counts = Vec::new();
        for (layer, cache) in self.layers.iter().zip(caches) {
            let h = norm(ctx, rec, &x, &layer.input_norm, c.rms_norm_eps)?;
            let attn = self.record_attention(ctx, rec, layer, cache, &h, positions, gemv)?;
            encode_add_scaled(ctx, rec, &x, &attn, c.residual_multiplier);
            let h = norm(ctx, rec, &x, &layer.post_attention_norm, c.rms_norm_eps)?;
            let f = match &layer.ffn {
                FeedForward::Moe(moe) => {
                    let decode = kernels.gemv(t, moe.config.decode_max_tokens);
                    let out = moe.encode_with(ctx, rec, &h, decode)?;
                    expert_counts.push(out.expert_counts);
                    out.output
                }
                FeedForward::Dense(mlp) => {
                    let mid = GpuTensor::empty(ctx, "dense mlp intermediate", &[t, mlp.gate.out_dim], DType::F32)?;
                    encode_gate_up(ctx, rec, dense_rows(t, gemv), &h, &mlp.gate, &mlp.up, &mid)?;
                    linear(ctx, rec, &mid, &mlp.down, gemv)?
                }
            };
            encode_add_scaled(ctx, rec, &x, &f, c.residual_multiplier);
        }
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
        let logits = linear(ctx, rec, &h, self.lm_head.as_ref().unwrap_or(&self.embed), gemv)?;
        if c.logits_scaling != 1.0 {
            encode_scale_clamp(ctx, rec, &logits, 1.0 / c.logits_scaling, f32::MAX);
        }
        Ok(ForwardOutputs { logits, expert_counts })
    }

    #[allow(clippy::too_many_arguments)]
    fn record_attention(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        layer: &Layer,
        cache: &KvCache,
        h: &GpuTensor,
        positions: &TokenPositions,
        gemv: bool,
    ) -> Result<GpuTensor> {
        let c = &self.config;
        let a = &layer.attention;
        let (mut q, mut k, v) = (
            linear(ctx, rec, h, &a.q, gemv)?,
            linear(ctx, rec, h, &a.k, gemv)?,
            linear(ctx, rec, h, &a.v, gemv)?,
        );
        if let Some([qb, kb, vb]) = &a.biases {
            encode_add_row_bias(ctx, rec, &q, qb);
            encode_add_row_bias(ctx, rec, &k, kb);
            encode_add_row_bias(ctx, rec, &v, vb);
        }
        if let Some((qn, kn)) = &a.qk_norm {
            // PerHead norms have head_dim weights, Full norms the projection width:
            // the kernel normalises rows of the weight's length either way.
            q = norm(ctx, rec, &q, qn, c.rms_norm_eps)?;
            k = norm(ctx, rec, &k, kn, c.rms_norm_eps)?;
        }
        if let Some(limit) = c.clip_qkv {
            for x in [&q, &k, &v] {
                encode_scale_clamp(ctx, rec, x, 1.0, limit);
            }
        }
        encode_rope(
            ctx,
            rec,
            &q,
            &self.rope,
            c.num_heads,
            c.head_dim,
            positions,
            c.rope_interleaved,
        );
        encode_rope(
            ctx,
            rec,
            &k,
            &self.rope,
            c.num_kv_heads,
            c.head_dim,
            positions,
            c.rope_interleaved,
        );
        let out = GpuTensor::empty(ctx, "attention output", &q.shape, DType::F32)?;
        encode_attention(
            ctx,
            rec,
            cache,
            &q,
            &k,
            &v,
            c.num_heads,
            positions,
            c.attention_scale,
            AttentionOptions {
                sinks: a.sinks.as_ref(),
                window: a.window,
            },
            &out,
        )?;
        let o = linear(ctx, rec, &out, &a.o, gemv)?;
        if let Some(bias) = &a.o_bias {
            encode_add_row_bias(ctx, rec, &o, bias);
        }
        Ok(o)
    }
}

fn dense_rows(tokens: usize, gemv: bool) -> ExpertRows<'static> {
    ExpertRows::Dense { tokens, gemv }
}

/// `x [T, in] W^T -> [T, out]` for a plain matrix.
fn linear(ctx: &GpuContext, rec: &mut Recorder, x: &GpuTensor, w: &WeightMatrix, gemv: bool) -> Result<GpuTensor> {
    let t = x.shape[0];
    let y = GpuTensor::empty(ctx, &format!("{} output", w.name), &[t, w.out_dim], DType::F32)?;
    encode_down(ctx, rec, dense_rows(t, gemv), x, w, &y)?;
    Ok(y)
}

fn norm(ctx: &GpuContext, rec: &mut Recorder, x: &GpuTensor, w: &GpuTensor, eps: f32) -> Result<GpuTensor> {
    let y = GpuTensor::empty(ctx, "normed", &x.shape, DType::F32)?;
    encode_rms_norm(ctx, rec, x, w, eps, &y)?;
    Ok(y)
}

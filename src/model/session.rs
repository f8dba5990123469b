//! Per-sequence state: a [`Session`] owns its KV cache, its position and its routing
//! statistics, and runs steps of a shared [`Model`]. Each step shape (token count and
//! what is read back) gets a [`Workspace`]: the forward recorded once, with its
//! activations, parameter buffers, bind groups and readback buffer, then replayed. A
//! decode step after the first creates no buffers and no bind groups: it writes the
//! token ids and the position (16 bytes), submits once, and maps the readback.

use crate::error::{Error, Result};
use crate::gpu::kernel::Recorder;
use crate::gpu::tensor::map_read;
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::model::model::{LogitsFor, Model};
use crate::ops::attention::KvCache;
use crate::ops::embedding::encode_argmax;
use crate::ops::Position;

/// What a step reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    /// `[MoE layers * experts]`, row-major: assignments routed to each expert in this step.
    pub routing_counts: Vec<u32>,
}

/// A recorded forward for one step shape, replayed every step of that shape.
pub struct Workspace {
    tokens: usize,
    read: Readback,
    recording: Recorder,
    ids: GpuTensor,
    position: Position,
    /// MAP_READ: the head (token or logits) then the routing counts.
    readback: wgpu::Buffer,
    head_words: usize,
}

impl Workspace {
    fn new(ctx: &GpuContext, model: &Model, caches: &[KvCache], tokens: usize, read: Readback) -> Result<Self> {
        let ids = GpuTensor::empty(ctx, "token ids", &[tokens], DType::U32)?;
        let position = Position::new(ctx, 0);
        let mut recording = Recorder::new();
        let logits_for = match read {
            Readback::AllLogits => LogitsFor::All,
            _ => LogitsFor::Last,
        };
        let out = model.record_forward(ctx, &mut recording, &ids, &position, caches, logits_for)?;
        let head = match read {
            Readback::Argmax => {
                let token = GpuTensor::empty(ctx, "sampled token", &[1], DType::U32)?;
                encode_argmax(ctx, &mut recording, &out.logits, &token);
                token
            }
            _ => out.logits,
        };
        let head_words = head.len();
        let experts = model.config.moe.num_experts();
        let words = head_words + out.expert_counts.len() * experts;
        ctx.check_binding("the step readback", (words * 4) as u64)?;
        let readback = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step readback"),
            size: (words * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        recording.copy(&head.buffer, 0, &readback, 0, (head_words * 4) as u64);
        for (i, counts) in out.expert_counts.iter().enumerate() {
            let offset = ((head_words + i * experts) * 4) as u64;
            recording.copy(&counts.buffer, 0, &readback, offset, (experts * 4) as u64);
        }
        Ok(Self {
            tokens,
            read,
            recording,
            ids,
            position,
            readback,
            head_words,
        })
    }
}

/// One sequence being generated: KV cache, position, routing statistics, workspaces.
pub struct Session {
    caches: Vec<KvCache>,
    /// Positions the KV cache holds.
    pub max_context: usize,
    position: usize,
    /// The decode workspace (one token, greedy or logits) and the last other one.
    workspaces: Vec<Workspace>,
    /// `[MoE layers * experts]`: assignments routed to each expert over all steps.
    pub routing_totals: Vec<u64>,
}

impl Session {
    /// A session of `max_context` positions (default: the model's).
    pub fn new(ctx: &GpuContext, model: &Model, max_context: Option<usize>) -> Result<Self> {
        let c = &model.config;
        let max_context = max_context.unwrap_or(model.max_context);
        if max_context == 0 || max_context > model.max_context {
            return Err(Error::Config(format!(
                "a session of {max_context} positions must fit the model's context of {} positions",
                model.max_context
            )));
        }
        let caches = (0..c.num_layers)
            .map(|_| KvCache::new(ctx, c.num_kv_heads, c.head_dim, max_context))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            caches,
            max_context,
            position: 0,
            workspaces: Vec::new(),
            routing_totals: vec![0; model.moe_layers() * c.moe.num_experts()],
        })
    }

    /// Positions filled so far (where the next step starts).
    pub fn position(&self) -> usize {
        self.position
    }

    /// Moves back to `position` (keeping the cache before it), e.g. to start over at 0.
    pub fn rewind(&mut self, position: usize) -> Result<()> {
        if position > self.position {
            return Err(Error::Config(format!(
                "cannot rewind to position {position}, past the {} filled",
                self.position
            )));
        }
        self.position = position;
        Ok(())
    }

    /// Bytes of the KV cache.
    pub fn cache_bytes(&self) -> u64 {
        self.caches
            .iter()
            .map(|c| c.keys.buffer.size() + c.values.buffer.size())
            .sum()
    }

    fn check_input(&self, model: &Model, ids: &[u32]) -> Result<()> {
        let c = &model.config;
        if ids.is_empty() {
            return Err(Error::Config("no tokens to run".into()));
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::Config(format!(
                "token id {bad} is not below vocab_size = {}",
                c.vocab_size
            )));
        }
        if self.position + ids.len() > self.max_context {
            return Err(Error::Config(format!(
                "{} tokens at position {} pass the context of {} positions (max_position_embeddings = {})",
                ids.len(),
                self.position,
                self.max_context,
                c.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// The workspace for `tokens` tokens reading back `read`, recorded on first use.
    fn workspace(&mut self, ctx: &GpuContext, model: &Model, tokens: usize, read: Readback) -> Result<usize> {
        if let Some(i) = self
            .workspaces
            .iter()
            .position(|w| w.tokens == tokens && w.read == read)
        {
            return Ok(i);
        }
        // Keep single-token workspaces (decode); other shapes replace each other.
        if let Some(i) = self.workspaces.iter().position(|w| w.tokens > 1) {
            self.workspaces.swap_remove(i);
        }
        let ws = Workspace::new(ctx, model, &self.caches, tokens, read)?;
        self.workspaces.push(ws);
        Ok(self.workspaces.len() - 1)
    }

    /// Runs `ids` at the session's position in one submit, advances the position, and
    /// reads back what `read` asks for plus the routing counts (one readback).
    pub async fn step(&mut self, ctx: &GpuContext, model: &Model, ids: &[u32], read: Readback) -> Result<StepOutput> {
        self.check_input(model, ids)?;
        let pos0 = self.position;
        let i = ctx
            .scoped("model forward", || {
                let i = self.workspace(ctx, model, ids.len(), read)?;
                let ws = &self.workspaces[i];
                ctx.queue.write_buffer(&ws.ids.buffer, 0, bytemuck::cast_slice(ids));
                ws.position.set(ctx, pos0);
                ws.recording.submit(ctx);
                Ok(i)
            })
            .await?;
        let ws = &self.workspaces[i];
        let bytes = map_read(ctx, &ws.readback, "the step's results").await?;
        let words: &[u32] = bytemuck::cast_slice(&bytes);
        let (head, counts) = words.split_at(ws.head_words);
        self.position = pos0 + ids.len();
        for (total, &c) in self.routing_totals.iter_mut().zip(counts) {
            *total += c as u64;
        }
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

    /// Runs `ids` at the session's position and reads back the requested logits.
    pub async fn logits(
        &mut self,
        ctx: &GpuContext,
        model: &Model,
        ids: &[u32],
        logits_for: LogitsFor,
    ) -> Result<Vec<f32>> {
        let read = match logits_for {
            LogitsFor::All => Readback::AllLogits,
            LogitsFor::Last => Readback::LastLogits,
        };
        Ok(self.step(ctx, model, ids, read).await?.logits)
    }

    /// Runs `ids` at the session's position and returns the argmax token.
    pub async fn next_greedy(&mut self, ctx: &GpuContext, model: &Model, ids: &[u32]) -> Result<u32> {
        let out = self.step(ctx, model, ids, Readback::Argmax).await?;
        Ok(out.token.unwrap_or(0))
    }
}

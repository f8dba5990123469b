//! Many sequences stepped together (continuous batching): a [`Batch`] holds one KV
//! cache per layer with a slot per sequence, and each step runs any mix of its
//! sequences' tokens — one new token of each decoding sequence, prompt chunks of
//! others — through the model in one forward and one submit. The MoE layers see all
//! of the step's tokens and route them at once; attention reads each token's own slot
//! up to its own position.
//!
//! A token's result never depends on which other tokens share its step: every kernel
//! reduces each row in a fixed order of its own, and the kernels are picked by what
//! the step is ([`Kernels`]), never by how many tokens it has. So a greedy request
//! gets the same tokens alone or among many others.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::model::{Kernels, Model};
use crate::model::session::{Head, HeadRows, StepShape, Workspace};
use crate::ops::attention::KvCache;
use crate::ops::sampling::RowSampling;

/// Workspaces kept per batch (each is a recorded forward for one step shape).
const KEPT_WORKSPACES: usize = 24;

/// One sequence's part of a batched step: its slot and the tokens to append at its
/// position.
#[derive(Clone, Copy, Debug)]
pub struct BatchEntry<'a> {
    pub slot: usize,
    pub tokens: &'a [u32],
    /// Where the prompt these tokens are a chunk of ends, when it goes on past them. A
    /// dynamic NTK RoPE scales a forward by where its sequence ends (as transformers
    /// does); a prompt fed in chunks scales as if it were prefilled in one forward.
    pub prompt_end: Option<usize>,
}

impl<'a> BatchEntry<'a> {
    /// `tokens` appended to the sequence in `slot`.
    pub fn new(slot: usize, tokens: &'a [u32]) -> Self {
        Self {
            slot,
            tokens,
            prompt_end: None,
        }
    }
}

/// What a batched step reads back for each entry's last token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatchRead<'a> {
    /// The argmax token (on the GPU).
    Argmax,
    /// The logits, for sampling on the CPU.
    Logits,
    /// A token sampled on the GPU under each entry's draw (the `sample` kernel; a
    /// temperature of 0 picks the most likely token).
    Sample(&'a [RowSampling]),
}

/// A batched step's results, one per entry, in entry order.
#[derive(Clone, Debug)]
pub struct BatchOutput {
    /// `BatchRead::Argmax` or `Sample`: the token chosen at each entry's last position.
    pub tokens: Vec<u32>,
    /// `BatchRead::Logits`: `[entries, vocab]`.
    pub logits: Vec<f32>,
    /// `[MoE layers * experts]` assignments routed to each expert in this step.
    pub routing_counts: Vec<u32>,
}

/// KV caches for `slots` sequences of up to `max_context` positions, and the
/// workspaces of recent step shapes.
pub struct Batch {
    caches: Vec<KvCache>,
    positions: Vec<usize>,
    in_use: Vec<bool>,
    pub max_context: usize,
    workspaces: Vec<Workspace>,
    /// Step counter at each workspace's last use (least recently used goes first).
    last_used: Vec<u64>,
    steps: u64,
}

impl Batch {
    pub fn new(ctx: &GpuContext, model: &Model, slots: usize, max_context: usize) -> Result<Self> {
        if slots == 0 {
            return Err(Error::Config("a batch needs at least one sequence slot".into()));
        }
        if max_context == 0 || max_context > model.max_context {
            return Err(Error::Config(format!(
                "a context of {max_context} positions per sequence must fit the model's {} positions",
                model.max_context
            )));
        }
        let caches = model.new_caches(ctx, slots, max_context)?;
        Ok(Self {
            caches,
            positions: vec![0; slots],
            in_use: vec![false; slots],
            max_context,
            workspaces: Vec::new(),
            last_used: Vec::new(),
            steps: 0,
        })
    }

    pub fn slots(&self) -> usize {
        self.in_use.len()
    }

    /// Slots holding a sequence.
    pub fn active(&self) -> usize {
        self.in_use.iter().filter(|u| **u).count()
    }

    /// Takes a free slot for a new sequence (at position 0), if any.
    pub fn acquire(&mut self) -> Option<usize> {
        let slot = self.in_use.iter().position(|u| !u)?;
        self.in_use[slot] = true;
        self.positions[slot] = 0;
        Some(slot)
    }

    /// Frees `slot` for the next sequence.
    pub fn release(&mut self, slot: usize) {
        if let Some(u) = self.in_use.get_mut(slot) {
            *u = false;
        }
    }

    /// Positions `slot` has filled.
    pub fn position(&self, slot: usize) -> usize {
        self.positions[slot]
    }

    /// Bytes of KV cache one position of one sequence takes, over all layers.
    pub fn cache_bytes_per_position(&self) -> u64 {
        self.caches.iter().map(KvCache::bytes_per_position).sum()
    }

    fn check(&self, model: &Model, entries: &[BatchEntry]) -> Result<()> {
        if entries.is_empty() || entries.iter().any(|e| e.tokens.is_empty()) {
            return Err(Error::Config("a batched step needs tokens for every entry".into()));
        }
        for (i, e) in entries.iter().enumerate() {
            if e.slot >= self.slots() || !self.in_use[e.slot] {
                return Err(Error::Config(format!("slot {} holds no sequence", e.slot)));
            }
            if entries[..i].iter().any(|o| o.slot == e.slot) {
                return Err(Error::Config(format!("slot {} appears twice in one step", e.slot)));
            }
            if let Some(bad) = e.tokens.iter().find(|&&id| id as usize >= model.config.vocab_size) {
                return Err(Error::Config(format!(
                    "token id {bad} is not below vocab_size = {}",
                    model.config.vocab_size
                )));
            }
            if self.positions[e.slot] + e.tokens.len() > self.max_context {
                return Err(Error::Config(format!(
                    "{} tokens at position {} pass the context of {} positions",
                    e.tokens.len(),
                    self.positions[e.slot],
                    self.max_context
                )));
            }
            if let Some(end) = e.prompt_end.filter(|&end| end > self.max_context) {
                return Err(Error::Config(format!(
                    "a prompt ending at position {end} passes the context of {} positions",
                    self.max_context
                )));
            }
        }
        Ok(())
    }

    fn workspace(&mut self, ctx: &GpuContext, model: &Model, shape: StepShape) -> Result<usize> {
        self.steps += 1;
        if let Some(i) = self.workspaces.iter().position(|w| w.shape == shape) {
            self.last_used[i] = self.steps;
            return Ok(i);
        }
        if self.workspaces.len() >= KEPT_WORKSPACES {
            let oldest = (0..self.last_used.len())
                .min_by_key(|&i| self.last_used[i])
                .unwrap_or(0);
            self.workspaces.swap_remove(oldest);
            self.last_used.swap_remove(oldest);
        }
        self.workspaces.push(Workspace::new(ctx, model, &self.caches, shape)?);
        self.last_used.push(self.steps);
        Ok(self.workspaces.len() - 1)
    }

    /// Runs every entry's tokens at its slot's position in one forward and one submit,
    /// advances the positions, and reads back each entry's last token's result.
    pub async fn step(
        &mut self,
        ctx: &GpuContext,
        model: &Model,
        entries: &[BatchEntry<'_>],
        read: BatchRead<'_>,
        kernels: Kernels,
    ) -> Result<BatchOutput> {
        self.check(model, entries)?;
        let draws = match read {
            BatchRead::Sample(draws) if draws.len() != entries.len() => {
                return Err(Error::Config(format!(
                    "a batched step of {} entries got {} sampling draws",
                    entries.len(),
                    draws.len()
                )))
            }
            BatchRead::Sample(draws) => draws,
            _ => &[],
        };
        let mut ids = Vec::new();
        let mut placed = Vec::new();
        let mut lengths = Vec::new();
        let mut head_rows = Vec::with_capacity(entries.len());
        for e in entries {
            let pos0 = self.positions[e.slot];
            ids.extend_from_slice(e.tokens);
            placed.extend((0..e.tokens.len()).map(|t| (e.slot, pos0 + t)));
            let end = e.prompt_end.unwrap_or(0).max(pos0 + e.tokens.len());
            lengths.extend(std::iter::repeat_n(end, e.tokens.len()));
            head_rows.push((ids.len() - 1) as u32);
        }
        let shape = StepShape {
            tokens: ids.len(),
            rows: HeadRows::Listed(entries.len()),
            head: match read {
                BatchRead::Argmax => Head::Argmax,
                BatchRead::Logits => Head::Logits,
                BatchRead::Sample(_) => Head::Sample,
            },
            kernels,
        };
        let i = self.workspace(ctx, model, shape)?;
        let out = self.workspaces[i]
            .replay(ctx, &ids, &placed, Some(&lengths), &head_rows, draws)
            .await?;
        for e in entries {
            self.positions[e.slot] += e.tokens.len();
        }
        Ok(match read {
            BatchRead::Argmax | BatchRead::Sample(_) => BatchOutput {
                tokens: out.head,
                logits: Vec::new(),
                routing_counts: out.routing_counts,
            },
            BatchRead::Logits => BatchOutput {
                tokens: Vec::new(),
                logits: out.head.iter().map(|w| f32::from_bits(*w)).collect(),
                routing_counts: out.routing_counts,
            },
        })
    }
}

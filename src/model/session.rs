//! Per-sequence state: a [`Session`] owns its KV cache, its position and its routing
//! statistics, and runs steps of a shared [`Model`]. Each step shape (token count and
//! what is read back) gets a [`Workspace`]: the forward recorded once, with its
//! activations, parameter buffers, bind groups and readback buffer, then replayed. A
//! decode step after the first creates no buffers and no bind groups: it writes the
//! token ids and each token's (slot, position) (8 bytes a token), submits once, and
//! maps the readback.

use crate::error::{Error, Result};
use crate::gpu::kernel::Recorder;
use crate::gpu::profile::{profile, KernelTime};
use crate::gpu::tensor::map_read_after;
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::model::generate::{Sampler, SamplingParams};
use crate::model::model::{Kernels, LogitRows, LogitsFor, Model};
use crate::moe::layer::RoutingRecord;
use crate::ops::attention::KvCache;
use crate::ops::sampling::{encode_argmax, encode_sample, samples_on_gpu, RowSampling};
use crate::ops::TokenPositions;

/// What a step reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Readback {
    /// Only the greedy token (argmax on the GPU).
    Argmax,
    LastLogits,
    AllLogits,
}

/// Tokens per forward of a [`Session::step`] by default: longer prompts run in chunks.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// A step's readback.
#[derive(Clone, Debug)]
pub struct StepOutput {
    pub token: Option<u32>,
    /// Empty for `Readback::Argmax`.
    pub logits: Vec<f32>,
    /// `[MoE layers * experts]`, row-major: assignments routed to each expert in this step.
    pub routing_counts: Vec<u32>,
}

/// Steps a decode keeps submitted past the one whose token it reads next
/// ([`Session::decode`]): enough to cover a browser's readback round trip
/// through its GPU process (see BENCHMARKS.md, 2026-12-03, eighth session).
const DECODE_AHEAD: usize = 2;

/// The shape of a recorded forward: what a [`Workspace`] is recorded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StepShape {
    pub tokens: usize,
    pub rows: HeadRows,
    pub head: Head,
    pub kernels: Kernels,
}

/// What a step's head gives for each of its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Head {
    Logits,
    /// The greedy token.
    Argmax,
    /// A token sampled on the GPU under settings written before each replay.
    Sample,
}

impl StepShape {
    /// A decode shape: one token in, its greedy or sampled token out, which the forward
    /// also copies into its own input ids, so a next step can be submitted before this
    /// one's token is read back ([`Session::decode`]).
    fn chains_tokens(&self) -> bool {
        self.tokens == 1 && self.head != Head::Logits && self.rows == HeadRows::Last
    }
}

/// The rows that get logits (or an argmax token).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HeadRows {
    Last,
    All,
    /// `n` rows listed per step (one per sequence of a batched step).
    Listed(usize),
}

/// A recorded forward for one step shape, replayed every step of that shape.
pub(crate) struct Workspace {
    pub shape: StepShape,
    recording: Recorder,
    ids: GpuTensor,
    positions: TokenPositions,
    /// `[n]` rows of the step that get logits, for `HeadRows::Listed(n)`.
    head_rows: Option<GpuTensor>,
    /// For `Head::Sample`: each head row's [`RowSampling`] (`[rows, 4]`, written before
    /// each replay).
    sampling: Option<GpuTensor>,
    /// Where results land: one buffer, or for the greedy decode shape one per step in
    /// flight, so that one step's results can be read while the next steps run.
    results: Vec<ResultBuffer>,
    head_words: usize,
    /// Each MoE layer's routing record, read back after the head in this order.
    routing: Vec<RoutingRecord>,
}

/// A MAP_READ buffer (the head, tokens or logits, then each layer's routing record)
/// with the copies that fill it, encoded after the forward.
struct ResultBuffer {
    buffer: wgpu::Buffer,
    copies: Recorder,
}

/// A workspace's readback: the head (argmax tokens, or logits as f32 bits) and the
/// routing counts.
pub(crate) struct Replay {
    pub head: Vec<u32>,
    pub routing_counts: Vec<u32>,
}

impl Workspace {
    pub(crate) fn new(ctx: &GpuContext, model: &Model, caches: &[KvCache], shape: StepShape) -> Result<Self> {
        let ids = GpuTensor::empty(ctx, "token ids", &[shape.tokens], DType::U32)?;
        let positions = model.new_positions(ctx, shape.tokens)?;
        let head_rows = match shape.rows {
            HeadRows::Listed(n) => Some(GpuTensor::empty(ctx, "rows with logits", &[n], DType::U32)?),
            _ => None,
        };
        let mut recording = Recorder::new();
        let logit_rows = match (shape.rows, &head_rows) {
            (HeadRows::All, _) => LogitRows::All,
            (HeadRows::Listed(_), Some(rows)) => LogitRows::Listed(rows),
            _ => LogitRows::Last,
        };
        let out = model.record_forward(ctx, &mut recording, &ids, &positions, caches, logit_rows, shape.kernels)?;
        recording.section("sampling");
        let rows = out.logits.shape[0];
        let mut sampling = None;
        let head = match shape.head {
            Head::Logits => out.logits,
            Head::Argmax => {
                let tokens = GpuTensor::empty(ctx, "greedy tokens", &[rows], DType::U32)?;
                encode_argmax(ctx, &mut recording, &out.logits, &tokens);
                tokens
            }
            Head::Sample => {
                let tokens = GpuTensor::empty(ctx, "sampled tokens", &[rows], DType::U32)?;
                let settings = GpuTensor::empty(ctx, "sampling settings", &[rows, 4], DType::U32)?;
                let details = GpuTensor::empty(ctx, "sampling details", &[rows, 4], DType::U32)?;
                encode_sample(ctx, &mut recording, &out.logits, &settings, &tokens, &details)?;
                sampling = Some(settings);
                tokens
            }
        };
        let chained = shape.chains_tokens();
        if chained {
            // The chosen token becomes the next step's input without leaving the GPU.
            recording.copy(&head.buffer, 0, &ids.buffer, 0, 4);
        }
        let head_words = head.len();
        let words = head_words + out.routing.iter().map(|r| r.tensor().len()).sum::<usize>();
        ctx.check_binding("the step readback", (words * 4) as u64)?;
        let results = (0..if chained { DECODE_AHEAD + 1 } else { 1 })
            .map(|_| {
                let buffer = ctx.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("step readback"),
                    size: (words * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut copies = Recorder::new();
                copies.copy(&head.buffer, 0, &buffer, 0, (head_words * 4) as u64);
                let mut offset = head_words;
                for record in &out.routing {
                    let t = record.tensor();
                    copies.copy(&t.buffer, 0, &buffer, (offset * 4) as u64, (t.len() * 4) as u64);
                    offset += t.len();
                }
                ResultBuffer { buffer, copies }
            })
            .collect();
        Ok(Self {
            shape,
            recording,
            ids,
            positions,
            head_rows,
            sampling,
            results,
            head_words,
            routing: out.routing,
        })
    }

    /// Writes this step's inputs (ids, each token's slot and position, the rows that
    /// get logits, for a sampling head each row's draw), submits the recording once and
    /// maps the readback. `lengths`: the length each token's forward counts as for a
    /// dynamic NTK RoPE (else where its sequence ends in this step).
    pub(crate) async fn replay(
        &self,
        ctx: &GpuContext,
        ids: &[u32],
        placed: &[(usize, usize)],
        lengths: Option<&[usize]>,
        head_rows: &[u32],
        draws: &[RowSampling],
    ) -> Result<Replay> {
        let submission = self
            .submit(ctx, Some(ids), placed, lengths, head_rows, draws, 0)
            .await?;
        self.read(ctx, 0, submission).await
    }

    /// Writes a step's inputs and submits its forward with the copies into result
    /// buffer `slot`. `ids: None` keeps the ids on the GPU: for a decode shape, the
    /// token the previous submitted step chose.
    #[allow(clippy::too_many_arguments)]
    async fn submit(
        &self,
        ctx: &GpuContext,
        ids: Option<&[u32]>,
        placed: &[(usize, usize)],
        lengths: Option<&[usize]>,
        head_rows: &[u32],
        draws: &[RowSampling],
        slot: usize,
    ) -> Result<wgpu::SubmissionIndex> {
        ctx.scoped("model forward", || {
            if let Some(ids) = ids {
                ctx.queue.write_buffer(&self.ids.buffer, 0, bytemuck::cast_slice(ids));
            }
            self.write_positions(ctx, placed, lengths);
            if let Some(rows) = &self.head_rows {
                ctx.queue.write_buffer(&rows.buffer, 0, bytemuck::cast_slice(head_rows));
            }
            if let Some(settings) = &self.sampling {
                debug_assert_eq!(draws.len() * 4, settings.len(), "one draw per head row");
                ctx.queue.write_buffer(&settings.buffer, 0, bytemuck::cast_slice(draws));
            }
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            self.recording.encode(&mut encoder);
            self.results[slot].copies.encode(&mut encoder);
            Ok(ctx.queue.submit([encoder.finish()]))
        })
        .await
    }

    /// Submits a step of a decode shape at `position` with `draw` (for a sampling
    /// head), into result buffer `slot`; `id: None` takes the token the previous
    /// submitted step chose.
    async fn submit_decode(
        &self,
        ctx: &GpuContext,
        id: Option<u32>,
        position: usize,
        draw: RowSampling,
        slot: usize,
    ) -> Result<wgpu::SubmissionIndex> {
        debug_assert!(self.shape.chains_tokens());
        let ids = id.map(|id| [id]);
        let placed = [(0, position)];
        self.submit(
            ctx,
            ids.as_ref().map(|i| &i[..]),
            &placed,
            Some(&[position + 1]),
            &[],
            &[draw],
            slot,
        )
        .await
    }

    /// Maps result buffer `slot` once `submission`, the step that fills it, is done.
    async fn read(&self, ctx: &GpuContext, slot: usize, submission: wgpu::SubmissionIndex) -> Result<Replay> {
        let buffer = &self.results[slot].buffer;
        let bytes = map_read_after(ctx, buffer, "the step's results", Some(submission)).await?;
        let words: &[u32] = bytemuck::cast_slice(&bytes);
        let (head, mut rest) = words.split_at(self.head_words);
        let mut routing_counts = Vec::new();
        for record in &self.routing {
            let (layer, next) = rest.split_at(record.tensor().len());
            routing_counts.extend(record.counts(layer));
            rest = next;
        }
        Ok(Replay {
            head: head.to_vec(),
            routing_counts,
        })
    }

    /// Like [`Self::replay`], timing each kernel instead of reading results back.
    pub(crate) async fn profile(
        &self,
        ctx: &GpuContext,
        ids: &[u32],
        placed: &[(usize, usize)],
    ) -> Result<Vec<KernelTime>> {
        ctx.queue.write_buffer(&self.ids.buffer, 0, bytemuck::cast_slice(ids));
        self.write_positions(ctx, placed, None);
        profile(ctx, &self.recording).await
    }

    /// Writes each token's slot and position.
    fn write_positions(&self, ctx: &GpuContext, placed: &[(usize, usize)], lengths: Option<&[usize]>) {
        match lengths {
            Some(lengths) => self.positions.set_with_lengths(ctx, placed, lengths),
            None => self.positions.set(ctx, placed),
        }
    }
}

/// One sequence being generated: KV cache, position, routing statistics, workspaces.
pub struct Session {
    caches: Vec<KvCache>,
    /// Positions the KV cache holds.
    pub max_context: usize,
    position: usize,
    /// The decode workspaces (one token, greedy or logits) and the last two others,
    /// most recently used last (a chunked prompt takes two: full chunks and the rest).
    workspaces: Vec<Workspace>,
    /// Most tokens one forward of [`Self::step`] takes: longer inputs run in chunks of
    /// this many (default [`DEFAULT_PREFILL_CHUNK`]). Lowered by itself when a chunk's
    /// activations pass the adapter's storage binding limit.
    pub prefill_chunk: usize,
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
        let caches = model.new_caches(ctx, 1, max_context)?;
        Ok(Self {
            caches,
            max_context,
            position: 0,
            workspaces: Vec::new(),
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
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
        self.caches.iter().map(KvCache::bytes).sum()
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
        let shape = StepShape {
            tokens,
            rows: match read {
                Readback::AllLogits => HeadRows::All,
                _ => HeadRows::Last,
            },
            head: match read {
                Readback::Argmax => Head::Argmax,
                _ => Head::Logits,
            },
            kernels: Kernels::BySize,
        };
        self.workspace_of(ctx, model, shape)
    }

    /// The workspace of `shape`, recorded on first use.
    fn workspace_of(&mut self, ctx: &GpuContext, model: &Model, shape: StepShape) -> Result<usize> {
        let tokens = shape.tokens;
        if let Some(i) = self.workspaces.iter().position(|w| w.shape == shape) {
            let ws = self.workspaces.remove(i);
            self.workspaces.push(ws);
            return Ok(self.workspaces.len() - 1);
        }
        // Keep single-token workspaces (decode) and the two most recent others.
        let multi = self.workspaces.iter().filter(|w| w.shape.tokens > 1).count();
        if tokens > 1 && multi >= 2 {
            if let Some(i) = self.workspaces.iter().position(|w| w.shape.tokens > 1) {
                self.workspaces.remove(i);
            }
        }
        let ws = Workspace::new(ctx, model, &self.caches, shape)?;
        self.workspaces.push(ws);
        Ok(self.workspaces.len() - 1)
    }

    /// Checks `ids`, and gives the workspace for them and where each goes.
    fn prepare_step(
        &mut self,
        ctx: &GpuContext,
        model: &Model,
        ids: &[u32],
        read: Readback,
    ) -> Result<(usize, Vec<(usize, usize)>)> {
        self.check_input(model, ids)?;
        let i = self.workspace(ctx, model, ids.len(), read)?;
        let placed = (0..ids.len()).map(|t| (0, self.position + t)).collect();
        Ok((i, placed))
    }

    /// Runs `ids` at the session's position, advances the position, and reads back what
    /// `read` asks for plus the routing counts of the step. Up to `prefill_chunk` tokens
    /// run as one forward (one submit, one readback); longer inputs run as consecutive
    /// forwards of at most that many, which give what one forward would: each chunk
    /// attends to the cache the earlier ones filled, and a dynamic NTK RoPE scales every
    /// chunk by the whole input's end. So a prompt's activations never need more than a
    /// chunk's memory, whatever its length. On an error the position stays where it was.
    pub async fn step(&mut self, ctx: &GpuContext, model: &Model, ids: &[u32], read: Readback) -> Result<StepOutput> {
        self.check_input(model, ids)?;
        let (start, chunk) = (self.position, self.prefill_chunk);
        let result = self.step_in_chunks(ctx, model, ids, read).await;
        match &result {
            Ok(out) => {
                for (total, &c) in self.routing_totals.iter_mut().zip(&out.routing_counts) {
                    *total += c as u64;
                }
            }
            Err(_) => (self.position, self.prefill_chunk) = (start, chunk),
        }
        result
    }

    /// The chunks of [`Self::step`]: all but the last read back only a greedy token
    /// (the cheapest head), unless every row's logits are asked for.
    async fn step_in_chunks(
        &mut self,
        ctx: &GpuContext,
        model: &Model,
        ids: &[u32],
        read: Readback,
    ) -> Result<StepOutput> {
        let end = self.position + ids.len();
        let mut output = StepOutput {
            token: None,
            logits: Vec::new(),
            routing_counts: vec![0; self.routing_totals.len()],
        };
        let mut rest = ids;
        while !rest.is_empty() {
            let n = rest.len().min(self.chunk_tokens(ctx, model, read));
            let last = n == rest.len();
            let chunk_read = if last || read == Readback::AllLogits {
                read
            } else {
                Readback::Argmax
            };
            let i = match self.workspace(ctx, model, n, chunk_read) {
                Ok(i) => i,
                // A chunk's activations past a limit of the adapter: smaller chunks.
                Err(Error::ExceedsLimit { .. }) if n > 1 => {
                    self.prefill_chunk = n / 2;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let placed: Vec<(usize, usize)> = (0..n).map(|t| (0, self.position + t)).collect();
            let lengths = vec![end; n];
            let out = self.workspaces[i]
                .replay(ctx, &rest[..n], &placed, Some(&lengths), &[], &[])
                .await?;
            self.position += n;
            rest = &rest[n..];
            for (sum, &c) in output.routing_counts.iter_mut().zip(&out.routing_counts) {
                *sum += c;
            }
            match chunk_read {
                Readback::Argmax if last => output.token = Some(out.head[0]),
                Readback::Argmax => {}
                _ => output.logits.extend(out.head.iter().map(|w| f32::from_bits(*w))),
            }
        }
        Ok(output)
    }

    /// Most tokens one forward of a step reading `read` takes: `prefill_chunk`, and for
    /// every row's logits no more rows than the adapter's storage binding holds.
    fn chunk_tokens(&self, ctx: &GpuContext, model: &Model, read: Readback) -> usize {
        let mut tokens = self.prefill_chunk.max(1);
        if read == Readback::AllLogits {
            let row_bytes = (model.config.vocab_size * 4) as u64;
            tokens = tokens.min((ctx.max_binding_bytes() / row_bytes).max(1) as usize);
        }
        tokens
    }

    /// Runs `ids` at the session's position as [`Self::step`] would (greedy), timing
    /// each kernel of the forward (see [`crate::gpu::profile`]); advances the position.
    pub async fn profile_step(&mut self, ctx: &GpuContext, model: &Model, ids: &[u32]) -> Result<Vec<KernelTime>> {
        let (i, placed) = self.prepare_step(ctx, model, ids, Readback::Argmax)?;
        let times = self.workspaces[i].profile(ctx, ids, &placed).await?;
        self.position += ids.len();
        Ok(times)
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

    /// Decodes up to `max_tokens` tokens after `first`, from the session's position,
    /// each chosen as `sampler` says. Greedy, and on a GPU kernel target sampled too,
    /// the token is chosen on the GPU (the argmax, or the `sample` kernel with the
    /// sampler's next draw), with steps submitted ahead: steps k + 1
    /// ..= k + [`DECODE_AHEAD`] are in the queue while step k's token is read back,
    /// each step's input being the token of the one before, which the GPU copies into
    /// the step's ids itself. So the wait for a readback (in a browser, a round trip
    /// through its GPU process that outlasts a small model's step) overlaps the GPU's
    /// work instead of adding to it, and only the token and the routing record come
    /// back, never the logits. Each token goes to `accept` with the routing counts of
    /// the forward that chose it, in order; `accept` returning false stops the decode.
    /// Stops early at the end of the context. The position advances by the tokens
    /// accepted (or produced before an error); steps submitted past the last one
    /// accepted are discarded (their draws too), and the cache rows they wrote are
    /// overwritten by whatever runs at those positions next. Gives the number of
    /// tokens produced.
    ///
    /// Sampled where [`samples_on_gpu`] says no (a CPU kernel target), each step's
    /// logits are read back and sampled on the CPU by the same rules instead, one step
    /// at a time.
    pub async fn decode(
        &mut self,
        ctx: &GpuContext,
        model: &Model,
        first: u32,
        max_tokens: usize,
        sampler: &mut Sampler,
        mut accept: impl FnMut(u32, &[u32]) -> bool,
    ) -> Result<usize> {
        let steps = max_tokens.min(self.max_context.saturating_sub(self.position));
        if steps == 0 {
            return Ok(0);
        }
        self.check_input(model, &[first])?;
        let greedy = sampler.params().is_greedy();
        if !greedy && !samples_on_gpu(ctx) {
            return self
                .decode_sampling_on_cpu(ctx, model, first, steps, sampler, accept)
                .await;
        }
        let shape = StepShape {
            tokens: 1,
            rows: HeadRows::Last,
            head: if greedy { Head::Argmax } else { Head::Sample },
            kernels: Kernels::BySize,
        };
        let i = self.workspace_of(ctx, model, shape)?;
        let workspace = &self.workspaces[i];
        let start = self.position;
        let slots = workspace.results.len();
        let mut in_flight = std::collections::VecDeque::with_capacity(slots);
        let mut submitted = 0;
        for k in 0..steps {
            // Keep the steps up to k + DECODE_AHEAD in flight.
            while submitted < steps && submitted < k + slots {
                let id = (submitted == 0).then_some(first);
                let slot = submitted % slots;
                let draw = sampler.next_draw();
                let submission = workspace.submit_decode(ctx, id, start + submitted, draw, slot).await?;
                in_flight.push_back(submission);
                submitted += 1;
            }
            let submission = in_flight.pop_front().expect("step k was submitted");
            let out = workspace.read(ctx, k % slots, submission).await?;
            self.position += 1;
            for (total, &c) in self.routing_totals.iter_mut().zip(&out.routing_counts) {
                *total += c as u64;
            }
            if !accept(out.head[0], &out.routing_counts) {
                return Ok(k + 1);
            }
        }
        Ok(steps)
    }

    /// [`Self::decode`] sampling on the CPU from each step's logits.
    async fn decode_sampling_on_cpu(
        &mut self,
        ctx: &GpuContext,
        model: &Model,
        first: u32,
        steps: usize,
        sampler: &mut Sampler,
        mut accept: impl FnMut(u32, &[u32]) -> bool,
    ) -> Result<usize> {
        let mut token = first;
        for k in 0..steps {
            let out = self.step(ctx, model, &[token], Readback::LastLogits).await?;
            token = sampler.sample(&out.logits);
            if !accept(token, &out.routing_counts) {
                return Ok(k + 1);
            }
        }
        Ok(steps)
    }

    /// [`Self::decode`] with greedy tokens.
    pub async fn decode_greedy(
        &mut self,
        ctx: &GpuContext,
        model: &Model,
        first: u32,
        max_tokens: usize,
        accept: impl FnMut(u32, &[u32]) -> bool,
    ) -> Result<usize> {
        let mut greedy = Sampler::new(SamplingParams::greedy());
        self.decode(ctx, model, first, max_tokens, &mut greedy, accept).await
    }

    /// Runs `ids` at the session's position and returns the argmax token.
    pub async fn next_greedy(&mut self, ctx: &GpuContext, model: &Model, ids: &[u32]) -> Result<u32> {
        let out = self.step(ctx, model, ids, Readback::Argmax).await?;
        Ok(out.token.unwrap_or(0))
    }
}

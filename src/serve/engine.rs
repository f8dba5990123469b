//! The GPU loop of `webmoe serve`: one thread owns the model and a [`Batch`] of
//! sequence slots, and steps every active request together (continuous batching).
//!
//! Each turn of the loop takes in new requests, gives free slots to waiting ones,
//! runs one prompt step (chunks of the waiting prompts, at most `prefill_chunk`
//! tokens) and one decode step (the next token of every generating sequence), and
//! sends each request its tokens. Prompts thus join in chunks while running streams
//! go on: a decode step waits for at most one chunk. Decode steps always use the GEMV
//! kernels and prompt steps always the same kernels (tiled on GPUs), and each row's
//! arithmetic is its own, so a request's tokens do not depend on what it was batched
//! with. A request whose receiver is gone (client disconnected, or a stop
//! string found) frees its slot at the next turn.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::error::{Error, ErrorKind, Result};
use crate::gpu::{GpuContext, KernelTarget};
use crate::model::batch::{Batch, BatchEntry, BatchRead};
use crate::model::generate::{Sampler, SamplingParams};
use crate::model::model::{Kernels, Model};
use crate::ops::sampling::{samples_on_gpu, RowSampling};
use crate::serve::metrics::Metrics;

/// How the engine batches.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// Sequences generated at once (KV-cache slots).
    pub max_sequences: usize,
    /// Positions per sequence (prompt + generated).
    pub context: usize,
    /// Prompt tokens per prompt step, over all waiting prompts.
    pub prefill_chunk: usize,
    /// Requests waiting for a slot before new ones are refused.
    pub max_queue: usize,
    /// Kernels of prompt steps (decode steps always use GEMV): see [`prompt_kernels_for`].
    pub prompt_kernels: Kernels,
}

/// The kernels for prompt steps on a `target` device. Tiles reuse each weight across a block
/// of rows, which pays on a GPU; on a CPU adapter (lavapipe, SwiftShader) a tile's
/// padding rows cost real time and GEMV is faster: prompt chunks of up to 16 tokens of
/// the embedded model took 1.4 s tiled on average and at most 0.95 s as GEMV on lavapipe.
pub fn prompt_kernels_for(target: KernelTarget) -> Kernels {
    match target {
        KernelTarget::Cpu => Kernels::Gemv,
        KernelTarget::Gpu => Kernels::Tiled,
    }
}

/// One generation request.
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end the generation (EOS), not sent.
    pub stop_ids: Vec<u32>,
    /// Where the tokens go; dropping the receiver cancels the request.
    pub events: UnboundedSender<Event>,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token.
    Stop,
    /// `max_tokens` or the context reached.
    Length,
}

/// What the engine sends a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token (end-of-sequence tokens are not sent).
    Token(u32),
    Done(Finish),
    /// The request failed; `kind` maps to an HTTP status.
    Failed {
        kind: ErrorKind,
        message: String,
    },
}

/// Refusals at submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
    Invalid(String),
}

enum Command {
    Generate(Request),
    Shutdown { grace: Duration },
}

/// The handle HTTP handlers use; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    pub metrics: Arc<Metrics>,
    pub options: EngineOptions,
    pub vocab_size: usize,
}

impl EngineHandle {
    /// Queues `request`, or refuses it at once (queue full, shutting down, bad input).
    pub fn submit(&self, request: Request) -> std::result::Result<(), SubmitError> {
        if request.prompt.is_empty() {
            return Err(SubmitError::Invalid("the prompt has no tokens".into()));
        }
        if request.prompt.len() >= self.options.context {
            return Err(SubmitError::Invalid(format!(
                "the prompt has {} tokens; the context holds {} positions, and at least one must be left to generate",
                request.prompt.len(),
                self.options.context
            )));
        }
        if let Some(bad) = request.prompt.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(SubmitError::Invalid(format!(
                "token id {bad} is not below the vocabulary size {}",
                self.vocab_size
            )));
        }
        if self.metrics.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let queued = self.metrics.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.options.max_queue as u64 {
            self.metrics.queued.fetch_sub(1, Ordering::SeqCst);
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::QueueFull);
        }
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        self.commands.send(Command::Generate(request)).map_err(|_| {
            self.metrics.queued.fetch_sub(1, Ordering::SeqCst);
            SubmitError::ShuttingDown
        })
    }

    /// Stops taking requests, lets running and waiting ones finish for up to `grace`,
    /// then ends the rest with an error event; the engine thread then exits.
    pub fn shutdown(&self, grace: Duration) {
        self.metrics.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.commands.send(Command::Shutdown { grace });
    }
}

struct Sequence {
    slot: usize,
    request: Request,
    sampler: Sampler,
    /// Prompt tokens fed so far.
    fed: usize,
    /// The last token sampled, to feed at the next decode step.
    next: Option<u32>,
    /// `next` is not sent yet.
    unsent: bool,
    generated: usize,
    started: Instant,
}

impl Sequence {
    fn prefilling(&self) -> bool {
        self.fed < self.request.prompt.len()
    }
}

/// The engine: the model, its batch and the requests.
pub struct Engine {
    ctx: Arc<GpuContext>,
    model: Arc<Model>,
    batch: Batch,
    options: EngineOptions,
    metrics: Arc<Metrics>,
    waiting: VecDeque<Request>,
    running: Vec<Sequence>,
    shutdown_at: Option<Instant>,
}

impl Engine {
    /// Allocates the batch's KV caches and starts the GPU loop on its own thread.
    pub fn start(ctx: Arc<GpuContext>, model: Arc<Model>, options: EngineOptions) -> Result<EngineHandle> {
        if options.max_sequences == 0 || options.prefill_chunk == 0 {
            return Err(Error::Config(
                "max_sequences and prefill_chunk must be at least 1".into(),
            ));
        }
        let batch = Batch::new(&ctx, &model, options.max_sequences, options.context)?;
        let metrics = Arc::new(Metrics::new(model.moe_layers(), model.config.moe.num_experts()));
        metrics
            .kv_bytes_per_position
            .store(batch.cache_bytes_per_position(), Ordering::Relaxed);
        let (commands, receiver) = mpsc::channel();
        let handle = EngineHandle {
            commands,
            metrics: metrics.clone(),
            options,
            vocab_size: model.config.vocab_size,
        };
        let engine = Engine {
            ctx,
            model,
            batch,
            options,
            metrics,
            waiting: VecDeque::new(),
            running: Vec::new(),
            shutdown_at: None,
        };
        std::thread::Builder::new()
            .name("webmoe-gpu".into())
            .spawn(move || engine.run(receiver))
            .map_err(|e| Error::Config(format!("could not start the GPU thread: {e}")))?;
        Ok(handle)
    }

    fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                if self.shutdown_at.is_some() {
                    break;
                }
                match commands.recv() {
                    Ok(command) => self.take(command),
                    Err(_) => break,
                }
            }
            while let Ok(command) = commands.try_recv() {
                self.take(command);
            }
            if self.shutdown_at.is_some_and(|deadline| Instant::now() >= deadline) {
                let message = "the server shut down before this request finished";
                for r in self.waiting.drain(..) {
                    self.metrics.queued.fetch_sub(1, Ordering::SeqCst);
                    fail(&r.events, ErrorKind::Unsupported, message);
                }
                self.end_running(ErrorKind::Unsupported, message);
                break;
            }
            self.drop_cancelled();
            self.admit();
            if let Err(e) = self.turn() {
                self.fail_all(&e);
            }
            self.publish();
        }
        self.publish();
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Generate(r) => self.waiting.push_back(r),
            Command::Shutdown { grace } => self.shutdown_at = Some(Instant::now() + grace),
        }
    }

    fn drop_cancelled(&mut self) {
        let batch = &mut self.batch;
        let metrics = &self.metrics;
        self.running.retain(|s| {
            let open = !s.request.events.is_closed();
            if !open {
                batch.release(s.slot);
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            open
        });
        let before = self.waiting.len();
        self.waiting.retain(|r| !r.events.is_closed());
        let gone = (before - self.waiting.len()) as u64;
        self.metrics.queued.fetch_sub(gone, Ordering::SeqCst);
        self.metrics.cancelled.fetch_add(gone, Ordering::Relaxed);
    }

    fn admit(&mut self) {
        while !self.waiting.is_empty() {
            let Some(slot) = self.batch.acquire() else { break };
            let request = self.waiting.pop_front().expect("checked");
            self.metrics.queued.fetch_sub(1, Ordering::SeqCst);
            self.running.push(Sequence {
                slot,
                sampler: Sampler::new(request.sampling),
                request,
                fed: 0,
                next: None,
                unsent: false,
                generated: 0,
                started: Instant::now(),
            });
        }
    }

    /// One prompt step and one decode step.
    fn turn(&mut self) -> Result<()> {
        // Prompt chunks, oldest requests first, `prefill_chunk` tokens in all.
        let mut budget = self.options.prefill_chunk;
        let mut chunks: Vec<(usize, usize, usize)> = Vec::new(); // (sequence, from, to)
        for (i, s) in self.running.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if s.prefilling() {
                let n = (s.request.prompt.len() - s.fed).min(budget);
                chunks.push((i, s.fed, s.fed + n));
                budget -= n;
            }
        }
        if !chunks.is_empty() {
            let finishing: Vec<bool> = chunks
                .iter()
                .map(|&(i, _, to)| to == self.running[i].request.prompt.len())
                .collect();
            let greedy = chunks
                .iter()
                .zip(&finishing)
                .all(|(&(i, _, _), &f)| !f || self.running[i].request.sampling.is_greedy());
            let taking = chunks.iter().zip(&finishing).map(|(&(i, _, _), &f)| (i, f));
            let draws = self.draws_on_gpu(greedy, taking);
            let entries: Vec<BatchEntry> = chunks
                .iter()
                .map(|&(i, from, to)| {
                    let prompt = &self.running[i].request.prompt;
                    BatchEntry {
                        slot: self.running[i].slot,
                        tokens: &prompt[from..to],
                        prompt_end: Some(prompt.len()),
                    }
                })
                .collect();
            let read = read_for(greedy, &draws);
            let clock = Instant::now();
            let kernels = self.options.prompt_kernels;
            let out = pollster::block_on(self.batch.step(&self.ctx, &self.model, &entries, read, kernels))?;
            let fed: usize = chunks.iter().map(|&(_, from, to)| to - from).sum();
            self.metrics.record_prefill(fed, clock.elapsed(), &out.routing_counts);
            for (k, &(i, _, to)) in chunks.iter().enumerate() {
                self.running[i].fed = to;
                if finishing[k] {
                    let token = pick(&mut self.running[i].sampler, &out, k, self.model.config.vocab_size);
                    self.running[i].next = Some(token);
                    self.running[i].unsent = true;
                    self.metrics
                        .first_token_seconds
                        .observe(self.running[i].started.elapsed().as_secs_f64());
                }
            }
            self.deliver();
        }
        // One token of every generating sequence.
        let decoding: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].next.is_some())
            .collect();
        if !decoding.is_empty() {
            let tokens: Vec<[u32; 1]> = decoding.iter().map(|&i| [self.running[i].next.unwrap_or(0)]).collect();
            let entries: Vec<BatchEntry> = decoding
                .iter()
                .zip(&tokens)
                .map(|(&i, t)| BatchEntry::new(self.running[i].slot, t))
                .collect();
            let greedy = decoding.iter().all(|&i| self.running[i].request.sampling.is_greedy());
            let draws = self.draws_on_gpu(greedy, decoding.iter().map(|&i| (i, true)));
            let read = read_for(greedy, &draws);
            let clock = Instant::now();
            let out = pollster::block_on(self.batch.step(&self.ctx, &self.model, &entries, read, Kernels::Gemv))?;
            self.metrics
                .record_decode(decoding.len(), clock.elapsed(), &out.routing_counts);
            for (k, &i) in decoding.iter().enumerate() {
                let token = pick(&mut self.running[i].sampler, &out, k, self.model.config.vocab_size);
                self.running[i].next = Some(token);
                self.running[i].unsent = true;
            }
            self.deliver();
        }
        Ok(())
    }

    /// The draws of a step that samples for some entry (not `greedy`) where sampling
    /// runs on the GPU ([`samples_on_gpu`]): for each `(sequence, takes a token)` of
    /// the step's entries, its sampler's next draw, or greedy for an entry that gets no
    /// token. Empty otherwise: the step reads logits and [`pick`] samples them on the
    /// CPU by the same rules.
    fn draws_on_gpu(&mut self, greedy: bool, entries: impl Iterator<Item = (usize, bool)>) -> Vec<RowSampling> {
        if greedy || !samples_on_gpu(&self.ctx) {
            return Vec::new();
        }
        entries
            .map(|(i, takes)| {
                if takes {
                    self.running[i].sampler.next_draw()
                } else {
                    RowSampling::default()
                }
            })
            .collect()
    }

    /// Sends each newly sampled token and ends the sequences that stop (EOS,
    /// `max_tokens`, a full context) or whose receiver is gone.
    fn deliver(&mut self) {
        let context = self.batch.max_context;
        let mut i = 0;
        while i < self.running.len() {
            let s = &mut self.running[i];
            let token = match s.next {
                Some(token) if s.unsent => token,
                _ => {
                    i += 1;
                    continue;
                }
            };
            s.unsent = false;
            let finish = if s.request.stop_ids.contains(&token) {
                Some(Some(Finish::Stop))
            } else if s.request.events.send(Event::Token(token)).is_err() {
                Some(None)
            } else {
                s.generated += 1;
                self.metrics.generated.fetch_add(1, Ordering::Relaxed);
                // (Counted after the send: a reader may see one token fewer for a moment.)
                let full = self.batch.position(s.slot) >= context;
                (s.generated >= s.request.max_tokens || full).then_some(Some(Finish::Length))
            };
            match finish {
                None => i += 1,
                Some(reason) => {
                    match reason {
                        Some(f) => {
                            self.metrics.completed.fetch_add(1, Ordering::Relaxed);
                            let _ = s.request.events.send(Event::Done(f));
                        }
                        None => {
                            self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let slot = s.slot;
                    self.batch.release(slot);
                    self.running.remove(i);
                }
            }
        }
    }

    fn fail_all(&mut self, error: &Error) {
        self.end_running(error.kind(), &error.to_string());
        self.metrics.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends every running sequence with an error event and frees its slot.
    fn end_running(&mut self, kind: ErrorKind, message: &str) {
        for s in std::mem::take(&mut self.running) {
            fail(&s.request.events, kind, message);
            self.batch.release(s.slot);
        }
    }

    fn publish(&self) {
        self.metrics.active.store(self.running.len() as u64, Ordering::Relaxed);
    }
}

fn fail(events: &UnboundedSender<Event>, kind: ErrorKind, message: &str) {
    let _ = events.send(Event::Failed {
        kind,
        message: message.to_string(),
    });
}

/// How a step reads its tokens: greedy, sampled on the GPU under `draws` (the
/// samplers' next, one per entry; greedy for entries that get no token), or (no
/// draws) logits for [`pick`] to sample.
fn read_for(greedy: bool, draws: &[RowSampling]) -> BatchRead<'_> {
    match (greedy, draws.is_empty()) {
        (true, _) => BatchRead::Argmax,
        (false, false) => BatchRead::Sample(draws),
        (false, true) => BatchRead::Logits,
    }
}

/// Entry `k`'s token from a step's output.
fn pick(sampler: &mut Sampler, out: &crate::model::batch::BatchOutput, k: usize, vocab: usize) -> u32 {
    if out.tokens.is_empty() {
        sampler.sample(&out.logits[k * vocab..][..vocab])
    } else {
        out.tokens[k]
    }
}

//! Server metrics in Prometheus' text exposition format (`GET /metrics`).
//!
//! Hand-written: the format is a few lines of `name value` per metric, and the values
//! are atomics the GPU thread already updates; a metrics registry crate would add
//! global state for a dozen numbers.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Counters and gauges shared by the GPU thread and the HTTP handlers.
pub struct Metrics {
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub generated: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub queued: AtomicU64,
    pub active: AtomicU64,
    pub shutting_down: std::sync::atomic::AtomicBool,
    pub kv_bytes_per_position: AtomicU64,
    pub first_token_seconds: Summary,
    steps: Mutex<StepStats>,
    moe_layers: usize,
    experts: usize,
}

#[derive(Default)]
struct StepStats {
    decode_steps: u64,
    decode_tokens: u64,
    decode_seconds: f64,
    prefill_steps: u64,
    prefill_seconds: f64,
    /// Exponential moving average of decode tokens per second (all sequences).
    decode_rate: f64,
    /// `[MoE layers * experts]` assignments routed, all steps.
    expert_load: Vec<u64>,
}

/// Count and sum of observations (a Prometheus summary without quantiles).
#[derive(Default)]
pub struct Summary {
    inner: Mutex<(u64, f64)>,
}

impl Summary {
    pub fn observe(&self, value: f64) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        s.1 += value;
    }
}

impl Metrics {
    pub fn new(moe_layers: usize, experts: usize) -> Self {
        Self {
            requests: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            generated: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            active: AtomicU64::new(0),
            shutting_down: Default::default(),
            kv_bytes_per_position: AtomicU64::new(0),
            first_token_seconds: Summary::default(),
            steps: Mutex::new(StepStats {
                expert_load: vec![0; moe_layers * experts],
                ..Default::default()
            }),
            moe_layers,
            experts,
        }
    }

    fn add_load(stats: &mut StepStats, routing_counts: &[u32]) {
        for (total, &c) in stats.expert_load.iter_mut().zip(routing_counts) {
            *total += c as u64;
        }
    }

    pub fn record_decode(&self, tokens: usize, time: Duration, routing_counts: &[u32]) {
        let mut s = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        s.decode_steps += 1;
        s.decode_tokens += tokens as u64;
        s.decode_seconds += time.as_secs_f64();
        let rate = tokens as f64 / time.as_secs_f64().max(1e-9);
        s.decode_rate = if s.decode_steps == 1 {
            rate
        } else {
            0.9 * s.decode_rate + 0.1 * rate
        };
        Self::add_load(&mut s, routing_counts);
    }

    pub fn record_prefill(&self, tokens: usize, time: Duration, routing_counts: &[u32]) {
        self.prompt_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        let mut s = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        s.prefill_steps += 1;
        s.prefill_seconds += time.as_secs_f64();
        Self::add_load(&mut s, routing_counts);
    }

    /// The Prometheus text page.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric =
            |name: &str, kind: &str, help: &str, value: String| write_metric(&mut out, name, kind, help, &value);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        metric(
            "requests_total",
            "counter",
            "Generation requests accepted.",
            get(&self.requests),
        );
        metric(
            "requests_rejected_total",
            "counter",
            "Requests refused because the queue was full.",
            get(&self.rejected),
        );
        metric(
            "requests_completed_total",
            "counter",
            "Requests that finished (stop or length).",
            get(&self.completed),
        );
        metric(
            "requests_cancelled_total",
            "counter",
            "Requests whose client went away before the end.",
            get(&self.cancelled),
        );
        metric(
            "gpu_failures_total",
            "counter",
            "Steps that failed on the GPU.",
            get(&self.failed),
        );
        metric(
            "generated_tokens_total",
            "counter",
            "Tokens generated and sent.",
            get(&self.generated),
        );
        metric(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens run.",
            get(&self.prompt_tokens),
        );
        metric(
            "queue_depth",
            "gauge",
            "Requests waiting for a sequence slot.",
            get(&self.queued),
        );
        metric(
            "active_sequences",
            "gauge",
            "Sequences being generated.",
            get(&self.active),
        );
        metric(
            "kv_cache_bytes_per_position",
            "gauge",
            "KV-cache bytes one position of one sequence takes.",
            get(&self.kv_bytes_per_position),
        );
        {
            let (count, sum) = *self.first_token_seconds.inner.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                out,
                "# HELP webmoe_time_to_first_token_seconds From admission to the first token.\n# TYPE webmoe_time_to_first_token_seconds summary\nwebmoe_time_to_first_token_seconds_count {count}\nwebmoe_time_to_first_token_seconds_sum {sum}"
            );
        }
        let s = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let mut metric =
            |name: &str, kind: &str, help: &str, value: String| write_metric(&mut out, name, kind, help, &value);
        metric(
            "decode_steps_total",
            "counter",
            "Batched decode steps.",
            s.decode_steps.to_string(),
        );
        metric(
            "decode_step_tokens_total",
            "counter",
            "Tokens run in decode steps.",
            s.decode_tokens.to_string(),
        );
        metric(
            "decode_seconds_total",
            "counter",
            "Time in decode steps.",
            s.decode_seconds.to_string(),
        );
        metric(
            "prefill_steps_total",
            "counter",
            "Prompt steps.",
            s.prefill_steps.to_string(),
        );
        metric(
            "prefill_seconds_total",
            "counter",
            "Time in prompt steps.",
            s.prefill_seconds.to_string(),
        );
        metric(
            "decode_tokens_per_second",
            "gauge",
            "Decode tokens per second over all sequences (moving average of recent steps).",
            format!("{:.3}", s.decode_rate),
        );
        let _ = writeln!(
            out,
            "# HELP webmoe_expert_assignments_total Tokens routed to each expert of each MoE layer.\n# TYPE webmoe_expert_assignments_total counter"
        );
        for layer in 0..self.moe_layers {
            for expert in 0..self.experts {
                let _ = writeln!(
                    out,
                    "webmoe_expert_assignments_total{{layer=\"{layer}\",expert=\"{expert}\"}} {}",
                    s.expert_load[layer * self.experts + expert]
                );
            }
        }
        out
    }
}

fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, value: &str) {
    let _ = writeln!(
        out,
        "# HELP webmoe_{name} {help}\n# TYPE webmoe_{name} {kind}\nwebmoe_{name} {value}"
    );
}

//! `webmoe bench`: the adapter's own ceilings (copy bandwidth, FMA rate), then the
//! MoE layer on shapes of real models, each row reported as a fraction of the
//! ceiling that bounds it, next to two baselines: a naive per-expert loop with a
//! CPU routing readback, and a dense SwiGLU MLP of the same active size.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gpu::kernel::{Recorder, BENCH, BENCH_F16};
use crate::gpu::profile::KernelTime;
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::model::model::{dense_gemv_by_size, moe_gemv_by_size};
use crate::moe::{MoeConfig, MoeLayer, MoeWeights, SharedExpertConfig};
use crate::ops::attention::{attention_workgroups, decode_splits, encode_attention, AttentionOptions, KvCache};
use crate::ops::embedding::encode_embedding;
use crate::ops::expert_matmul::{encode_down, encode_gate_up, ExpertRows};
use crate::ops::router::encode_router_logits;
use crate::ops::routing::{encode_routing, Router};
use crate::ops::TokenPositions;
use crate::util::Clock;
use crate::weights::{WeightChunk, WeightFormat, WeightMatrix};

/// One MoE layer shape: a real model's hidden, expert ffn, experts, top-k, shared experts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerShape {
    pub model: String,
    pub hidden: usize,
    pub ffn: usize,
    pub experts: usize,
    pub top_k: usize,
    /// Shared experts of the same ffn (DeepSeek-V2-Lite: 2), run densely on every token.
    pub shared: usize,
}

/// The standard suite's shapes, from the models' config.json files.
pub fn model_shapes() -> Vec<LayerShape> {
    let shape = |model: &str, hidden, ffn, experts, top_k, shared| LayerShape {
        model: model.into(),
        hidden,
        ffn,
        experts,
        top_k,
        shared,
    };
    vec![
        shape("Mixtral-8x7B", 4096, 14336, 8, 2, 0),
        shape("OLMoE-1B-7B", 2048, 1024, 64, 8, 0),
        shape("Qwen3-30B-A3B", 2048, 768, 128, 8, 0),
        shape("DeepSeek-V2-Lite", 2048, 1408, 64, 6, 2),
        shape("gpt-oss-20b", 2880, 2880, 32, 4, 0),
    ]
}

/// One model's attention shape for the decode attention rows: query heads, kv heads
/// and head width (grouped-query attention with a KV cache).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionShape {
    pub model: String,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// A latent cache (multi-head latent attention): one kv head whose `head_dim`-wide
    /// keys (latent, then RoPE key) hold the values in their first `latent_values`
    /// elements. Absent from reports before it existed.
    #[serde(default)]
    pub latent_values: Option<usize>,
}

/// The decode attention rows' shapes, from the models' config.json files (DeepSeek-V2-Lite:
/// its latent cache, kv_lora_rank 512 + RoPE 64).
pub fn attention_shapes() -> Vec<AttentionShape> {
    let shape = |model: &str, heads, kv_heads, head_dim| AttentionShape {
        model: model.into(),
        heads,
        kv_heads,
        head_dim,
        latent_values: None,
    };
    vec![
        shape("Mixtral-8x7B", 32, 8, 128),
        shape("OLMoE-1B-7B", 16, 16, 128),
        shape("Qwen3-30B-A3B", 32, 4, 128),
        shape("gpt-oss-20b", 64, 8, 64),
        AttentionShape {
            latent_values: Some(512),
            ..shape("DeepSeek-V2-Lite (MLA)", 16, 1, 576)
        },
    ]
}

impl AttentionShape {
    /// FLOPs of `tokens` tokens' attention ending at position `context` - 1: each
    /// token at position p scores p + 1 keys (head_dim multiply-adds each) and weights
    /// as many values (value_dim each), per head.
    pub fn prefill_flops(&self, tokens: usize, context: usize) -> f64 {
        let keys = (tokens * (context - tokens) + tokens * (tokens + 1) / 2) as f64;
        2.0 * keys * self.heads as f64 * (self.head_dim + self.value_dim()) as f64
    }

    /// Bytes one decode token's attention must read at `context` positions: the f32
    /// keys and values of every kv head (a latent cache: its keys alone).
    pub fn bytes(&self, context: usize) -> f64 {
        let per_key = context as f64 * (self.kv_heads * self.head_dim * 4) as f64;
        if self.latent_values.is_some() {
            per_key
        } else {
            2.0 * per_key
        }
    }

    /// Values per head: `head_dim`, or the latent width.
    pub fn value_dim(&self) -> usize {
        self.latent_values.unwrap_or(self.head_dim)
    }

    /// Random queries and keys-and-values (one tensor stands for both) of `tokens`
    /// tokens from `seed`, and room for their output.
    fn inputs(&self, ctx: &GpuContext, tokens: usize, seed: u64) -> Result<(GpuTensor, GpuTensor, GpuTensor)> {
        let random_rows = |label, width: usize, seed| {
            GpuTensor::from_f32(
                ctx,
                label,
                &[tokens, width],
                &random(seed, tokens * width, 1.0),
                DType::F32,
            )
        };
        Ok((
            random_rows("bench queries", self.heads * self.head_dim, seed)?,
            random_rows("bench keys and values", self.kv_heads * self.head_dim, seed + 1)?,
            GpuTensor::empty(
                ctx,
                "bench attention output",
                &[tokens, self.heads * self.value_dim()],
                DType::F32,
            )?,
        ))
    }

    fn cache(&self, ctx: &GpuContext, dtype: DType, context: usize) -> Result<KvCache> {
        match self.latent_values {
            Some(values) => KvCache::latent_of_dtype(ctx, dtype, 1, self.head_dim, values, context),
            None => KvCache::of_dtype(ctx, dtype, 1, self.kv_heads, self.head_dim, context),
        }
    }
}

/// Decode attention (one token over a full KV cache of `context` positions) in one
/// pass and split over the context (query heads sharing their kv head's workgroup
/// unless the context turns that off), as a fraction of the copy bandwidth; and in
/// one pass with a workgroup per query head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionRow {
    pub shape: AttentionShape,
    pub context: usize,
    pub splits: usize,
    pub one_pass: Timing,
    pub split: Timing,
    /// One pass, a workgroup per query head (absent from reports before it existed).
    #[serde(default)]
    pub per_head: Option<Timing>,
    /// One pass and split over an f16 cache (the default cache; absent from reports
    /// before it existed).
    #[serde(default)]
    pub f16_one_pass: Option<Timing>,
    #[serde(default)]
    pub f16_split: Option<Timing>,
    /// Key and value bytes read.
    pub gbytes: f64,
    pub one_pass_gb_per_s: f64,
    pub split_gb_per_s: f64,
    /// The split's GB/s as a percent of the copy ceiling.
    pub split_percent_of_copy: f64,
    /// A prompt chunk's attention at the end of the same cache (absent from reports
    /// before it existed).
    #[serde(default)]
    pub prefill: Option<PrefillAttention>,
}

/// One prompt chunk of `tokens` tokens ending at the cache's last position, in one pass,
/// with a workgroup per (token, head) and with (token, head) lanes sharing workgroups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillAttention {
    pub tokens: usize,
    pub per_head: Timing,
    pub grouped: Timing,
    /// Multiply-adds x 2 of the scores and the weighted values.
    pub gflop: f64,
    pub per_head_gflop_per_s: f64,
    pub grouped_gflop_per_s: f64,
}

impl LayerShape {
    /// The `--quick` scale-down for CPU adapters: hidden and ffn divided by `factor`.
    pub fn scaled(&self, factor: usize) -> Self {
        Self {
            model: format!("{} /{factor}", self.model),
            hidden: (self.hidden / factor).max(8),
            ffn: (self.ffn / factor).max(8),
            ..self.clone()
        }
    }

    /// FLOPs of one layer on `tokens` tokens: router, k routed SwiGLU experts (gate,
    /// up, down: 3 matmuls of 2·d·ffn each) and the shared experts.
    pub fn flops(&self, tokens: usize) -> f64 {
        let (t, d, f) = (tokens as f64, self.hidden as f64, self.ffn as f64);
        let router = 2.0 * t * self.experts as f64 * d;
        let expert = 3.0 * 2.0 * d * f;
        router + t * (self.top_k + self.shared) as f64 * expert
    }

    /// Bytes that must move: each active expert's weights once (plus the shared
    /// experts' and the router's), and the f32 activations in and out;
    /// `bytes_per_weight` is fractional for block formats (4.5 bits for Q4_0: 0.5625).
    pub fn bytes(&self, tokens: usize, active_experts: usize, bytes_per_weight: f64) -> f64 {
        let (d, f) = (self.hidden as f64, self.ffn as f64);
        let per_expert = 3.0 * d * f * bytes_per_weight;
        let router = self.experts as f64 * d * 4.0;
        let activations = 2.0 * tokens as f64 * d * 4.0;
        (active_experts + self.shared) as f64 * per_expert + router + activations
    }
}

/// Median and spread of repeated timings, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub repeats: usize,
}

impl Timing {
    fn from_samples(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        Self {
            median_ms: ms[ms.len() / 2],
            min_ms: ms[0],
            max_ms: ms[ms.len() - 1],
            repeats: ms.len(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Buffer copy, counting bytes read and written.
    pub copy_gb_per_s: f64,
    /// A kernel streaming a buffer through vec4 loads (bytes read): what a shader can
    /// read, which on CPU drivers is far below a buffer copy.
    #[serde(default)]
    pub shader_read_gb_per_s: Option<f64>,
    pub f32_gflop_per_s: f64,
    /// Where the adapter has shader-f16.
    #[serde(default)]
    pub f16_gflop_per_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub shape: LayerShape,
    /// Storage format of the expert weights.
    #[serde(default = "f16_name")]
    pub weight_format: String,
    pub tokens: usize,
    /// "decode" (bandwidth-bound, GEMV path) or "prefill" (compute-bound, grouped path).
    pub regime: String,
    pub layer: Timing,
    pub active_experts: usize,
    pub gflop: f64,
    pub gbytes: f64,
    pub gflop_per_s: f64,
    pub gb_per_s: f64,
    /// Percent of the bounding ceiling: copy bandwidth for decode, FMA rate for prefill.
    pub percent_of_ceiling: f64,
    pub naive_loop: Timing,
    pub speedup_over_naive: f64,
    pub dense_same_active: Timing,
    /// Grouped layer time over the dense MLP's time (1.0 = as fast as dense).
    pub grouped_over_dense: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub webmoe_version: String,
    pub adapter: String,
    pub vendor: u32,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub features: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub timing_method: String,
    /// The kernel choices: target and the split GEMV's reduction.
    #[serde(default)]
    pub kernels: String,
    pub weight_dtype: String,
    pub ceilings: Ceilings,
    pub rows: Vec<Row>,
    /// Decode attention over long contexts, one pass against split.
    #[serde(default)]
    pub attention: Vec<AttentionRow>,
    /// Whole-model prefill and decode speeds.
    #[serde(default)]
    pub models: Vec<ModelRow>,
}

/// Prefill and decode speed of a whole model (one submit and one small readback per step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    pub model: String,
    pub prompt_tokens: usize,
    pub prefill: Timing,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens: usize,
    pub decode_tokens_per_s: f64,
    /// The same decode sampling as `webmoe run` does by default ([`BENCH_SAMPLING`]):
    /// on a GPU kernel target in the `sample` kernel, on a CPU one from read-back logits.
    #[serde(default)]
    pub sampled_decode_tokens_per_s: f64,
    /// With `--profile`: GPU time per kernel of one prefill of the prompt and of one
    /// decode step after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefill_profile: Vec<KernelTime>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decode_profile: Vec<KernelTime>,
}

/// How the whole-model rows' sampled decode draws: `webmoe run`'s defaults.
pub const BENCH_SAMPLING: crate::model::generate::SamplingParams = crate::model::generate::SamplingParams {
    temperature: 0.8,
    top_k: 0,
    top_p: 0.95,
    seed: 0,
};

/// Times a prefill of `prompt_tokens` tokens (median of `repeats`) and `decode_tokens`
/// decode steps after it, greedy and sampled ([`BENCH_SAMPLING`]); with `profile`,
/// also the kernels of one prefill and one decode step.
pub async fn bench_model(
    ctx: &GpuContext,
    name: &str,
    model: &crate::model::model::Model,
    prompt_tokens: usize,
    decode_tokens: usize,
    repeats: usize,
    profile: bool,
) -> Result<ModelRow> {
    use crate::model::session::{Readback, Session};
    let mut session = Session::new(ctx, model, None)?;
    let vocab = model.config.vocab_size as u32;
    let prompt_tokens = prompt_tokens.clamp(1, model.max_context.saturating_sub(decode_tokens).max(1));
    let prompt: Vec<u32> = (0..prompt_tokens as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let mut samples = Vec::new();
    let mut token = 0;
    for _ in 0..=repeats.max(1) {
        let clock = Clock::start();
        session.rewind(0)?;
        token = session
            .step(ctx, model, &prompt, Readback::Argmax)
            .await?
            .token
            .unwrap_or(0);
        samples.push(clock.seconds() * 1e3);
    }
    samples.remove(0); // warm-up
    let prefill = Timing::from_samples(samples);
    let decode_tokens = decode_tokens.min(model.max_context - prompt_tokens);
    // Warm-up: the first decode step records its workspace and compiles its kernels.
    session.rewind(prompt_tokens)?;
    session.step(ctx, model, &[token], Readback::Argmax).await?;
    session.rewind(prompt_tokens)?;
    // Decode as generation does: the next step submitted before a token is read back.
    let clock = Clock::start();
    session
        .decode_greedy(ctx, model, token, decode_tokens, |next, _| {
            token = next;
            true
        })
        .await?;
    let decode_seconds = clock.seconds();
    // Sampled, after a step that records its workspace and compiles its kernels.
    let mut sampler = crate::model::generate::Sampler::new(BENCH_SAMPLING);
    session.rewind(prompt_tokens)?;
    session.decode(ctx, model, token, 1, &mut sampler, |_, _| true).await?;
    session.rewind(prompt_tokens)?;
    let clock = Clock::start();
    let sampled = session
        .decode(ctx, model, token, decode_tokens, &mut sampler, |_, _| true)
        .await?;
    let sampled_seconds = clock.seconds();
    let (mut prefill_profile, mut decode_profile) = (Vec::new(), Vec::new());
    if profile {
        session.rewind(0)?;
        prefill_profile = session.profile_step(ctx, model, &prompt).await?;
        decode_profile = session.profile_step(ctx, model, &[token]).await?;
    }
    Ok(ModelRow {
        model: name.to_string(),
        prompt_tokens,
        prefill_tokens_per_s: prompt_tokens as f64 / (prefill.median_ms / 1e3),
        prefill,
        decode_tokens,
        decode_tokens_per_s: decode_tokens as f64 / decode_seconds.max(1e-9),
        sampled_decode_tokens_per_s: sampled as f64 / sampled_seconds.max(1e-9),
        prefill_profile,
        decode_profile,
    })
}

fn f16_name() -> String {
    "f16".into()
}

/// Options of one run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub quick: bool,
    /// Substrings of model names to keep (empty: all).
    pub shapes: Vec<String>,
    pub repeats: usize,
    pub tokens: Vec<usize>,
    /// Expert weight formats to time (default f16).
    pub formats: Vec<WeightFormat>,
    /// Whole-model rows: prompt tokens prefilled and tokens decoded after them
    /// (default 32 and 16 with `quick`, else 512 and 64).
    pub prompt_tokens: Option<usize>,
    pub decode_tokens: Option<usize>,
    /// Whole-model rows: GPU time per kernel of a prefill and a decode step.
    pub profile: bool,
}

impl BenchOptions {
    pub fn new(quick: bool) -> Self {
        Self {
            quick,
            shapes: Vec::new(),
            repeats: if quick { 3 } else { 20 },
            tokens: if quick { vec![1, 4, 32] } else { vec![1, 4, 128, 512] },
            formats: vec![WeightFormat::F16],
            prompt_tokens: None,
            decode_tokens: None,
            profile: false,
        }
    }
}

/// Times `record` (recorded into one encoder, submitted, waited for): GPU timestamps
/// when the adapter has TIMESTAMP_QUERY_INSIDE_ENCODERS, else wall clock with a sync.
struct Timer<'a> {
    ctx: &'a GpuContext,
    queries: Option<(wgpu::QuerySet, GpuTensor)>,
}

impl<'a> Timer<'a> {
    fn new(ctx: &'a GpuContext) -> Result<Self> {
        let wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let queries = if ctx.features.contains(wanted) {
            let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolved = ctx.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            Some((
                set,
                GpuTensor {
                    buffer: resolved,
                    shape: vec![4],
                    dtype: DType::U32,
                },
            ))
        } else {
            None
        };
        Ok(Self { ctx, queries })
    }

    fn method(&self) -> &'static str {
        if self.queries.is_some() {
            "GPU timestamp queries"
        } else {
            "wall clock with a sync (no timestamp queries inside encoders)"
        }
    }

    /// Milliseconds of one run of `record`.
    async fn time(&self, record: &dyn Fn(&mut Recorder) -> Result<()>) -> Result<f64> {
        let ctx = self.ctx;
        let clock = Clock::start();
        let mut recorder = Recorder::new();
        record(&mut recorder)?;
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        if let Some((set, _)) = &self.queries {
            encoder.write_timestamp(set, 0);
        }
        recorder.encode(&mut encoder);
        if let Some((set, resolved)) = &self.queries {
            encoder.write_timestamp(set, 1);
            encoder.resolve_query_set(set, 0..2, &resolved.buffer, 0);
        }
        ctx.queue.submit([encoder.finish()]);
        match &self.queries {
            Some((_, resolved)) => {
                let words = resolved.read_u32(ctx).await?;
                let t0 = words[0] as u64 | (words[1] as u64) << 32;
                let t1 = words[2] as u64 | (words[3] as u64) << 32;
                Ok(t1.saturating_sub(t0) as f64 * ctx.queue.get_timestamp_period() as f64 / 1e6)
            }
            None => {
                // A 4-byte readback waits for the submission.
                let probe = GpuTensor::empty(ctx, "sync", &[1], DType::U32)?;
                probe.read_u32(ctx).await?;
                Ok(clock.seconds() * 1e3)
            }
        }
    }

    async fn repeat(&self, repeats: usize, record: &dyn Fn(&mut Recorder) -> Result<()>) -> Result<Timing> {
        self.time(record).await?; // warm-up: pipelines, first-touch
        let mut samples = Vec::with_capacity(repeats);
        for _ in 0..repeats.max(1) {
            samples.push(self.time(record).await?);
        }
        Ok(Timing::from_samples(samples))
    }
}

/// Copy bandwidth (GB/s, read + write) over a buffer of `bytes`.
async fn copy_ceiling(ctx: &GpuContext, timer: &Timer<'_>, bytes: u64, repeats: usize) -> Result<f64> {
    let bytes = bytes.min(ctx.limits.max_buffer_size / 2) / 4 * 4;
    let make = |label| {
        ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let (src, dst) = (make("copy source"), make("copy destination"));
    let t = timer
        .repeat(repeats, &|e| {
            e.copy(&src, 0, &dst, 0, bytes);
            Ok(())
        })
        .await?;
    Ok(2.0 * bytes as f64 / (t.median_ms / 1e3) / 1e9)
}

/// Read bandwidth (GB/s) of a kernel streaming a buffer of `bytes` through vec4 loads.
async fn shader_read_ceiling(ctx: &GpuContext, timer: &Timer<'_>, bytes: u64, repeats: usize) -> Result<f64> {
    let bytes = bytes.min(ctx.max_binding_bytes()) / 16 * 16;
    let src = ctx.create_buffer(&wgpu::BufferDescriptor {
        label: Some("read source"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let invocations: u32 = 1 << 16;
    let out = GpuTensor::empty(ctx, "read output", &[invocations as usize], DType::F32)?;
    let params = [invocations, (bytes / 16) as u32, 0, 0];
    let t = timer
        .repeat(repeats, &|e| {
            e.dispatch(
                ctx,
                BENCH.entry("read_f32"),
                &params,
                &[(1, &out.buffer), (2, &src)],
                invocations.div_ceil(256),
            );
            Ok(())
        })
        .await?;
    Ok(bytes as f64 / (t.median_ms / 1e3) / 1e9)
}

/// FMA rate (GFLOP/s) of an FMA-bound kernel in f32, or in f16 (`half`).
async fn fma_ceiling(ctx: &GpuContext, timer: &Timer<'_>, quick: bool, repeats: usize, half: bool) -> Result<f64> {
    let invocations: u32 = if quick { 1 << 14 } else { 1 << 22 };
    let iterations: u32 = if quick { 256 } else { 1024 };
    let out = GpuTensor::empty(ctx, "fma output", &[invocations as usize], DType::F32)?;
    let params = [invocations, iterations, 0, 0];
    let key = if half {
        BENCH_F16.entry("fma_f16")
    } else {
        BENCH.entry("fma_f32")
    };
    let t = timer
        .repeat(repeats, &|e| {
            e.dispatch(ctx, key, &params, &[(1, &out.buffer)], invocations.div_ceil(256));
            Ok(())
        })
        .await?;
    let flops = invocations as f64 * iterations as f64 * 64.0;
    Ok(flops / (t.median_ms / 1e3) / 1e9)
}

fn random(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Times one shape at each token count: the grouped layer, the naive loop, dense.
async fn bench_shape(
    ctx: &GpuContext,
    timer: &Timer<'_>,
    shape: &LayerShape,
    format: WeightFormat,
    options: &BenchOptions,
    ceilings: &Ceilings,
) -> Result<Vec<Row>> {
    let (d, f, e, k) = (shape.hidden, shape.ffn, shape.experts, shape.top_k);
    // Shapes whose rows are not whole blocks of the format have no row for it.
    let block = format.block_elements();
    if !(d.is_multiple_of(block) && f.is_multiple_of(block)) {
        return Ok(Vec::new());
    }
    let mut config = MoeConfig::new(d, f, e, k);
    config.weight_format = format;
    config.routing.renormalize = true;
    if shape.shared > 0 {
        config.shared_expert = Some(SharedExpertConfig {
            ffn: f * shape.shared,
            gated: false,
        });
    }
    let weights = MoeWeights::random(&config, 1, false);
    // Formats without an encoder (the K-quants) get random raw blocks.
    let matrix = |name: &str, values: &[f32], shape: [usize; 3], seed: u64| {
        WeightMatrix::random_or_encoded(ctx, name, values, shape, format, seed)
    };
    let layer = if format.can_encode() {
        MoeLayer::new(ctx, config, &weights)?
    } else {
        config.validate()?;
        MoeLayer {
            config,
            router: GpuTensor::from_f32(ctx, "router", &[e, d], &weights.router, DType::F32)?,
            router_bias: None,
            expert_biases: None,
            selection_bias: None,
            gate: matrix("experts.gate_proj", &weights.gate, [e, f, d], 2)?,
            up: matrix("experts.up_proj", &weights.up, [e, f, d], 3)?,
            down: matrix("experts.down_proj", &weights.down, [e, d, f], 4)?,
            shared: match config.shared_expert {
                None => None,
                Some(s) => Some(crate::moe::layer::SharedExpert {
                    gate: matrix("shared.gate", &[], [1, s.ffn, d], 5)?,
                    up: matrix("shared.up", &[], [1, s.ffn, d], 6)?,
                    down: matrix("shared.down", &[], [1, d, s.ffn], 7)?,
                    gate_weight: None,
                }),
            },
        }
    };
    // The naive port keeps one weight set per expert.
    let per_expert = |w: &[f32], rows: usize, cols: usize, name: &str| -> Result<Vec<WeightMatrix>> {
        (0..e)
            .map(|x| {
                matrix(
                    &format!("{name}[{x}]"),
                    &w[x * rows * cols..(x + 1) * rows * cols],
                    [1, rows, cols],
                    x as u64,
                )
            })
            .collect()
    };
    let (naive_gate, naive_up, naive_down) = (
        per_expert(&weights.gate, f, d, "gate")?,
        per_expert(&weights.up, f, d, "up")?,
        per_expert(&weights.down, d, f, "down")?,
    );
    let dense_ffn = f * (k + shape.shared);
    let dense = [
        matrix("dense gate", &random(8, dense_ffn * d, 0.05), [1, dense_ffn, d], 8)?,
        matrix("dense up", &random(9, dense_ffn * d, 0.05), [1, dense_ffn, d], 9)?,
        matrix("dense down", &random(10, d * dense_ffn, 0.05), [1, d, dense_ffn], 10)?,
    ];

    let mut rows = Vec::new();
    for &tokens in &options.tokens {
        let hidden = GpuTensor::from_f32(
            ctx,
            "hidden",
            &[tokens, d],
            &random(11 + tokens as u64, tokens * d, 1.0),
            DType::F32,
        )?;
        // The kernels the model takes for this many tokens on this adapter.
        let layer_gemv = moe_gemv_by_size(ctx, tokens, &config);
        let layer_time = timer
            .repeat(options.repeats, &|enc| {
                layer.encode_with(ctx, enc, &hidden, layer_gemv).map(|_| ())
            })
            .await?;
        let routed = layer.forward(ctx, &hidden).await?;
        let counts = routed.expert_counts.read_u32(ctx).await?;
        let active = counts.iter().filter(|c| **c > 0).count();

        // Naive loop: route on the GPU, read the choice back, then per expert a
        // gather, gate/up and down over its rows.
        let mut naive = Vec::new();
        for _ in 0..=options.repeats {
            let clock = Clock::start();
            let logits = GpuTensor::empty(ctx, "logits", &[tokens, e], DType::F32)?;
            let ids = GpuTensor::empty(ctx, "ids", &[tokens, k], DType::U32)?;
            let w = GpuTensor::empty(ctx, "w", &[tokens, k], DType::F32)?;
            let router = GpuTensor::from_f32(ctx, "router", &[e, d], &weights.router, DType::F32)?;
            let mut enc = Recorder::new();
            encode_router_logits(
                ctx,
                &mut enc,
                &hidden,
                Router {
                    weight: &router,
                    bias: None,
                },
                &logits,
            )?;
            encode_routing(ctx, &mut enc, &config.routing, &logits, None, &ids, &w)?;
            enc.submit(ctx);
            let chosen = ids.read_u32(ctx).await?;
            let mut enc = Recorder::new();
            // The hidden states as a table of rows to gather from.
            let table = WeightMatrix {
                name: "hidden".into(),
                experts: 1,
                out_dim: tokens,
                in_dim: d,
                format: WeightFormat::F32,
                expert_stride: tokens * d,
                chunks: vec![WeightChunk {
                    buffer: hidden.buffer.clone(),
                    experts: 0..1,
                    rows: 0..tokens,
                }],
            };
            for x in 0..e {
                let tokens_of: Vec<u32> = (0..chosen.len())
                    .filter(|a| chosen[*a] == x as u32)
                    .map(|a| (a / k) as u32)
                    .collect();
                if tokens_of.is_empty() {
                    continue;
                }
                let n = tokens_of.len();
                let idx = GpuTensor::from_u32(ctx, "rows", &[n], &tokens_of)?;
                let xg = GpuTensor::empty(ctx, "gathered", &[n, d], DType::F32)?;
                encode_embedding(ctx, &mut enc, &idx, &table, 1.0, &xg)?;
                let h = GpuTensor::empty(ctx, "h", &[n, f], DType::F32)?;
                let y = GpuTensor::empty(ctx, "y", &[n, d], DType::F32)?;
                let rows = ExpertRows::Dense {
                    tokens: n,
                    gemv: dense_gemv_by_size(ctx, n),
                };
                encode_gate_up(ctx, &mut enc, rows, &xg, &naive_gate[x], &naive_up[x], &h)?;
                encode_down(ctx, &mut enc, rows, &h, &naive_down[x], &y)?;
            }
            enc.submit(ctx);
            GpuTensor::empty(ctx, "sync", &[1], DType::U32)?.read_u32(ctx).await?;
            naive.push(clock.seconds() * 1e3);
        }
        naive.remove(0); // warm-up
        let naive = Timing::from_samples(naive);

        let dense_time = timer
            .repeat(options.repeats, &|enc| {
                let rows = ExpertRows::Dense {
                    tokens,
                    gemv: dense_gemv_by_size(ctx, tokens),
                };
                let h = GpuTensor::empty(ctx, "dense h", &[tokens, dense_ffn], DType::F32)?;
                let y = GpuTensor::empty(ctx, "dense y", &[tokens, d], DType::F32)?;
                encode_gate_up(ctx, enc, rows, &hidden, &dense[0], &dense[1], &h)?;
                encode_down(ctx, enc, rows, &h, &dense[2], &y)
            })
            .await?;

        // The regime (and the ceiling the row is held to) follows the kernels taken.
        let decode = layer_gemv;
        let (gflop, gbytes) = (
            shape.flops(tokens) / 1e9,
            shape.bytes(
                tokens,
                active,
                format.block_bytes() as f64 / format.block_elements() as f64,
            ) / 1e9,
        );
        let seconds = layer_time.median_ms / 1e3;
        let (gflop_per_s, gb_per_s) = (gflop / seconds, gbytes / seconds);
        let percent = if decode {
            100.0 * gb_per_s / ceilings.copy_gb_per_s
        } else {
            100.0 * gflop_per_s / ceilings.f32_gflop_per_s
        };
        rows.push(Row {
            shape: shape.clone(),
            weight_format: format.to_string(),
            tokens,
            regime: if decode { "decode" } else { "prefill" }.into(),
            active_experts: active,
            gflop,
            gbytes,
            gflop_per_s,
            gb_per_s,
            percent_of_ceiling: percent,
            speedup_over_naive: naive.median_ms / layer_time.median_ms,
            grouped_over_dense: layer_time.median_ms / dense_time.median_ms,
            layer: layer_time,
            naive_loop: naive,
            dense_same_active: dense_time,
        });
    }
    Ok(rows)
}

/// Times one token's attention over a full cache of each context (1,024 positions with
/// `quick`, else 4,096 and 16,384) for one shape, in one pass and split over the
/// context as a decode step on a GPU splits it.
async fn bench_attention(
    ctx: &GpuContext,
    timer: &Timer<'_>,
    shape: &AttentionShape,
    options: &BenchOptions,
    ceilings: &Ceilings,
) -> Result<Vec<AttentionRow>> {
    let contexts: &[usize] = if options.quick { &[1024] } else { &[4096, 16384] };
    let (heads, head_dim) = (shape.heads, shape.head_dim);
    let (q, kv, out) = shape.inputs(ctx, 1, 5)?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let per_head = !ctx.group_attention;
    let mut rows = Vec::new();
    for &context in contexts {
        // The cache's positions hold zeros, except the last, which each run writes:
        // the reads are the same whatever the values.
        let cache = shape.cache(ctx, DType::F32, context)?;
        let half_cache = shape.cache(ctx, DType::F16, context)?;
        let position = TokenPositions::contiguous(ctx, context - 1, 1)?;
        let splits = decode_splits(attention_workgroups(heads, &cache, per_head));
        let mut timings = Vec::new();
        let runs = [
            (&cache, None, per_head),
            (&cache, Some(splits), per_head),
            (&cache, None, true),
            (&half_cache, None, per_head),
            (&half_cache, Some(splits), per_head),
        ];
        for (cache, splits, per_head) in runs {
            let options_for_run = AttentionOptions {
                splits,
                per_head,
                ..AttentionOptions::default()
            };
            let record = |e: &mut Recorder| {
                encode_attention(
                    ctx,
                    e,
                    cache,
                    &q,
                    &kv,
                    &kv,
                    heads,
                    &position,
                    scale,
                    options_for_run,
                    &out,
                )
            };
            timings.push(timer.repeat(options.repeats, &record).await?);
        }
        let [one_pass, split, per_head_one_pass, f16_one_pass, f16_split] =
            <[Timing; 5]>::try_from(timings).expect("five timings");
        let bytes = shape.bytes(context);
        let gb_per_s = |t: &Timing| bytes / (t.median_ms / 1e3) / 1e9;
        rows.push(AttentionRow {
            shape: shape.clone(),
            context,
            splits,
            gbytes: bytes / 1e9,
            one_pass_gb_per_s: gb_per_s(&one_pass),
            split_gb_per_s: gb_per_s(&split),
            split_percent_of_copy: 100.0 * gb_per_s(&split) / ceilings.copy_gb_per_s,
            one_pass,
            split,
            per_head: Some(per_head_one_pass),
            f16_one_pass: Some(f16_one_pass),
            f16_split: Some(f16_split),
            prefill: Some(bench_prefill_attention(ctx, timer, shape, options, &half_cache).await?),
        });
    }
    Ok(rows)
}

/// Times a prompt chunk (16 tokens with `quick`, else 512) at the end of `cache` (the
/// default f16 cache), with a workgroup per (token, head) and with shared workgroups.
async fn bench_prefill_attention(
    ctx: &GpuContext,
    timer: &Timer<'_>,
    shape: &AttentionShape,
    options: &BenchOptions,
    cache: &KvCache,
) -> Result<PrefillAttention> {
    let tokens = if options.quick { 16 } else { 512 }.min(cache.max_ctx);
    let (heads, head_dim) = (shape.heads, shape.head_dim);
    let (q, kv, out) = shape.inputs(ctx, tokens, 7)?;
    let positions = TokenPositions::contiguous(ctx, cache.max_ctx - tokens, tokens)?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut timings = Vec::new();
    for per_head in [true, !ctx.group_attention] {
        let run_options = AttentionOptions {
            per_head,
            share_tokens: true,
            ..AttentionOptions::default()
        };
        let record = |e: &mut Recorder| {
            encode_attention(ctx, e, cache, &q, &kv, &kv, heads, &positions, scale, run_options, &out)
        };
        timings.push(timer.repeat(options.repeats, &record).await?);
    }
    let [per_head, grouped] = <[Timing; 2]>::try_from(timings).expect("two timings");
    let flops = shape.prefill_flops(tokens, cache.max_ctx);
    let gflop_per_s = |t: &Timing| flops / (t.median_ms / 1e3) / 1e9;
    Ok(PrefillAttention {
        tokens,
        per_head_gflop_per_s: gflop_per_s(&per_head),
        grouped_gflop_per_s: gflop_per_s(&grouped),
        gflop: flops / 1e9,
        per_head,
        grouped,
    })
}

/// Runs the whole suite; `models` get whole-model rows.
pub async fn run_bench(
    ctx: &GpuContext,
    options: &BenchOptions,
    models: &[(String, &crate::model::model::Model)],
) -> Result<Report> {
    let timer = Timer::new(ctx)?;
    let copy_bytes = if options.quick { 16 << 20 } else { 512 << 20 };
    let ceilings = Ceilings {
        copy_gb_per_s: copy_ceiling(ctx, &timer, copy_bytes, options.repeats.max(3)).await?,
        shader_read_gb_per_s: Some(shader_read_ceiling(ctx, &timer, copy_bytes, options.repeats.max(3)).await?),
        f32_gflop_per_s: fma_ceiling(ctx, &timer, options.quick, options.repeats.max(3), false).await?,
        f16_gflop_per_s: if ctx.has_shader_f16() {
            Some(fma_ceiling(ctx, &timer, options.quick, options.repeats.max(3), true).await?)
        } else {
            None
        },
    };
    let wanted = |model: &str| {
        options.shapes.is_empty()
            || options
                .shapes
                .iter()
                .any(|s| model.to_lowercase().contains(&s.to_lowercase()))
    };
    let mut rows = Vec::new();
    for shape in model_shapes().into_iter().filter(|s| wanted(&s.model)) {
        let shape = if options.quick { shape.scaled(16) } else { shape };
        for &format in &options.formats {
            rows.extend(bench_shape(ctx, &timer, &shape, format, options, &ceilings).await?);
        }
    }
    let mut attention = Vec::new();
    for shape in attention_shapes().iter().filter(|s| wanted(&s.model)) {
        attention.extend(bench_attention(ctx, &timer, shape, options, &ceilings).await?);
    }
    let (prompt, decode) = if options.quick { (32, 16) } else { (512, 64) };
    let (prompt, decode) = (
        options.prompt_tokens.unwrap_or(prompt).max(1),
        options.decode_tokens.unwrap_or(decode),
    );
    let mut model_rows = Vec::new();
    for (name, model) in models {
        model_rows.push(bench_model(ctx, name, model, prompt, decode, options.repeats, options.profile).await?);
    }
    let info = &ctx.adapter_info;
    Ok(Report {
        webmoe_version: env!("CARGO_PKG_VERSION").into(),
        adapter: info.name.clone(),
        vendor: info.vendor,
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        features: format!("{:?}", ctx.features),
        max_storage_buffer_binding_size: ctx.limits.max_storage_buffer_binding_size,
        max_buffer_size: ctx.limits.max_buffer_size,
        timing_method: timer.method().into(),
        kernels: ctx.kernel_choices(),
        weight_dtype: options
            .formats
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(","),
        ceilings,
        rows,
        attention,
        models: model_rows,
    })
}

/// A llama-bench-like markdown table.
pub fn markdown(report: &Report) -> String {
    let mut s = format!(
        "adapter: {} ({}, {}, driver {} {}); timing: {}; kernels: {}; weights {}\n\nceilings: copy {:.1} GB/s, shader read {}, f32 FMA {:.1} GFLOP/s, f16 FMA {}\n\n",
        report.adapter,
        report.backend,
        report.device_type,
        report.driver,
        report.driver_info,
        report.timing_method,
        report.kernels,
        report.weight_dtype,
        report.ceilings.copy_gb_per_s,
        report
            .ceilings
            .shader_read_gb_per_s
            .map_or("n/a".to_string(), |g| format!("{g:.1} GB/s")),
        report.ceilings.f32_gflop_per_s,
        report.ceilings.f16_gflop_per_s.map_or("n/a (no shader-f16)".to_string(), |g| format!("{g:.1} GFLOP/s"))
    );
    s.push_str("| model | weights | d | ffn | E | k | T | regime | time ms (min-max) | GFLOP/s | GB/s | % of ceiling | naive ms | speedup | dense ms | grouped/dense |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &report.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.3} ({:.3}-{:.3}) | {:.1} | {:.1} | {:.1}% | {:.3} | {:.2}x | {:.3} | {:.2} |\n",
            r.shape.model,
            r.weight_format,
            r.shape.hidden,
            r.shape.ffn,
            r.shape.experts,
            r.shape.top_k,
            r.tokens,
            r.regime,
            r.layer.median_ms,
            r.layer.min_ms,
            r.layer.max_ms,
            r.gflop_per_s,
            r.gb_per_s,
            r.percent_of_ceiling,
            r.naive_loop.median_ms,
            r.speedup_over_naive,
            r.dense_same_active.median_ms,
            r.grouped_over_dense
        ));
    }
    if !report.attention.is_empty() {
        let ms = |t: &Option<Timing>| t.as_ref().map_or("-".into(), |t| format!("{:.3}", t.median_ms));
        s.push_str("\nDecode attention (1 token over a full KV cache, f32 unless named):\n\n| model | heads / kv heads x dim | context | per head ms | one pass ms | GB/s | split | split ms | GB/s | % of copy | f16 cache: one pass ms | split ms |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for a in &report.attention {
            s.push_str(&format!(
                "| {} | {} / {} x {} | {} | {} | {:.3} | {:.1} | {} | {:.3} | {:.1} | {:.1}% | {} | {} |\n",
                a.shape.model,
                a.shape.heads,
                a.shape.kv_heads,
                a.shape.head_dim,
                a.context,
                ms(&a.per_head),
                a.one_pass.median_ms,
                a.one_pass_gb_per_s,
                a.splits,
                a.split.median_ms,
                a.split_gb_per_s,
                a.split_percent_of_copy,
                ms(&a.f16_one_pass),
                ms(&a.f16_split),
            ));
        }
    }
    if report.attention.iter().any(|a| a.prefill.is_some()) {
        s.push_str("\nPrefill attention (a prompt chunk ending at the cache's last position, f16 cache):\n\n| model | heads / kv heads x dim | context | tokens | per (token, head) ms | GFLOP/s | shared ms | GFLOP/s | speedup |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for a in &report.attention {
            let Some(pf) = &a.prefill else { continue };
            s.push_str(&format!(
                "| {} | {} / {} x {} | {} | {} | {:.3} | {:.2} | {:.3} | {:.2} | {:.2}x |\n",
                a.shape.model,
                a.shape.heads,
                a.shape.kv_heads,
                a.shape.head_dim,
                a.context,
                pf.tokens,
                pf.per_head.median_ms,
                pf.per_head_gflop_per_s,
                pf.grouped.median_ms,
                pf.grouped_gflop_per_s,
                pf.per_head.median_ms / pf.grouped.median_ms,
            ));
        }
    }
    if !report.models.is_empty() {
        s.push_str(&format!(
            "\n| model | prompt tokens | prefill ms | prefill tokens/s | decode tokens | decode tokens/s | sampled (T {}, top-p {}) tokens/s |\n|---|---:|---:|---:|---:|---:|---:|\n",
            BENCH_SAMPLING.temperature, BENCH_SAMPLING.top_p
        ));
        for m in &report.models {
            s.push_str(&format!(
                "| {} | {} | {:.2} | {:.1} | {} | {:.1} | {:.1} |\n",
                m.model,
                m.prompt_tokens,
                m.prefill.median_ms,
                m.prefill_tokens_per_s,
                m.decode_tokens,
                m.decode_tokens_per_s,
                m.sampled_decode_tokens_per_s
            ));
        }
        for m in report.models.iter().filter(|m| !m.decode_profile.is_empty()) {
            s.push_str(&profile_markdown(m));
        }
    }
    s
}

/// The kernels of a model row's profiled prefill and decode step, per section of the
/// forward, by decode time.
fn profile_markdown(m: &ModelRow) -> String {
    let total = |p: &[KernelTime]| p.iter().map(|k| k.ms).sum::<f64>();
    let (prefill_total, decode_total) = (total(&m.prefill_profile), total(&m.decode_profile));
    let mut s = format!(
        "\n{}: GPU time per kernel, one decode step ({:.3} ms in all) and one prefill of {} tokens ({:.3} ms)\n\n\
         | section | kernel | decode calls | decode ms | decode share | prefill calls | prefill ms | prefill share |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
        m.model, decode_total, m.prompt_tokens, prefill_total
    );
    let key = |k: &KernelTime| (k.section.clone(), k.kernel.clone());
    let mut rows: Vec<(String, String)> = m.decode_profile.iter().map(key).collect();
    for k in m.prefill_profile.iter().map(key) {
        if !rows.contains(&k) {
            rows.push(k);
        }
    }
    let find = |p: &[KernelTime], row: &(String, String)| {
        p.iter().find(|t| key(t) == *row).map_or((0, 0.0), |t| (t.calls, t.ms))
    };
    for row in &rows {
        let (dc, dms) = find(&m.decode_profile, row);
        let (pc, pms) = find(&m.prefill_profile, row);
        s.push_str(&format!(
            "| {} | {} | {dc} | {dms:.3} | {:.1}% | {pc} | {pms:.3} | {:.1}% |\n",
            row.0,
            row.1,
            100.0 * dms / decode_total.max(1e-12),
            100.0 * pms / prefill_total.max(1e-12)
        ));
    }
    s
}

/// A roofline chart (log-log: arithmetic intensity vs GFLOP/s) as SVG. Written by
/// hand: a few dozen lines, where a plotting crate would pull in font handling.
pub fn roofline_svg(report: &Report) -> String {
    let (w, h, m) = (720.0, 440.0, 60.0);
    let (bw, peak) = (
        report.ceilings.copy_gb_per_s.max(1e-3),
        report.ceilings.f32_gflop_per_s.max(1e-3),
    );
    let (x_lo, x_hi) = (0.01f64, 1000.0f64);
    let y_hi = peak * 4.0;
    let y_lo = (report.rows.iter().map(|r| r.gflop_per_s).fold(peak, f64::min) / 4.0).max(y_hi / 1e6);
    let px = |x: f64| m + (x.max(x_lo).log10() - x_lo.log10()) / (x_hi.log10() - x_lo.log10()) * (w - 2.0 * m);
    let py = |y: f64| h - m - (y.max(y_lo).log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10()) * (h - 2.0 * m);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{m}\" y=\"20\" font-size=\"13\">webmoe roofline: {} ({})</text>\n",
        xml(&report.adapter),
        xml(&report.backend)
    );
    s.push_str(&format!(
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m,
        w - m,
        h - m,
        h - m
    ));
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">FLOP per byte moved</text>\n",
        w / 2.0,
        h - 20.0
    ));
    s.push_str(&format!(
        "<text x=\"15\" y=\"{}\" transform=\"rotate(-90 15 {})\" text-anchor=\"middle\">GFLOP/s</text>\n",
        h / 2.0,
        h / 2.0
    ));
    // The roof: bandwidth slope up to the ridge, then the FMA ceiling.
    let ridge = peak / bw;
    let roof: Vec<String> = [x_lo, ridge, x_hi]
        .iter()
        .map(|&x| format!("{:.1},{:.1}", px(x), py((x * bw).min(peak))))
        .collect();
    s.push_str(&format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#b00020\" stroke-width=\"2\"/>\n",
        roof.join(" ")
    ));
    for (i, r) in report.rows.iter().enumerate() {
        let x = r.gflop / r.gbytes.max(1e-12);
        let color = if r.regime == "decode" { "#1652a0" } else { "#2e7d32" };
        s.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{color}\"><title>{} T={}: {:.1} GFLOP/s, {:.1}% of ceiling</title></circle>\n",
            px(x),
            py(r.gflop_per_s),
            xml(&r.shape.model),
            r.tokens,
            r.gflop_per_s,
            r.percent_of_ceiling
        ));
        if i < 40 {
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">T={}</text>\n",
                px(x) + 5.0,
                py(r.gflop_per_s) - 4.0,
                r.tokens
            ));
        }
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" fill=\"#b00020\">roof: {:.1} GB/s, {:.1} GFLOP/s</text>\n</svg>\n",
        w - m - 220.0,
        m,
        bw,
        peak
    ));
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

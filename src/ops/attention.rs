//! Causal grouped-query attention over a GPU KV cache (shaders/attention.wgsl).

use crate::error::{Error, Result};
use crate::gpu::kernel::{Recorder, Shader, ATTENTION, ATTENTION_F16_CACHE};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::ops::{expect_shape, workgroups, TokenPositions};

/// The widest key or value the attention kernel takes (its per-head query and value
/// sums live in workgroup memory: `MAX_VALUE_DIM` in shaders/attention.wgsl).
pub const MAX_VALUE_DIM: usize = 1024;

/// Elements of one KV cache row: `head_dim` rounded up to a multiple of 4.
pub fn row_width(head_dim: usize) -> usize {
    head_dim.div_ceil(4) * 4
}

fn check_width(elements: usize, kind: &str, what: &str) -> Result<()> {
    if elements > MAX_VALUE_DIM {
        return Err(Error::Config(format!(
            "{what}: {kind} of {elements} elements per head are wider than the attention kernel's {MAX_VALUE_DIM}"
        )));
    }
    Ok(())
}

/// Refuses element types a KV cache cannot hold, naming the ones it takes (f32, f16).
pub fn check_cache_dtype(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 => Ok(()),
        other => Err(Error::Config(format!(
            "a KV cache of {other:?} elements: it takes f32 or f16"
        ))),
    }
}

/// One layer's key and value caches for `slots` sequences,
/// `[slots, kv_heads, max_ctx, row]` each, `row` = `head_dim` rounded up to a multiple
/// of 4 (the kernels read rows in quads of 4 elements: a vec4 of f32, or a vec2<u32> of
/// packed f16; the padding stays zero); or a latent cache
/// (MLA) of keys only. Elements f32, or f16 (half the memory and half the bytes each
/// decode step reads; the kernels compute in f32 either way).
pub struct KvCache {
    pub keys: GpuTensor,
    /// The value cache; a one-element placeholder for a latent cache.
    pub values: GpuTensor,
    pub slots: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_ctx: usize,
    /// Values per head: `head_dim`, or the latent width of a latent cache.
    pub value_dim: usize,
    /// Values are the first `value_dim` elements of each key (MLA's compressed cache).
    pub latent: bool,
    /// The element type: f32 or f16.
    pub dtype: DType,
}

impl KvCache {
    /// A cache for one sequence.
    pub fn new(ctx: &GpuContext, kv_heads: usize, head_dim: usize, max_ctx: usize) -> Result<Self> {
        Self::with_slots(ctx, 1, kv_heads, head_dim, max_ctx)
    }

    /// An f32 cache for `slots` sequences of up to `max_ctx` positions each.
    pub fn with_slots(
        ctx: &GpuContext,
        slots: usize,
        kv_heads: usize,
        head_dim: usize,
        max_ctx: usize,
    ) -> Result<Self> {
        Self::of_dtype(ctx, DType::F32, slots, kv_heads, head_dim, max_ctx)
    }

    /// A cache of `dtype` elements (f32 or f16) for `slots` sequences of up to
    /// `max_ctx` positions each.
    pub fn of_dtype(
        ctx: &GpuContext,
        dtype: DType,
        slots: usize,
        kv_heads: usize,
        head_dim: usize,
        max_ctx: usize,
    ) -> Result<Self> {
        check_width(head_dim, "keys and values", "a KV cache")?;
        let shape = [slots, kv_heads, max_ctx, row_width(head_dim)];
        check_cache_dtype(dtype)?;
        let bytes = (shape.iter().product::<usize>() * dtype.size()) as u64;
        ctx.check_binding(
            &format!(
                "a {dtype:?} KV cache of {slots} sequences x {max_ctx} positions x {kv_heads} kv heads x {head_dim}"
            ),
            bytes,
        )?;
        Ok(Self {
            keys: GpuTensor::empty(ctx, "key cache", &shape, dtype)?,
            values: GpuTensor::empty(ctx, "value cache", &shape, dtype)?,
            slots,
            kv_heads,
            head_dim,
            max_ctx,
            value_dim: head_dim,
            latent: false,
            dtype,
        })
    }

    /// An f32 latent cache (multi-head latent attention) for `slots` sequences: per
    /// position one key of `key_dim` (the compressed latent, then the RoPE key) whose
    /// first `value_dim` elements are also the value, `[slots, 1, max_ctx, key_dim]`.
    pub fn latent(ctx: &GpuContext, slots: usize, key_dim: usize, value_dim: usize, max_ctx: usize) -> Result<Self> {
        Self::latent_of_dtype(ctx, DType::F32, slots, key_dim, value_dim, max_ctx)
    }

    /// [`KvCache::latent`] of `dtype` elements (f32 or f16).
    pub fn latent_of_dtype(
        ctx: &GpuContext,
        dtype: DType,
        slots: usize,
        key_dim: usize,
        value_dim: usize,
        max_ctx: usize,
    ) -> Result<Self> {
        if value_dim == 0 || value_dim > key_dim {
            return Err(Error::Config(format!(
                "a latent cache's value width {value_dim} must be between 1 and its key width {key_dim}"
            )));
        }
        check_width(key_dim, "keys", "a latent KV cache")?;
        let shape = [slots, 1, max_ctx, row_width(key_dim)];
        check_cache_dtype(dtype)?;
        let bytes = (shape.iter().product::<usize>() * dtype.size()) as u64;
        ctx.check_binding(
            &format!("a {dtype:?} latent KV cache of {slots} sequences x {max_ctx} positions x {key_dim}"),
            bytes,
        )?;
        Ok(Self {
            keys: GpuTensor::empty(ctx, "latent cache", &shape, dtype)?,
            // One f32 vec4, the smallest binding of the kernel's value rows.
            values: GpuTensor::empty(ctx, "latent cache (no values)", &[4], DType::F32)?,
            slots,
            kv_heads: 1,
            head_dim: key_dim,
            max_ctx,
            value_dim,
            latent: true,
            dtype,
        })
    }

    /// Bytes one position of one sequence takes (keys and values).
    pub fn bytes_per_position(&self) -> u64 {
        let per_key = (self.kv_heads * row_width(self.head_dim) * self.dtype.size()) as u64;
        if self.latent {
            per_key
        } else {
            2 * per_key
        }
    }

    /// Bytes of GPU memory the cache holds.
    pub fn bytes(&self) -> u64 {
        self.keys.buffer.size() + if self.latent { 0 } else { self.values.buffer.size() }
    }
}

/// The most runs [`AttentionOptions::splits`] may cut a (token, head)'s context into
/// (more would leave runs empty at every context under 16,384 positions).
pub const MAX_SPLITS: usize = 64;

/// Workgroups a step of one token should have when its attention is split over the
/// context: enough to keep a large GPU's compute units busy (H100/H200: 132).
const SPLIT_TARGET_WORKGROUPS: usize = 1024;

/// How many runs to split each (token, head)'s context into for steps of few tokens
/// on a GPU, when one token's attention takes `workgroups` workgroups in one pass
/// ([`attention_workgroups`]): about [`SPLIT_TARGET_WORKGROUPS`] workgroups for one
/// token, 1 to 32 runs. It depends only on the model and the context's kernel choices,
/// never on the step, so a token's output never depends on the step it is in.
pub fn decode_splits(workgroups: usize) -> usize {
    (SPLIT_TARGET_WORKGROUPS / workgroups.max(1)).clamp(1, 32)
}

/// The widest keys the grouped kernels take (`MAX_GROUPED_DIM` in
/// shaders/attention.wgsl: DeepSeek's latent and RoPE key, 512 + 64).
pub const MAX_GROUPED_DIM: usize = 576;
/// The widest values the grouped kernels take (4 x `MAX_GROUPED_VALUE_QUADS`).
pub const MAX_GROUPED_VALUE_DIM: usize = 512;

/// How many query heads one workgroup serves (`group_lanes`): the grouped kernels put
/// up to 4 heads of one kv head (or of a latent cache) in the lanes of vec4s, so each
/// key and value load serves all of them. The largest of 4, 3, 2 dividing
/// `heads / kv_heads`; 1 (one workgroup per query head) where no head shares its kv
/// head, for keys wider than [`MAX_GROUPED_DIM`] or values wider than
/// [`MAX_GROUPED_VALUE_DIM`], or with `per_head`.
pub fn group_lanes(heads: usize, cache: &KvCache, per_head: bool) -> usize {
    let group = heads / cache.kv_heads.max(1);
    if !grouped_kernel_fits(cache, per_head) {
        return 1;
    }
    (2..=4).rev().find(|l| group.is_multiple_of(*l)).unwrap_or(1)
}

/// Whether the grouped kernels take this cache (rows and values narrow enough) and the
/// caller allows them.
fn grouped_kernel_fits(cache: &KvCache, per_head: bool) -> bool {
    !per_head && row_width(cache.head_dim) <= MAX_GROUPED_DIM && cache.value_dim <= MAX_GROUPED_VALUE_DIM
}

/// How many consecutive tokens one-pass attention puts in one workgroup beside its
/// [`group_lanes`] heads (4 lanes in all) where the caller asks for it
/// ([`AttentionOptions::share_tokens`]): their rows are shared when the tokens are of
/// one sequence (a prompt chunk; other sequences take further passes of the same
/// workgroup). 1 for a single token, for split attention and where the grouped kernels
/// do not fit.
pub fn token_lanes(heads: usize, cache: &KvCache, options: &AttentionOptions, tokens: usize) -> usize {
    let splits = options.splits.unwrap_or(1);
    if !options.share_tokens || tokens < 2 || splits > 1 || !grouped_kernel_fits(cache, options.per_head) {
        return 1;
    }
    4 / group_lanes(heads, cache, options.per_head)
}

/// Workgroups one token's attention takes in one pass: one per query head, or per
/// chunk of [`group_lanes`] heads.
pub fn attention_workgroups(heads: usize, cache: &KvCache, per_head: bool) -> usize {
    heads / group_lanes(heads, cache, per_head)
}

/// Optional parts of attention some models use (gpt-oss), and how to map it. The
/// default is plain full causal attention in one pass.
#[derive(Clone, Copy, Default)]
pub struct AttentionOptions<'a> {
    /// `[heads]` f32 learned sink logits (gpt-oss): each head's softmax gets one extra
    /// logit that takes probability mass and contributes no value. Not multiplied by
    /// the attention scale.
    pub sinks: Option<&'a GpuTensor>,
    /// Sliding window: a token at position p attends to cache positions j with
    /// p - window < j <= p (transformers' sliding_window_causal mask:
    /// kv_idx > q_idx - sliding_window). None = full causal.
    pub window: Option<usize>,
    /// Split each (token, head)'s context positions into this many runs of whole
    /// 256-position blocks, each run in its own workgroup, merged by a second dispatch
    /// (flash decoding). For steps of few tokens on GPUs, where one workgroup per
    /// (token, head) leaves most of the GPU idle (see [`decode_splits`]). The runs
    /// depend only on each token's position, so a token's output does not depend on
    /// the other tokens of its step; it is not bit for bit the one-pass output.
    /// None (or 1): one pass. Needs a `[T, heads, splits, value_dim + 2]` f32 scratch.
    pub splits: Option<usize>,
    /// One workgroup per query head even where query heads share a kv head (by
    /// default up to 4 of them share one workgroup and its key and value loads; see
    /// [`group_lanes`]). For comparisons; the results agree to rounding.
    pub per_head: bool,
    /// Consecutive tokens of the step share workgroups too ([`token_lanes`]): for prompt
    /// chunks of one sequence (tokens of other sequences take further passes, correct
    /// but slower). A token's output can then differ in rounding from a step without it
    /// (where its heads alone would run `attend`), so callers that promise the same
    /// results in any batch (the server) leave it off.
    pub share_tokens: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AttentionParams {
    pub(crate) tokens: u32,
    pub(crate) heads: u32,
    pub(crate) kv_heads: u32,
    pub(crate) head_dim: u32,
    pub(crate) max_ctx: u32,
    pub(crate) scale: f32,
    pub(crate) slots: u32,
    /// 1 when binding 9 holds `[heads]` sink logits, 0 when it is a dummy.
    pub(crate) has_sinks: u32,
    /// Sliding window in positions; 0 = full causal.
    pub(crate) window: u32,
    pub(crate) value_dim: u32,
    /// 1: values are the keys' first value_dim elements (latent cache).
    pub(crate) latent: u32,
    /// Runs per (token, head) for `attend_split` / `attend_merge`.
    pub(crate) splits: u32,
    /// Query heads per workgroup of `attend_grouped*` (1 for `attend*`).
    pub(crate) group_lanes: u32,
    /// Tokens per workgroup of `attend_grouped` (1 for the others).
    pub(crate) token_lanes: u32,
    pub(crate) _pad: [u32; 2],
}

/// Stores `k`, `v [T, kv_heads * head_dim]` at each token's (slot, position) and
/// records attention of `q [T, heads * head_dim]` over that slot's cache positions
/// `0..=position` (the last `window` of them with a window, and one extra sink logit
/// per head with sinks; see [`AttentionOptions`]) into `out [T, heads * value_dim]`
/// (like `q` unless the cache is latent; a latent cache stores only `k` and takes each
/// value from the first `value_dim` elements of its key, so `v` is not read).
#[allow(clippy::too_many_arguments)]
pub fn encode_attention(
    ctx: &GpuContext,
    rec: &mut Recorder,
    cache: &KvCache,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    heads: usize,
    positions: &TokenPositions,
    scale: f32,
    options: AttentionOptions,
    out: &GpuTensor,
) -> Result<()> {
    let params = attention_params(cache, q, heads, scale, &options, out)?;
    let tokens = q.shape[0];
    // kv_store: one invocation per cache word (f16: two elements).
    let words_per_head = match cache.dtype {
        DType::F16 => cache.head_dim.div_ceil(2),
        _ => cache.head_dim,
    };
    rec.dispatch(
        ctx,
        attention_shader(cache).entry("kv_store"),
        &params,
        &[
            (2, &cache.keys.buffer),
            (3, &cache.values.buffer),
            (6, &k.buffer),
            (7, &v.buffer),
            (8, &positions.buffer),
        ],
        workgroups(tokens * cache.kv_heads * words_per_head, 64),
    );
    attend(ctx, rec, cache, q, positions, &params, options, out)
}

/// Records attention as [`encode_attention`] does, over a cache that already holds
/// this step's keys and values (stored by `ops::attention_inputs`).
#[allow(clippy::too_many_arguments)]
pub fn encode_attend(
    ctx: &GpuContext,
    rec: &mut Recorder,
    cache: &KvCache,
    q: &GpuTensor,
    heads: usize,
    positions: &TokenPositions,
    scale: f32,
    options: AttentionOptions,
    out: &GpuTensor,
) -> Result<()> {
    let params = attention_params(cache, q, heads, scale, &options, out)?;
    attend(ctx, rec, cache, q, positions, &params, options, out)
}

fn attention_shader(cache: &KvCache) -> Shader {
    match cache.dtype {
        DType::F16 => ATTENTION_F16_CACHE,
        _ => ATTENTION,
    }
}

/// Checks a step's shapes and options against the cache and lays out its parameters.
fn attention_params(
    cache: &KvCache,
    q: &GpuTensor,
    heads: usize,
    scale: f32,
    options: &AttentionOptions,
    out: &GpuTensor,
) -> Result<AttentionParams> {
    let tokens = q.shape[0];
    if tokens > cache.max_ctx {
        return Err(Error::Config(format!(
            "{tokens} tokens do not fit the KV cache of {} positions",
            cache.max_ctx
        )));
    }
    expect_shape("attention queries", q, &[tokens, heads * cache.head_dim])?;
    expect_shape("attention output", out, &[tokens, heads * cache.value_dim])?;
    if !heads.is_multiple_of(cache.kv_heads) {
        return Err(Error::Config(format!(
            "{heads} heads are not a multiple of {} kv heads",
            cache.kv_heads
        )));
    }
    if let Some(sinks) = options.sinks {
        expect_shape("attention sinks", sinks, &[heads])?;
        if sinks.dtype != DType::F32 {
            return Err(Error::Config(format!(
                "attention sinks must be f32, not {:?}",
                sinks.dtype
            )));
        }
    }
    if options.window == Some(0) {
        return Err(Error::Config("the attention window must be at least 1 position".into()));
    }
    let splits = options.splits.unwrap_or(1);
    if !(1..=MAX_SPLITS).contains(&splits) {
        return Err(Error::Config(format!(
            "attention split into {splits} runs: it takes 1 to {MAX_SPLITS}"
        )));
    }
    let lanes = group_lanes(heads, cache, options.per_head);
    let token_lanes = token_lanes(heads, cache, options, tokens);
    Ok(AttentionParams {
        tokens: tokens as u32,
        heads: heads as u32,
        kv_heads: cache.kv_heads as u32,
        head_dim: cache.head_dim as u32,
        max_ctx: cache.max_ctx as u32,
        scale,
        slots: cache.slots as u32,
        has_sinks: options.sinks.is_some() as u32,
        // A window of max_ctx or more covers every position the cache holds.
        window: options.window.map_or(0, |w| w.min(cache.max_ctx) as u32),
        value_dim: cache.value_dim as u32,
        latent: cache.latent as u32,
        splits: splits as u32,
        group_lanes: lanes as u32,
        token_lanes: token_lanes as u32,
        _pad: [0; 2],
    })
}

/// The attend pass (or the split pass and its merge) of a validated step.
#[allow(clippy::too_many_arguments)]
fn attend(
    ctx: &GpuContext,
    rec: &mut Recorder,
    cache: &KvCache,
    q: &GpuTensor,
    positions: &TokenPositions,
    params: &AttentionParams,
    options: AttentionOptions,
    out: &GpuTensor,
) -> Result<()> {
    let (tokens, heads) = (params.tokens as usize, params.heads as usize);
    let (splits, lanes, token_lanes) = (
        params.splits as usize,
        params.group_lanes as usize,
        params.token_lanes as usize,
    );
    let shader = attention_shader(cache);
    let (keys, values, pos) = (&cache.keys.buffer, &cache.values.buffer, &positions.buffer);
    // Without sinks, q stands in for the sinks buffer (the shader does not read it).
    let sinks = options.sinks.map_or(&q.buffer, |s| &s.buffer);
    let reads = [(1, &q.buffer), (8, pos), (10, keys), (11, values)];
    let rows = tokens * heads;
    if splits == 1 {
        let bindings: Vec<_> = reads.into_iter().chain([(5, &out.buffer), (9, sinks)]).collect();
        let (entry, workgroups) = if lanes * token_lanes == 1 {
            ("attend", rows)
        } else {
            ("attend_grouped", tokens.div_ceil(token_lanes) * heads / lanes)
        };
        rec.dispatch(ctx, shader.entry(entry), params, &bindings, workgroups as u32);
        return Ok(());
    }
    let split = if lanes == 1 {
        "attend_split"
    } else {
        "attend_grouped_split"
    };
    let workgroups = tokens * heads / lanes;
    let partials = GpuTensor::empty(
        ctx,
        "attention split partials",
        &[rows, splits, cache.value_dim + 2],
        DType::F32,
    )?;
    let bindings: Vec<_> = reads.into_iter().chain([(4, &partials.buffer)]).collect();
    rec.dispatch(
        ctx,
        shader.entry(split),
        params,
        &bindings,
        (workgroups * splits) as u32,
    );
    rec.dispatch(
        ctx,
        shader.entry("attend_merge"),
        params,
        &[(4, &partials.buffer), (5, &out.buffer), (8, pos), (9, sinks)],
        rows as u32,
    );
    Ok(())
}

/// What an f16 cache holds of `values`, for references: each rounded to f16 (and
/// clamped to its range, as the kernel does) to nearest even, or toward zero. WGSL
/// leaves pack2x16float's rounding to the implementation, so checks accept either.
pub fn f16_cache_values(values: &[f32], toward_zero: bool) -> Vec<f32> {
    values
        .iter()
        .map(|&x| {
            let x = x.clamp(-65504.0, 65504.0);
            let nearest = half::f16::from_f32(x);
            let rounded = if toward_zero && nearest.to_f32().abs() > x.abs() {
                // One step toward zero: the f16 below in magnitude has the bits below.
                half::f16::from_bits(nearest.to_bits() - 1)
            } else {
                nearest
            };
            rounded.to_f32()
        })
        .collect()
}

/// CPU reference: `keys`, `values` hold all positions `0..pos0 + T` as
/// `[positions, kv_heads * head_dim]`; `q [T, heads * head_dim]`; token t at
/// position pos0 + t. `sinks` (`[heads]`, unscaled) and `window` as in
/// [`AttentionOptions`].
#[allow(clippy::too_many_arguments)]
pub fn attention_reference(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    pos0: usize,
    scale: f32,
    sinks: Option<&[f32]>,
    window: Option<usize>,
) -> Vec<f32> {
    if let Some(s) = sinks {
        assert_eq!(s.len(), heads, "one sink logit per head");
    }
    let tokens = q.len() / (heads * head_dim);
    let kv_width = kv_heads * head_dim;
    let mut out = vec![0.0f32; q.len()];
    for t in 0..tokens {
        for h in 0..heads {
            let kvh = h / (heads / kv_heads);
            let qv = &q[(t * heads + h) * head_dim..][..head_dim];
            let n = pos0 + t + 1;
            // Positions j with pos - window < j <= pos.
            let start = window.map_or(0, |w| n.saturating_sub(w));
            let scores: Vec<f32> = (start..n)
                .map(|j| crate::ops::router::dot(qv, &keys[j * kv_width + kvh * head_dim..][..head_dim]) * scale)
                .collect();
            let sink = sinks.map(|s| s[h]);
            let m = scores.iter().chain(&sink).fold(-3.0e38f32, |a, &b| a.max(b));
            let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f32 = e.iter().sum::<f32>() + sink.map_or(0.0, |s| (s - m).exp());
            for d in 0..head_dim {
                let mut acc = 0.0f32;
                for (i, p) in e.iter().enumerate() {
                    acc += p * values[(start + i) * kv_width + kvh * head_dim + d];
                }
                out[(t * heads + h) * head_dim + d] = acc / sum;
            }
        }
    }
    out
}

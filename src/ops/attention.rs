//! Causal grouped-query attention over a GPU KV cache (shaders/attention.wgsl).

use crate::error::{Error, Result};
use crate::gpu::kernel::{Recorder, ATTENTION};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::ops::{workgroups, TokenPositions};

/// One layer's key and value caches for `slots` sequences,
/// `[slots, kv_heads, max_ctx, head_dim]` each.
pub struct KvCache {
    pub keys: GpuTensor,
    pub values: GpuTensor,
    pub slots: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_ctx: usize,
}

impl KvCache {
    /// A cache for one sequence.
    pub fn new(ctx: &GpuContext, kv_heads: usize, head_dim: usize, max_ctx: usize) -> Result<Self> {
        Self::with_slots(ctx, 1, kv_heads, head_dim, max_ctx)
    }

    /// A cache for `slots` sequences of up to `max_ctx` positions each.
    pub fn with_slots(
        ctx: &GpuContext,
        slots: usize,
        kv_heads: usize,
        head_dim: usize,
        max_ctx: usize,
    ) -> Result<Self> {
        let shape = [slots, kv_heads, max_ctx, head_dim];
        let bytes = shape.iter().product::<usize>() as u64 * 4;
        ctx.check_binding(
            &format!("a KV cache of {slots} sequences x {max_ctx} positions x {kv_heads} kv heads x {head_dim}"),
            bytes,
        )?;
        Ok(Self {
            keys: GpuTensor::empty(ctx, "key cache", &shape, DType::F32)?,
            values: GpuTensor::empty(ctx, "value cache", &shape, DType::F32)?,
            slots,
            kv_heads,
            head_dim,
            max_ctx,
        })
    }

    /// Bytes one position of one sequence takes (keys and values).
    pub fn bytes_per_position(&self) -> u64 {
        (2 * self.kv_heads * self.head_dim * 4) as u64
    }
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
    pub(crate) _pad: u32,
}

/// Stores `k`, `v [T, kv_heads * head_dim]` at positions `pos0..` (`position` holds pos0) and records attention
/// of `q [T, heads * head_dim]` over positions `0..=pos0 + t` into `out` (like `q`).
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
    out: &GpuTensor,
) -> Result<()> {
    let tokens = q.shape[0];
    if tokens > cache.max_ctx {
        return Err(Error::Config(format!(
            "{tokens} tokens do not fit the KV cache of {} positions",
            cache.max_ctx
        )));
    }
    if !heads.is_multiple_of(cache.kv_heads) {
        return Err(Error::Config(format!(
            "{heads} heads are not a multiple of {} kv heads",
            cache.kv_heads
        )));
    }
    let scores = GpuTensor::empty(ctx, "attention scores", &[tokens * heads, cache.max_ctx], DType::F32)?;
    let params = AttentionParams {
        tokens: tokens as u32,
        heads: heads as u32,
        kv_heads: cache.kv_heads as u32,
        head_dim: cache.head_dim as u32,
        max_ctx: cache.max_ctx as u32,
        scale,
        slots: cache.slots as u32,
        _pad: 0,
    };
    let (keys, values, pos) = (&cache.keys.buffer, &cache.values.buffer, &positions.buffer);
    rec.dispatch(
        ctx,
        ATTENTION.entry("kv_store"),
        &params,
        &[(2, keys), (3, values), (6, &k.buffer), (7, &v.buffer), (8, pos)],
        workgroups(k.len(), 64),
    );
    rec.dispatch(
        ctx,
        ATTENTION.entry("attend"),
        &params,
        &[
            (1, &q.buffer),
            (2, keys),
            (3, values),
            (4, &scores.buffer),
            (5, &out.buffer),
            (8, pos),
        ],
        (tokens * heads) as u32,
    );
    Ok(())
}

/// CPU reference: `keys`, `values` hold all positions `0..pos0 + T` as
/// `[positions, kv_heads * head_dim]`; `q [T, heads * head_dim]`.
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
) -> Vec<f32> {
    let tokens = q.len() / (heads * head_dim);
    let kv_width = kv_heads * head_dim;
    let mut out = vec![0.0f32; q.len()];
    for t in 0..tokens {
        for h in 0..heads {
            let kvh = h / (heads / kv_heads);
            let qv = &q[(t * heads + h) * head_dim..][..head_dim];
            let n = pos0 + t + 1;
            let scores: Vec<f32> = (0..n)
                .map(|j| crate::ops::router::dot(qv, &keys[j * kv_width + kvh * head_dim..][..head_dim]) * scale)
                .collect();
            let m = scores.iter().fold(-3.0e38f32, |a, &b| a.max(b));
            let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f32 = e.iter().sum();
            for d in 0..head_dim {
                let mut acc = 0.0f32;
                for (j, p) in e.iter().enumerate() {
                    acc += p * values[j * kv_width + kvh * head_dim + d];
                }
                out[(t * heads + h) * head_dim + d] = acc / sum;
            }
        }
    }
    out
}

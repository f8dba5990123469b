//! A grouped-query attention step's inputs in one dispatch (shaders/attention_inputs.wgsl):
//! per-head query/key norms, the q/k/v clamp, RoPE, and the keys' and values' stores
//! into the KV cache, from the projections as they come (one fused q/k/v matrix or
//! three).

use crate::error::{Error, Result};
use crate::gpu::kernel::{Recorder, ATTENTION_INPUTS, ATTENTION_INPUTS_F16_CACHE};
use crate::gpu::{DType, GpuContext, GpuTensor, KernelTarget};
use crate::ops::attention::KvCache;
use crate::ops::norm::rms_norm_reference;
use crate::ops::rope::{rope_reference, RopeAngles};
use crate::ops::{expect_shape, workgroups, TokenPositions};

/// Where a step's query, key or value heads lie in a tensor: token t's head h is the
/// `head_dim` elements from `offset + t * stride + h * head_dim`.
#[derive(Clone, Copy)]
pub struct HeadRows<'a> {
    pub tensor: &'a GpuTensor,
    pub offset: usize,
    pub stride: usize,
}

impl<'a> HeadRows<'a> {
    /// All of a `[T, heads * head_dim]` tensor.
    pub fn whole(tensor: &'a GpuTensor) -> Self {
        Self::columns(tensor, 0)
    }

    /// Columns `offset..` of each row of a `[T, width]` tensor (a fused projection).
    pub fn columns(tensor: &'a GpuTensor, offset: usize) -> Self {
        Self {
            tensor,
            offset,
            stride: tensor.shape[1],
        }
    }
}

/// What happens to queries and keys between the projections and attention.
#[derive(Clone, Copy)]
pub struct InputTransforms<'a> {
    /// Per-head RMSNorm weights `[head_dim]` of queries and keys (Qwen3).
    pub norms: Option<(&'a GpuTensor, &'a GpuTensor)>,
    pub eps: f32,
    /// Clamp queries, keys and values to `[-clip, clip]` (after the norms).
    pub clip: Option<f32>,
    pub angles: RopeAngles<'a>,
    /// RoPE pairs (2i, 2i + 1) instead of (i, i + rot/2).
    pub interleaved: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct InputsParams {
    pub(crate) tokens: u32,
    pub(crate) heads: u32,
    pub(crate) kv_heads: u32,
    pub(crate) head_dim: u32,
    pub(crate) max_ctx: u32,
    pub(crate) slots: u32,
    pub(crate) half_rot: u32,
    pub(crate) interleaved: u32,
    pub(crate) by_token: u32,
    pub(crate) has_norm: u32,
    pub(crate) eps: f32,
    pub(crate) clip: f32,
    pub(crate) q_offset: u32,
    pub(crate) q_stride: u32,
    pub(crate) k_offset: u32,
    pub(crate) k_stride: u32,
    pub(crate) v_offset: u32,
    pub(crate) v_stride: u32,
    pub(crate) _pad: [u32; 2],
}

fn check_rows(what: &str, rows: &HeadRows, tokens: usize, width: usize) -> Result<()> {
    let needed = rows.offset + tokens.saturating_sub(1) * rows.stride + width;
    if rows.tensor.dtype != DType::F32 || rows.stride < width || rows.tensor.len() < needed {
        return Err(Error::Config(format!(
            "attention {what}: {tokens} tokens of {width} f32 elements from element {} every {} do not fit a {:?} tensor of {} elements",
            rows.offset,
            rows.stride,
            rows.tensor.dtype,
            rows.tensor.len()
        )));
    }
    Ok(())
}

/// Records one grouped-query step's inputs: token t's query heads normed (with
/// `transforms.norms`), clamped (`clip`) and rotated into `q_out [T, heads * head_dim]`,
/// its keys the same way and its values clamped into `cache` at the token's (slot,
/// position) (a token outside the cache stores nothing, as `encode_attention`'s store).
#[allow(clippy::too_many_arguments)]
pub fn encode_attention_inputs(
    ctx: &GpuContext,
    rec: &mut Recorder,
    cache: &KvCache,
    (q, k, v): (HeadRows, HeadRows, HeadRows),
    heads: usize,
    transforms: InputTransforms,
    positions: &TokenPositions,
    q_out: &GpuTensor,
) -> Result<()> {
    let (tokens, hd, kv_heads) = (q_out.shape[0], cache.head_dim, cache.kv_heads);
    if cache.latent {
        return Err(Error::Config(
            "attention inputs: a latent (MLA) cache has no per-head keys and values".into(),
        ));
    }
    if tokens > positions.tokens {
        return Err(Error::Config(format!(
            "attention inputs: {tokens} tokens but positions for {}",
            positions.tokens
        )));
    }
    if heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(Error::Config(format!(
            "{heads} heads are not a multiple of {kv_heads} kv heads"
        )));
    }
    expect_shape("attention queries", q_out, &[tokens, heads * hd])?;
    check_rows("queries", &q, tokens, heads * hd)?;
    check_rows("keys", &k, tokens, kv_heads * hd)?;
    check_rows("values", &v, tokens, kv_heads * hd)?;
    let (table, by_token) = match transforms.angles {
        RopeAngles::ByPosition(table) => (table, false),
        RopeAngles::ByToken(rows) => (rows, true),
    };
    let half_rot = table.shape[1];
    if 2 * half_rot > hd {
        return Err(Error::Config(format!(
            "RoPE over {} dimensions of {hd}-dimension heads",
            2 * half_rot
        )));
    }
    if let Some((qn, kn)) = transforms.norms {
        expect_shape("query norm", qn, &[hd])?;
        expect_shape("key norm", kn, &[hd])?;
    }
    let params = InputsParams {
        tokens: tokens as u32,
        heads: heads as u32,
        kv_heads: kv_heads as u32,
        head_dim: hd as u32,
        max_ctx: cache.max_ctx as u32,
        slots: cache.slots as u32,
        half_rot: half_rot as u32,
        interleaved: transforms.interleaved as u32,
        by_token: by_token as u32,
        has_norm: transforms.norms.is_some() as u32,
        eps: transforms.eps,
        clip: transforms.clip.unwrap_or(0.0),
        q_offset: q.offset as u32,
        q_stride: q.stride as u32,
        k_offset: k.offset as u32,
        k_stride: k.stride as u32,
        v_offset: v.offset as u32,
        v_stride: v.stride as u32,
        _pad: [0; 2],
    };
    let shader = match cache.dtype {
        DType::F16 => ATTENTION_INPUTS_F16_CACHE,
        _ => ATTENTION_INPUTS,
    };
    // Without norms the table stands in for their bindings (not read).
    let (qn, kn) = transforms
        .norms
        .map_or((&table.buffer, &table.buffer), |(a, b)| (&a.buffer, &b.buffer));
    let rows = tokens * (heads + kv_heads);
    // A workgroup per (token, head), or on a CPU kernel target an invocation.
    let (entry, grid) = match ctx.kernel_target {
        KernelTarget::Gpu => ("rope_store", rows as u32),
        KernelTarget::Cpu => ("rope_store_serial", workgroups(rows, 64)),
    };
    rec.dispatch(
        ctx,
        shader.entry(entry),
        &params,
        &[
            (1, &q.tensor.buffer),
            (2, &cache.keys.buffer),
            (3, &cache.values.buffer),
            (4, &k.tensor.buffer),
            (5, &v.tensor.buffer),
            (6, &q_out.buffer),
            (7, &table.buffer),
            (8, &positions.buffer),
            (9, qn),
            (12, kn),
        ],
        grid,
    );
    Ok(())
}

/// The CPU reference's settings: [`InputTransforms`] on host data.
pub struct InputsReference<'a> {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub norms: Option<(&'a [f32], &'a [f32])>,
    pub eps: f32,
    pub clip: Option<f32>,
    /// `[rows, rot/2, 2]` (cos, sin).
    pub table: &'a [f32],
    pub half_rot: usize,
    pub interleaved: bool,
}

/// CPU reference: from `q [T, heads * head_dim]`, `k`, `v [T, kv_heads * head_dim]` and
/// each token's table row, the rotated queries, and the keys and values the cache gets
/// (same layouts), by the separate norm, clamp and RoPE references in the order the
/// model applies them.
pub fn attention_inputs_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    table_rows: &[usize],
    r: &InputsReference,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let clip = |x: Vec<f32>| match r.clip {
        Some(c) => x.into_iter().map(|e| e.clamp(-c, c)).collect(),
        None => x,
    };
    let transform = |x: &[f32], heads: usize, norm: Option<&[f32]>| -> Vec<f32> {
        let width = heads * r.head_dim;
        let mut out = Vec::with_capacity(x.len());
        for (token, row) in x.chunks(width).enumerate() {
            let normed = match norm {
                Some(w) => rms_norm_reference(row, w, r.eps),
                None => row.to_vec(),
            };
            let mut row = clip(normed);
            rope_reference(
                &mut row,
                r.table,
                r.half_rot,
                heads,
                r.head_dim,
                table_rows[token],
                r.interleaved,
            );
            out.extend(row);
        }
        out
    };
    (
        transform(q, r.heads, r.norms.map(|n| n.0)),
        transform(k, r.kv_heads, r.norms.map(|n| n.1)),
        clip(v.to_vec()),
    )
}

//! Token embedding lookup (shaders/embedding.wgsl) and greedy argmax (shaders/sampling.wgsl).

use crate::gpu::kernel::{dispatch, EMBEDDING, SAMPLING};
use crate::gpu::{GpuContext, GpuTensor};
use crate::ops::workgroups;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct EmbeddingParams {
    tokens: u32,
    dim: u32,
    scale: f32,
    _pad: u32,
}

/// `x [T, d] = table[ids] * scale`; `table` is `[vocab, d]` in any weight dtype.
/// Ids must be below vocab (checked by the caller, on the host).
pub fn encode_embedding(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    ids: &GpuTensor,
    table: &GpuTensor,
    scale: f32,
    x: &GpuTensor,
) {
    let (tokens, dim) = (ids.len(), table.shape[table.shape.len() - 1]);
    let params = ctx.uniform(&EmbeddingParams {
        tokens: tokens as u32,
        dim: dim as u32,
        scale,
        _pad: 0,
    });
    let pipeline = ctx.pipeline(&EMBEDDING, "embed", &[("WEIGHT_DTYPE", table.dtype.weight_code())]);
    let bind = ctx.bind(
        &pipeline,
        &[(0, &params), (1, &ids.buffer), (2, &table.buffer), (3, &x.buffer)],
    );
    dispatch(encoder, &pipeline, &bind, workgroups(tokens * dim, 64));
}

/// `result[0] = argmax(logits)`, lowest index on ties.
pub fn encode_argmax(ctx: &GpuContext, encoder: &mut wgpu::CommandEncoder, logits: &GpuTensor, result: &GpuTensor) {
    let params = ctx.uniform(&[logits.len() as u32, 0, 0, 0]);
    let pipeline = ctx.pipeline(&SAMPLING, "argmax", &[]);
    let bind = ctx.bind(&pipeline, &[(0, &params), (1, &logits.buffer), (2, &result.buffer)]);
    dispatch(encoder, &pipeline, &bind, 1);
}

/// CPU reference of argmax (lowest index on ties, NaN ignored).
pub fn argmax_reference(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(f32, usize)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(b, _)| v > b) {
            best = Some((v, i));
        }
    }
    best.map(|(_, i)| i)
}

//! Token embedding lookup (shaders/embedding.wgsl).

use crate::error::{Error, Result};
use crate::gpu::kernel::{Recorder, EMBEDDING};
use crate::gpu::{GpuContext, GpuTensor};
use crate::ops::{expect_shape, weight_run, workgroups};
use crate::weights::WeightMatrix;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct EmbeddingParams {
    pub(crate) tokens: u32,
    pub(crate) dim: u32,
    pub(crate) scale: f32,
    pub(crate) row_begin: u32,
    pub(crate) row_end: u32,
    pub(crate) _pad: [u32; 3],
}

/// `x [T, d] = table[ids] * scale`; `table` is a `[vocab, d]` matrix in any format,
/// one dispatch per chunk of its rows. Ids must be below vocab (checked by the
/// caller, on the host).
pub fn encode_embedding(
    ctx: &GpuContext,
    rec: &mut Recorder,
    ids: &GpuTensor,
    table: &WeightMatrix,
    scale: f32,
    x: &GpuTensor,
) -> Result<()> {
    encode_embedding_in_runs(ctx, rec, ids, table, scale, x, weight_run(table.in_dim))
}

/// [`encode_embedding`] decoding `run` consecutive weights per invocation: 8 (`d` a
/// multiple of 8) through the weight accessor's runs, or 1 through its single-element
/// path, which every kernel shares; the two give the same bits.
pub fn encode_embedding_in_runs(
    ctx: &GpuContext,
    rec: &mut Recorder,
    ids: &GpuTensor,
    table: &WeightMatrix,
    scale: f32,
    x: &GpuTensor,
    run: u32,
) -> Result<()> {
    let (tokens, dim) = (ids.len(), table.in_dim);
    expect_shape("embedding output", x, &[tokens, dim])?;
    if run != 1 && run != weight_run(dim) {
        return Err(Error::Unsupported(format!(
            "embedding in runs of {run} weights: runs are 1 or 8, and 8 needs table rows of a multiple of 8 (these are {dim} long)"
        )));
    }
    for chunk in &table.chunks {
        let params = EmbeddingParams {
            tokens: tokens as u32,
            dim: dim as u32,
            scale,
            row_begin: chunk.rows.start as u32,
            row_end: chunk.rows.end as u32,
            _pad: [0; 3],
        };
        rec.dispatch(
            ctx,
            EMBEDDING.entry("embed").weights(table.format).run(run),
            &params,
            &[(1, &ids.buffer), (2, &chunk.buffer), (3, &x.buffer)],
            workgroups(tokens * dim / run as usize, 64),
        );
    }
    Ok(())
}

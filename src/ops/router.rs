//! Router logits: `logits[t, r] = x[t] . w[r]` (shaders/router.wgsl).

use crate::error::Result;
use crate::gpu::kernel::{Recorder, ROUTER};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::ops::{expect_shape, weight_run, workgroups};
use crate::weights::WeightFormat;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RouterParams {
    pub(crate) tokens: u32,
    pub(crate) rows: u32,
    pub(crate) dim: u32,
    pub(crate) _pad: u32,
}

/// Records `logits [T, R] = x [T, d] . w [R, d]^T` (w in any weight dtype).
pub fn encode_router_logits(
    ctx: &GpuContext,
    rec: &mut Recorder,
    x: &GpuTensor,
    w: &GpuTensor,
    logits: &GpuTensor,
) -> Result<()> {
    let (tokens, dim) = (x.shape[0], x.shape[1]);
    let rows = w.shape[0];
    expect_shape("router weight", w, &[rows, dim])?;
    expect_shape("router logits", logits, &[tokens, rows])?;
    expect_shape("router input", x, &[tokens, dim])?;
    let params = RouterParams {
        tokens: tokens as u32,
        rows: rows as u32,
        dim: dim as u32,
        _pad: 0,
    };
    debug_assert_ne!(x.dtype, DType::U32);
    let key = ROUTER
        .entry("router_logits")
        .weights(WeightFormat::of_dtype(w.dtype)?)
        .run(weight_run(dim));
    rec.dispatch(
        ctx,
        key,
        &params,
        &[(1, &x.buffer), (2, &w.buffer), (3, &logits.buffer)],
        workgroups(tokens * rows, 64),
    );
    Ok(())
}

/// CPU reference: sequential f32 dot products.
pub fn router_logits_reference(x: &[f32], w: &[f32], tokens: usize, rows: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; tokens * rows];
    for t in 0..tokens {
        for r in 0..rows {
            out[t * rows + r] = dot(&x[t * dim..(t + 1) * dim], &w[r * dim..(r + 1) * dim]);
        }
    }
    out
}

/// Sequential f32 dot product (the order every kernel uses).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        acc += x * y;
    }
    acc
}

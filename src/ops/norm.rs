//! RMSNorm (shaders/norm.wgsl).

use crate::error::Result;
use crate::gpu::kernel::{Recorder, NORM};
use crate::gpu::{GpuContext, GpuTensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct NormParams {
    pub(crate) rows: u32,
    pub(crate) dim: u32,
    pub(crate) eps: f32,
    pub(crate) _pad: u32,
}

/// Records `y = rms_norm(x) * w` over rows of `w.len()` elements (`x`, `y` of equal size).
pub fn encode_rms_norm(
    ctx: &GpuContext,
    rec: &mut Recorder,
    x: &GpuTensor,
    w: &GpuTensor,
    eps: f32,
    y: &GpuTensor,
) -> Result<()> {
    let dim = w.len();
    let rows = x.len() / dim;
    crate::ops::expect_shape("rms norm output", y, &x.shape)?;
    let params = NormParams {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        _pad: 0,
    };
    rec.dispatch(
        ctx,
        NORM.entry("rms_norm"),
        &params,
        &[(1, &x.buffer), (2, &w.buffer), (3, &y.buffer)],
        rows as u32,
    );
    Ok(())
}

/// CPU reference, row by row.
pub fn rms_norm_reference(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    x.chunks(w.len())
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter().zip(w).map(move |(v, g)| v * inv * g)
        })
        .collect()
}

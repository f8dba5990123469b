//! In-place elementwise updates (shaders/elementwise.wgsl): residual add, row bias,
//! scale-and-clamp.

use crate::gpu::kernel::{Recorder, ELEMENTWISE};
use crate::gpu::{GpuContext, GpuTensor};
use crate::ops::workgroups;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ElementwiseParams {
    pub(crate) len: u32,
    pub(crate) cols: u32,
    pub(crate) scale: f32,
    pub(crate) limit: f32,
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &GpuContext,
    rec: &mut Recorder,
    entry: &'static str,
    x: &GpuTensor,
    other: &wgpu::Buffer,
    cols: usize,
    scale: f32,
    limit: f32,
) {
    let params = ElementwiseParams {
        len: x.len() as u32,
        cols: cols as u32,
        scale,
        limit,
    };
    let entries: Vec<(u32, &wgpu::Buffer)> = if entry == "scale_clamp" {
        vec![(1, &x.buffer)]
    } else {
        vec![(1, &x.buffer), (2, other)]
    };
    rec.dispatch(
        ctx,
        ELEMENTWISE.entry(entry),
        &params,
        &entries,
        workgroups(x.len(), 64),
    );
}

/// `x += scale * other` (same length).
pub fn encode_add_scaled(ctx: &GpuContext, rec: &mut Recorder, x: &GpuTensor, other: &GpuTensor, scale: f32) {
    debug_assert_eq!(x.len(), other.len());
    record(ctx, rec, "add_scaled", x, &other.buffer, 1, scale, 0.0);
}

/// `x[r, c] += bias[c]`.
pub fn encode_add_row_bias(ctx: &GpuContext, rec: &mut Recorder, x: &GpuTensor, bias: &GpuTensor) {
    record(ctx, rec, "add_row_bias", x, &bias.buffer, bias.len(), 1.0, 0.0);
}

/// `x = clamp(x * scale, -limit, limit)`.
pub fn encode_scale_clamp(ctx: &GpuContext, rec: &mut Recorder, x: &GpuTensor, scale: f32, limit: f32) {
    record(ctx, rec, "scale_clamp", x, &x.buffer, 1, scale, limit);
}

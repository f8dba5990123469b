//! In-place elementwise updates (shaders/elementwise.wgsl): residual add, row bias,
//! scale-and-clamp, and a row gather.

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
    rows: Option<&wgpu::Buffer>,
) {
    let params = ElementwiseParams {
        len: x.len() as u32,
        cols: cols as u32,
        scale,
        limit,
    };
    let entries: Vec<(u32, &wgpu::Buffer)> = match (entry, rows) {
        ("scale_clamp", _) => vec![(1, &x.buffer)],
        (_, Some(rows)) => vec![(1, &x.buffer), (2, other), (3, rows)],
        _ => vec![(1, &x.buffer), (2, other)],
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
    record(ctx, rec, "add_scaled", x, &other.buffer, 1, scale, 0.0, None);
}

/// `x[r, c] += bias[c]`.
pub fn encode_add_row_bias(ctx: &GpuContext, rec: &mut Recorder, x: &GpuTensor, bias: &GpuTensor) {
    record(ctx, rec, "add_row_bias", x, &bias.buffer, bias.len(), 1.0, 0.0, None);
}

/// `x = clamp(x * scale, -limit, limit)`.
pub fn encode_scale_clamp(ctx: &GpuContext, rec: &mut Recorder, x: &GpuTensor, scale: f32, limit: f32) {
    record(ctx, rec, "scale_clamp", x, &x.buffer, 1, scale, limit, None);
}

/// `out [R, cols] = x[rows[r]]` for `x [T, cols]` and `rows [R]` u32 (each below T).
pub fn encode_gather_rows(ctx: &GpuContext, rec: &mut Recorder, x: &GpuTensor, rows: &GpuTensor, out: &GpuTensor) {
    let cols = x.shape[1];
    debug_assert_eq!(out.len(), rows.len() * cols);
    record(
        ctx,
        rec,
        "gather_rows",
        out,
        &x.buffer,
        cols,
        1.0,
        0.0,
        Some(&rows.buffer),
    );
}

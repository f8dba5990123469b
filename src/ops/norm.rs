//! RMSNorm (shaders/norm.wgsl).

use crate::error::Result;
use crate::gpu::kernel::{Recorder, NORM};
use crate::gpu::{GpuContext, GpuTensor, KernelTarget};
use crate::ops::workgroups;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct NormParams {
    pub(crate) rows: u32,
    pub(crate) dim: u32,
    pub(crate) eps: f32,
    pub(crate) rows2: u32,
    pub(crate) dim2: u32,
    pub(crate) _pad: [u32; 3],
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
    crate::ops::expect_shape("rms norm output", y, &x.shape)?;
    dispatch_norm(ctx, rec, (x, w, y), None, eps);
    Ok(())
}

/// Records two norms in one dispatch, each as [`encode_rms_norm`] would: `y = rms_norm(x)
/// * w` and `y2 = rms_norm(x2) * w2` (a layer's query and key norms).
pub fn encode_rms_norm_pair(
    ctx: &GpuContext,
    rec: &mut Recorder,
    (x, w, y): (&GpuTensor, &GpuTensor, &GpuTensor),
    (x2, w2, y2): (&GpuTensor, &GpuTensor, &GpuTensor),
    eps: f32,
) -> Result<()> {
    crate::ops::expect_shape("rms norm output", y, &x.shape)?;
    crate::ops::expect_shape("rms norm output", y2, &x2.shape)?;
    dispatch_norm(ctx, rec, (x, w, y), Some((x2, w2, y2)), eps);
    Ok(())
}

/// The norm of `x` and, with a second (x2, w2, y2), of that one too. Without one, the
/// kernel's second bindings hold `x`, `w` and a placeholder it does not touch.
fn dispatch_norm(
    ctx: &GpuContext,
    rec: &mut Recorder,
    (x, w, y): (&GpuTensor, &GpuTensor, &GpuTensor),
    second: Option<(&GpuTensor, &GpuTensor, &GpuTensor)>,
    eps: f32,
) {
    let rows_of = |x: &GpuTensor, w: &GpuTensor| x.len() / w.len();
    let (x2, w2, y2, rows2, dim2) = match second {
        Some((x2, w2, y2)) => (&x2.buffer, &w2.buffer, &y2.buffer, rows_of(x2, w2), w2.len()),
        None => (&x.buffer, &w.buffer, ctx.unread_binding(), 0, 0),
    };
    let rows = rows_of(x, w);
    let params = NormParams {
        rows: rows as u32,
        dim: w.len() as u32,
        eps,
        rows2: rows2 as u32,
        dim2: dim2 as u32,
        _pad: [0; 3],
    };
    // A workgroup per row, or on a CPU kernel target an invocation per row.
    let (entry, grid) = match ctx.kernel_target {
        KernelTarget::Gpu => ("rms_norm", (rows + rows2) as u32),
        KernelTarget::Cpu => ("rms_norm_serial", workgroups(rows + rows2, 64)),
    };
    rec.dispatch(
        ctx,
        NORM.entry(entry),
        &params,
        &[
            (1, &x.buffer),
            (2, &w.buffer),
            (3, &y.buffer),
            (4, x2),
            (5, w2),
            (6, y2),
        ],
        grid,
    );
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

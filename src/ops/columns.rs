//! Column copies between row-major matrices (shaders/columns.wgsl): the splits and
//! joins of multi-head latent attention (a head's no-RoPE and RoPE parts, a latent
//! and its RoPE key).

use crate::error::{Error, Result};
use crate::gpu::kernel::{Recorder, COLUMNS};
use crate::gpu::{GpuContext, GpuTensor};
use crate::ops::workgroups;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ColumnsParams {
    pub(crate) rows: u32,
    pub(crate) width: u32,
    pub(crate) src_stride: u32,
    pub(crate) src_offset: u32,
    pub(crate) dst_stride: u32,
    pub(crate) dst_offset: u32,
    pub(crate) _pad: [u32; 2],
}

/// A block of columns: `width` columns from `offset` of a matrix with rows `stride`
/// elements long.
#[derive(Clone, Copy, Debug)]
pub struct Columns {
    pub stride: usize,
    pub offset: usize,
    pub width: usize,
}

impl Columns {
    pub fn new(stride: usize, offset: usize, width: usize) -> Self {
        Self { stride, offset, width }
    }
}

/// `dst[r, to.offset + c] = src[r, from.offset + c]` for `rows` rows and `from.width`
/// columns (`to.width` must match).
pub fn encode_copy_columns(
    ctx: &GpuContext,
    rec: &mut Recorder,
    rows: usize,
    src: &GpuTensor,
    from: Columns,
    dst: &GpuTensor,
    to: Columns,
) -> Result<()> {
    let fits = |c: Columns, t: &GpuTensor| c.offset + c.width <= c.stride && rows * c.stride <= t.len();
    if from.width != to.width || !fits(from, src) || !fits(to, dst) {
        return Err(Error::Config(format!(
            "column copy of {rows} rows from {from:?} of a tensor of {} elements to {to:?} of one of {} does not fit",
            src.len(),
            dst.len()
        )));
    }
    let params = ColumnsParams {
        rows: rows as u32,
        width: from.width as u32,
        src_stride: from.stride as u32,
        src_offset: from.offset as u32,
        dst_stride: to.stride as u32,
        dst_offset: to.offset as u32,
        _pad: [0; 2],
    };
    rec.dispatch(
        ctx,
        COLUMNS.entry("copy_columns"),
        &params,
        &[(1, &src.buffer), (2, &dst.buffer)],
        workgroups(rows * from.width, 64),
    );
    Ok(())
}

/// Splits `src` (`rows` rows `stride` long) into dense matrices: each part is a
/// `[rows, width]` tensor and the column of `src` where it begins.
pub fn encode_split_columns(
    ctx: &GpuContext,
    rec: &mut Recorder,
    rows: usize,
    src: &GpuTensor,
    stride: usize,
    parts: &[(&GpuTensor, usize)],
) -> Result<()> {
    for &(part, offset) in parts {
        let width = part.len() / rows.max(1);
        encode_copy_columns(
            ctx,
            rec,
            rows,
            src,
            Columns::new(stride, offset, width),
            part,
            Columns::new(width, 0, width),
        )?;
    }
    Ok(())
}

/// Joins dense `[rows, width]` parts into `dst` (`rows` rows `stride` long), each at
/// the column given beside it.
pub fn encode_join_columns(
    ctx: &GpuContext,
    rec: &mut Recorder,
    rows: usize,
    parts: &[(&GpuTensor, usize)],
    dst: &GpuTensor,
    stride: usize,
) -> Result<()> {
    for &(part, offset) in parts {
        let width = part.len() / rows.max(1);
        encode_copy_columns(
            ctx,
            rec,
            rows,
            part,
            Columns::new(width, 0, width),
            dst,
            Columns::new(stride, offset, width),
        )?;
    }
    Ok(())
}

/// CPU reference of [`encode_copy_columns`].
pub fn copy_columns_reference(rows: usize, src: &[f32], from: Columns, dst: &mut [f32], to: Columns) {
    for r in 0..rows {
        for c in 0..from.width {
            dst[r * to.stride + to.offset + c] = src[r * from.stride + from.offset + c];
        }
    }
}

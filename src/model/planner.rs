//! Plans a model's buffers from a checkpoint's headers: allocates each weight in the
//! format the caller asked for and lists the [`Placement`]s that fill it from the
//! checkpoint's bytes (plain row ranges, or assembled: transposed, de-interleaved,
//! joined MXFP4 blocks and scales).

use crate::error::{Error, Result};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::model::model::StorageFormats;
use crate::model::safetensors_io::Checkpoint;
use crate::weights::{Assembly, Placement, WeightFormat, WeightMatrix};

/// What a matrix is for, which decides its storage when quantizing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Embedding,
    Output,
    Projection,
}

/// Allocates the model's buffers from a checkpoint's headers and lists where each
/// tensor's bytes go.
pub(crate) struct Planner<'a> {
    pub(crate) ctx: &'a GpuContext,
    pub(crate) checkpoint: &'a Checkpoint,
    pub(crate) formats: StorageFormats,
    pub(crate) placements: Vec<Placement>,
}

impl Planner<'_> {
    /// The storage format of a matrix of `role` with rows of `input` elements stored
    /// as `stored`. Rows that are not whole blocks keep the element format.
    pub(crate) fn format_for(&self, role: Role, stored: WeightFormat, input: usize) -> WeightFormat {
        let element = self.formats.convert.unwrap_or(stored);
        let block = match (role, self.formats.quantize) {
            (_, None) | (Role::Embedding, _) => None,
            (Role::Output, Some(_)) => Some(WeightFormat::Q8_0),
            (Role::Projection, Some(q)) => Some(q),
        };
        match block {
            Some(q) if input.is_multiple_of(q.block_elements()) => q,
            _ => element,
        }
    }

    /// A plain `[out, in]` matrix.
    pub(crate) fn matrix(&mut self, name: &str, out: usize, input: usize) -> Result<WeightMatrix> {
        self.matrix_as(Role::Projection, name, out, input)
    }

    pub(crate) fn matrix_as(&mut self, role: Role, name: &str, out: usize, input: usize) -> Result<WeightMatrix> {
        self.stacked(role, name, 1, out, input, &|_| (name.to_string(), vec![out, input], 0))
    }

    /// `[experts, out, in]` gathered from the checkpoint: `source(e)` names the tensor
    /// holding expert e, its full shape, and the row where expert e's rows begin.
    pub(crate) fn stacked(
        &mut self,
        role: Role,
        label: &str,
        experts: usize,
        out: usize,
        input: usize,
        source: &dyn Fn(usize) -> (String, Vec<usize>, usize),
    ) -> Result<WeightMatrix> {
        let (first, shape, _) = source(0);
        let (_, _, first_format) = self.checkpoint.expect(&first, &shape)?;
        let format = self.format_for(role, first_format, input);
        let matrix = WeightMatrix::allocate(self.ctx, label, [experts, out, input], format)?;
        for e in 0..experts {
            let (name, shape, row0) = source(e);
            self.place_rows(&matrix, e, 0, 0..out, &name, &shape, row0)?;
        }
        Ok(matrix)
    }

    /// One `[rows_0 + rows_1 + .., in]` matrix of `[rows_i, in]` tensors stacked in
    /// order (a layer's q, k and v projections, so that one kernel computes all three),
    /// or None where they would not share a storage format (GGUF files often quantize
    /// v with more bits than q and k).
    pub(crate) fn joined_rows(
        &mut self,
        label: &str,
        parts: &[(String, usize)],
        input: usize,
    ) -> Result<Option<WeightMatrix>> {
        let mut format = None;
        for (name, rows) in parts {
            let (_, _, stored) = self.checkpoint.expect(name, &[*rows, input])?;
            let part_format = self.format_for(Role::Projection, stored, input);
            if format.is_some_and(|f| f != part_format) {
                return Ok(None);
            }
            format = Some(part_format);
        }
        let Some(format) = format else {
            return Ok(None);
        };
        let total = parts.iter().map(|(_, rows)| rows).sum();
        let matrix = WeightMatrix::allocate(self.ctx, label, [1, total, input], format)?;
        let mut first = 0;
        for (name, rows) in parts {
            self.place_rows(&matrix, 0, first, 0..*rows, name, &[*rows, input], 0)?;
            first += rows;
        }
        Ok(Some(matrix))
    }

    /// Rows `rows` of tensor `name` (of `shape`) from its row `row0` on, into expert
    /// `expert` of `matrix` `shift` rows further down.
    #[allow(clippy::too_many_arguments)]
    fn place_rows(
        &mut self,
        matrix: &WeightMatrix,
        expert: usize,
        shift: usize,
        rows: std::ops::Range<usize>,
        name: &str,
        shape: &[usize],
        row0: usize,
    ) -> Result<()> {
        let (shard, info, src_format) = self.checkpoint.expect(name, shape)?;
        let src_row = src_format.bytes_for(matrix.in_dim)? as u64;
        let shifted = rows.start + shift..rows.end + shift;
        for (chunk, dst_rows, dst_offset) in matrix.destinations(expert, shifted) {
            self.placements.push(Placement {
                tensor: name.to_string(),
                shard,
                src_offset: info.start + (row0 + dst_rows.start - shift) as u64 * src_row,
                src_len: dst_rows.len() as u64 * src_row,
                src_format,
                dst: chunk.buffer.clone(),
                dst_offset,
                dst_format: matrix.format,
                assembly: Assembly::Stream,
            });
        }
        Ok(())
    }

    /// `[experts, out, in]` from a `[experts, in, cols]` tensor applied as `x @ W`
    /// (gpt-oss): expert e's output row r is its column `first + r * step`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn columns(
        &mut self,
        label: &str,
        name: &str,
        experts: usize,
        out: usize,
        input: usize,
        cols: usize,
        first_step: (usize, usize),
    ) -> Result<WeightMatrix> {
        let shape = [experts, input, cols];
        self.transposed(label, name, &shape, experts, out, input, cols, first_step, &|e| {
            e * input * cols
        })
    }

    /// `[experts, out, in]` from blocks of a tensor of shape `shape`: expert e's block
    /// is the row-major `[in, cols]` matrix starting at element `start(e)`, and its
    /// output row r is that block's column `first + r * step`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn transposed(
        &mut self,
        label: &str,
        name: &str,
        shape: &[usize],
        experts: usize,
        out: usize,
        input: usize,
        cols: usize,
        (first, step): (usize, usize),
        start: &dyn Fn(usize) -> usize,
    ) -> Result<WeightMatrix> {
        let (shard, info, src_format) = self.checkpoint.expect(name, shape)?;
        if src_format.block_elements() != 1 {
            return Err(Error::Unsupported(format!(
                "tensor `{name}`: {src_format} cannot be transposed"
            )));
        }
        let format = self.format_for(Role::Projection, src_format, input);
        let matrix = WeightMatrix::allocate(self.ctx, label, [experts, out, input], format)?;
        let element = src_format.block_bytes() as u64;
        for e in 0..experts {
            for (chunk, rows, dst_offset) in matrix.destinations(e, 0..out) {
                self.placements.push(Placement {
                    tensor: name.to_string(),
                    shard,
                    src_offset: info.start + start(e) as u64 * element,
                    src_len: (input * cols) as u64 * element,
                    src_format,
                    dst: chunk.buffer.clone(),
                    dst_offset,
                    dst_format: format,
                    assembly: Assembly::Columns {
                        rows: input,
                        cols,
                        first: first + rows.start * step,
                        step,
                        count: rows.len(),
                    },
                });
            }
        }
        Ok(matrix)
    }

    /// `[experts, out, in]` from Hugging Face MXFP4 tensors `{name}_blocks`
    /// `[experts, rows, in / 32, 16]` and `{name}_scales` `[experts, rows, in / 32]`:
    /// expert e's output row r is its stored row `first + r * step`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hf_mxfp4(
        &mut self,
        label: &str,
        name: &str,
        experts: usize,
        out: usize,
        input: usize,
        rows_stored: usize,
        (first, step): (usize, usize),
    ) -> Result<WeightMatrix> {
        let blocks = input / 32;
        let blocks_name = format!("{name}_blocks");
        let scales_name = format!("{name}_scales");
        let (shard, info) = self
            .checkpoint
            .expect_raw(&blocks_name, &[experts, rows_stored, blocks, 16], "U8")?;
        let (scale_shard, scale_info) =
            self.checkpoint
                .expect_raw(&scales_name, &[experts, rows_stored, blocks], "U8")?;
        if scale_shard != shard {
            return Err(Error::Unsupported(format!(
                "`{blocks_name}` and `{scales_name}` are in different shards"
            )));
        }
        let format = self.format_for(Role::Projection, WeightFormat::Mxfp4, input);
        let matrix = WeightMatrix::allocate(self.ctx, label, [experts, out, input], format)?;
        let (expert_blocks, expert_scales) = ((rows_stored * blocks * 16) as u64, (rows_stored * blocks) as u64);
        for e in 0..experts {
            let scales_start = scale_info.start + e as u64 * expert_scales;
            for (chunk, rows, dst_offset) in matrix.destinations(e, 0..out) {
                self.placements.push(Placement {
                    tensor: blocks_name.clone(),
                    shard,
                    src_offset: info.start + e as u64 * expert_blocks,
                    src_len: expert_blocks,
                    src_format: WeightFormat::Mxfp4,
                    dst: chunk.buffer.clone(),
                    dst_offset,
                    dst_format: format,
                    assembly: Assembly::HfMxfp4 {
                        scales: scales_start..scales_start + expert_scales,
                        blocks,
                        first: first + rows.start * step,
                        step,
                        count: rows.len(),
                    },
                });
            }
        }
        Ok(matrix)
    }

    /// `[experts, count]` f32 from a `[experts, cols]` tensor: columns `first + j * step`.
    pub(crate) fn vector_columns(
        &mut self,
        name: &str,
        experts: usize,
        cols: usize,
        (first, step): (usize, usize),
        count: usize,
    ) -> Result<GpuTensor> {
        let (shard, info, src_format) = self.checkpoint.expect(name, &[experts, cols])?;
        let tensor = GpuTensor::empty(self.ctx, name, &[experts, count], DType::F32)?;
        let row_bytes = (cols * src_format.block_bytes()) as u64;
        for e in 0..experts {
            self.placements.push(Placement {
                tensor: name.to_string(),
                shard,
                src_offset: info.start + e as u64 * row_bytes,
                src_len: row_bytes,
                src_format,
                dst: tensor.buffer.clone(),
                dst_offset: (e * count * 4) as u64,
                dst_format: WeightFormat::F32,
                assembly: Assembly::Columns {
                    rows: 1,
                    cols,
                    first,
                    step,
                    count,
                },
            });
        }
        Ok(tensor)
    }

    /// A small tensor kept in f32 (norms, biases, routers).
    pub(crate) fn vector(&mut self, name: &str, shape: &[usize]) -> Result<GpuTensor> {
        let tensor = GpuTensor::empty(self.ctx, name, shape, DType::F32)?;
        self.place_vector(name, shape, &tensor, 0)?;
        Ok(tensor)
    }

    /// One f32 vector of several `[len_i]` tensors in order (the biases of joined rows).
    pub(crate) fn joined_vector(&mut self, label: &str, parts: &[(String, usize)]) -> Result<GpuTensor> {
        let total = parts.iter().map(|(_, len)| len).sum();
        let tensor = GpuTensor::empty(self.ctx, label, &[total], DType::F32)?;
        let mut first = 0;
        for (name, len) in parts {
            self.place_vector(name, &[*len], &tensor, first)?;
            first += len;
        }
        Ok(tensor)
    }

    /// Tensor `name` into `dst` from element `first`.
    fn place_vector(&mut self, name: &str, shape: &[usize], dst: &GpuTensor, first: usize) -> Result<()> {
        let (shard, info, src_format) = self.checkpoint.expect(name, shape)?;
        self.placements.push(Placement {
            tensor: name.to_string(),
            shard,
            src_offset: info.start,
            src_len: info.len,
            src_format,
            dst: dst.buffer.clone(),
            dst_offset: (first * 4) as u64,
            dst_format: WeightFormat::F32,
            assembly: Assembly::Stream,
        });
        Ok(())
    }
}

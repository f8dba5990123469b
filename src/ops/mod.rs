//! GPU ops of the MoE layer. Each module holds the host code that records a kernel
//! of `shaders/` and, beside it, the plain-Rust CPU reference that tests compare with.
pub mod attention;
pub mod attention_inputs;
pub mod capacity;
pub mod columns;
pub mod combine;
pub mod elementwise;
pub mod embedding;
pub mod expert_matmul;
pub mod norm;
pub mod params_layout;
pub mod permute;
pub mod rope;
pub mod router;
pub mod routing;
pub mod sampling;

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, GpuTensor};

/// Where each token of a forward goes: its sequence's KV-cache slot and its position,
/// `[T] x (slot, position)` u32 in a storage buffer that the RoPE and attention kernels
/// read. A recorded forward replays at any positions, for any mix of sequences, by
/// rewriting these `8 T` bytes: one sequence's tokens at `pos0..pos0 + T`, or one
/// token of each of T sequences (a continuous-batching decode step).
///
/// With dynamic NTK RoPE, whose angles depend on how long each token's forward is,
/// the step's (cos, sin) rows `[T, rot/2, 2]` are written alongside.
pub struct TokenPositions {
    pub buffer: wgpu::Buffer,
    pub tokens: usize,
    /// Dynamic NTK: the step's rotation rows and how they are computed.
    pub step_angles: Option<(GpuTensor, rope::DynamicNtk)>,
}

impl TokenPositions {
    /// Room for `tokens` tokens, all at slot 0, position 0 until set.
    pub fn new(ctx: &GpuContext, tokens: usize) -> Result<Self> {
        let tokens = tokens.max(1);
        ctx.check_binding("the token positions", (tokens * 8) as u64)?;
        let buffer = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("token positions"),
            size: (tokens * 8) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Self {
            buffer,
            tokens,
            step_angles: None,
        })
    }

    /// Room for `tokens` tokens and their dynamic NTK rotation rows.
    pub fn with_dynamic_ntk(ctx: &GpuContext, tokens: usize, ntk: rope::DynamicNtk) -> Result<Self> {
        let mut positions = Self::new(ctx, tokens)?;
        let shape = [positions.tokens, ntk.rotary_dim / 2, 2];
        let rows = GpuTensor::empty(ctx, "dynamic NTK rotation rows", &shape, crate::gpu::DType::F32)?;
        positions.step_angles = Some((rows, ntk));
        Ok(positions)
    }

    /// `tokens` tokens of slot 0 at `pos0..pos0 + tokens`.
    pub fn contiguous(ctx: &GpuContext, pos0: usize, tokens: usize) -> Result<Self> {
        let positions = Self::new(ctx, tokens)?;
        positions.set_contiguous(ctx, 0, pos0);
        Ok(positions)
    }

    /// Every token in `slot`, at `pos0..pos0 + T`, for the next submit.
    pub fn set_contiguous(&self, ctx: &GpuContext, slot: usize, pos0: usize) {
        let placed: Vec<(usize, usize)> = (0..self.tokens).map(|t| (slot, pos0 + t)).collect();
        self.set(ctx, &placed);
    }

    /// Token t in `placed[t].0` at position `placed[t].1`, for the next submit; a
    /// dynamic NTK RoPE scales each token by where its sequence ends in this step.
    pub fn set(&self, ctx: &GpuContext, placed: &[(usize, usize)]) {
        self.write(ctx, placed, None);
    }

    /// As [`Self::set`], with the length each token's forward counts as given: a chunk
    /// of a longer prompt counts as the whole prompt, as if prefilled in one forward.
    pub fn set_with_lengths(&self, ctx: &GpuContext, placed: &[(usize, usize)], lengths: &[usize]) {
        self.write(ctx, placed, Some(lengths));
    }

    fn write(&self, ctx: &GpuContext, placed: &[(usize, usize)], lengths: Option<&[usize]>) {
        assert_eq!(placed.len(), self.tokens, "one (slot, position) per token");
        let words: Vec<u32> = placed.iter().flat_map(|&(s, p)| [s as u32, p as u32]).collect();
        ctx.queue.write_buffer(&self.buffer, 0, bytemuck::cast_slice(&words));
        let Some((rows, ntk)) = &self.step_angles else {
            return;
        };
        let sequence_ends;
        let lengths = match lengths {
            Some(lengths) => lengths,
            None => {
                let mut ends = std::collections::HashMap::new();
                for &(slot, pos) in placed {
                    let end = ends.entry(slot).or_insert(0);
                    *end = (*end).max(pos + 1);
                }
                sequence_ends = placed.iter().map(|(slot, _)| ends[slot]).collect::<Vec<usize>>();
                &sequence_ends
            }
        };
        let positions: Vec<usize> = placed.iter().map(|&(_, p)| p).collect();
        let values = ntk.step_rows(&positions, lengths);
        ctx.queue.write_buffer(&rows.buffer, 0, bytemuck::cast_slice(&values));
    }
}

/// Fails unless `tensor` has exactly `expected` as shape.
pub fn expect_shape(what: &str, tensor: &GpuTensor, expected: &[usize]) -> Result<()> {
    if tensor.shape != expected {
        return Err(Error::Shape {
            what: what.to_string(),
            expected: expected.to_vec(),
            actual: tensor.shape.clone(),
        });
    }
    Ok(())
}

/// Consecutive weights a kernel invocation decodes per read for rows of `k_dim`
/// weights (the kernels' `RUN`, shaders/weight_access.wgsl's `_at8`): 8 where every run
/// then lies in one row (and one block of any format), else 1.
pub fn weight_run(k_dim: usize) -> u32 {
    if k_dim.is_multiple_of(8) {
        8
    } else {
        1
    }
}

/// Workgroups needed for `items` items at `per_workgroup` each.
pub fn workgroups(items: usize, per_workgroup: usize) -> u32 {
    items.div_ceil(per_workgroup) as u32
}

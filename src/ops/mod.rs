//! GPU ops of the MoE layer. Each module holds the host code that records a kernel
//! of `shaders/` and, beside it, the plain-Rust CPU reference that tests compare with.
pub mod attention;
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

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, GpuTensor};

/// Where each token of a forward goes: its sequence's KV-cache slot and its position,
/// `[T] x (slot, position)` u32 in a storage buffer that the RoPE and attention kernels
/// read. A recorded forward replays at any positions, for any mix of sequences, by
/// rewriting these `8 T` bytes: one sequence's tokens at `pos0..pos0 + T`, or one
/// token of each of T sequences (a continuous-batching decode step).
pub struct TokenPositions {
    pub buffer: wgpu::Buffer,
    pub tokens: usize,
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
        Ok(Self { buffer, tokens })
    }

    /// `tokens` tokens of slot 0 at `pos0..pos0 + tokens`.
    pub fn contiguous(ctx: &GpuContext, pos0: usize, tokens: usize) -> Result<Self> {
        let positions = Self::new(ctx, tokens)?;
        positions.set_contiguous(ctx, 0, pos0);
        Ok(positions)
    }

    /// Every token in `slot`, at `pos0..pos0 + T`, for the next submit.
    pub fn set_contiguous(&self, ctx: &GpuContext, slot: usize, pos0: usize) {
        let words: Vec<u32> = (0..self.tokens)
            .flat_map(|t| [slot as u32, (pos0 + t) as u32])
            .collect();
        ctx.queue.write_buffer(&self.buffer, 0, bytemuck::cast_slice(&words));
    }

    /// Token t in `placed[t].0` at position `placed[t].1`, for the next submit.
    pub fn set(&self, ctx: &GpuContext, placed: &[(usize, usize)]) {
        assert_eq!(placed.len(), self.tokens, "one (slot, position) per token");
        let words: Vec<u32> = placed.iter().flat_map(|&(s, p)| [s as u32, p as u32]).collect();
        ctx.queue.write_buffer(&self.buffer, 0, bytemuck::cast_slice(&words));
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

/// Workgroups needed for `items` items at `per_workgroup` each.
pub fn workgroups(items: usize, per_workgroup: usize) -> u32 {
    items.div_ceil(per_workgroup) as u32
}

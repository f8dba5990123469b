//! GPU ops of the MoE layer. Each module holds the host code that records a kernel
//! of `shaders/` and, beside it, the plain-Rust CPU reference that tests compare with.
pub mod attention;
pub mod capacity;
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

/// The position of a forward's first token, in a small uniform buffer that the
/// attention and RoPE kernels read: a recorded forward replays at any position by
/// rewriting these 16 bytes.
pub struct Position {
    pub buffer: wgpu::Buffer,
}

impl Position {
    pub fn new(ctx: &GpuContext, pos0: usize) -> Self {
        Self {
            buffer: ctx.uniform(&[pos0 as u32, 0, 0, 0]),
        }
    }

    /// Sets pos0 for the next submit.
    pub fn set(&self, ctx: &GpuContext, pos0: usize) {
        ctx.queue
            .write_buffer(&self.buffer, 0, bytemuck::cast_slice(&[pos0 as u32, 0, 0, 0]));
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

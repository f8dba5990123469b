//! Rotary position embedding (shaders/rope.wgsl) and its cos/sin table.

use crate::error::Result;
use crate::gpu::kernel::{Recorder, ROPE};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::ops::{workgroups, Position};

/// The (cos, sin) table `[positions, rot/2, 2]` as transformers computes it in f32:
/// `inv_freq[i] = 1 / theta^(2i / rot)`, angle = position * inv_freq[i].
pub fn rope_table(theta: f32, rotary_dim: usize, positions: usize) -> Vec<f32> {
    let half = rotary_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / rotary_dim as f32))
        .collect();
    let mut table = Vec::with_capacity(positions * half * 2);
    for pos in 0..positions {
        for f in &inv_freq {
            let angle = pos as f32 * f;
            table.push(angle.cos());
            table.push(angle.sin());
        }
    }
    table
}

/// Uploads a rope table.
pub fn upload_rope_table(ctx: &GpuContext, theta: f32, rotary_dim: usize, positions: usize) -> Result<GpuTensor> {
    let table = rope_table(theta, rotary_dim, positions);
    GpuTensor::from_f32(ctx, "rope table", &[positions, rotary_dim / 2, 2], &table, DType::F32)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RopeParams {
    pub(crate) tokens: u32,
    pub(crate) heads: u32,
    pub(crate) head_dim: u32,
    pub(crate) half_rot: u32,
    pub(crate) interleaved: u32,
    pub(crate) _pad: [u32; 3],
}

/// Rotates `x [T, heads * head_dim]` in place for positions `pos0..pos0 + T` (`position`
/// holds pos0): pairs (i, i + rot/2), or (2i, 2i + 1) when `interleaved`.
#[allow(clippy::too_many_arguments)]
pub fn encode_rope(
    ctx: &GpuContext,
    rec: &mut Recorder,
    x: &GpuTensor,
    table: &GpuTensor,
    heads: usize,
    head_dim: usize,
    position: &Position,
    interleaved: bool,
) {
    let tokens = x.shape[0];
    let half_rot = table.shape[1];
    let params = RopeParams {
        tokens: tokens as u32,
        heads: heads as u32,
        head_dim: head_dim as u32,
        half_rot: half_rot as u32,
        interleaved: interleaved as u32,
        _pad: [0; 3],
    };
    rec.dispatch(
        ctx,
        ROPE.entry("rope"),
        &params,
        &[(1, &x.buffer), (2, &table.buffer), (3, &position.buffer)],
        workgroups(tokens * heads * half_rot, 64),
    );
}

/// CPU reference, in place on `x [T, heads * head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn rope_reference(
    x: &mut [f32],
    table: &[f32],
    half_rot: usize,
    heads: usize,
    head_dim: usize,
    pos0: usize,
    interleaved: bool,
) {
    for (th, head) in x.chunks_mut(head_dim).enumerate() {
        let pos = pos0 + th / heads;
        for i in 0..half_rot {
            let (c, s) = (table[(pos * half_rot + i) * 2], table[(pos * half_rot + i) * 2 + 1]);
            let (a, b) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half_rot)
            };
            let (x1, x2) = (head[a], head[b]);
            head[a] = x1 * c - x2 * s;
            head[b] = x2 * c + x1 * s;
        }
    }
}

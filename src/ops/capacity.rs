//! Capacity limit (Switch/GShard): at most `capacity` assignments per expert, the
//! lowest-weight ones dropped and counted (shaders/capacity.wgsl).

use crate::error::{Error, Result};
use crate::gpu::kernel::{Recorder, CAPACITY, SENTINEL};
use crate::gpu::{GpuContext, GpuTensor};
use crate::ops::{expect_shape, workgroups};

/// capacity = ceil(T * k / E * capacity_factor).
pub fn expert_capacity(tokens: usize, top_k: usize, experts: usize, factor: f32) -> Result<usize> {
    if !(factor.is_finite() && factor > 0.0) {
        return Err(Error::Config(format!(
            "capacity_factor must be a positive number, got {factor}"
        )));
    }
    Ok(((tokens * top_k) as f64 / experts as f64 * factor as f64).ceil() as usize)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CapacityParams {
    pub(crate) assignments: u32,
    pub(crate) capacity: u32,
    pub(crate) _pad: [u32; 2],
}

/// Records the drop: `routed_ids` = `ids` with dropped entries set to SENTINEL;
/// `dropped [E]` counts drops per expert (cleared here first).
pub fn encode_capacity(
    ctx: &GpuContext,
    rec: &mut Recorder,
    ids: &GpuTensor,
    weights: &GpuTensor,
    capacity: usize,
    routed_ids: &GpuTensor,
    dropped: &GpuTensor,
) -> Result<()> {
    let n = ids.len();
    expect_shape("capacity weights", weights, &ids.shape)?;
    expect_shape("capacity routed ids", routed_ids, &ids.shape)?;
    rec.clear(&dropped.buffer);
    let params = CapacityParams {
        assignments: n as u32,
        capacity: capacity as u32,
        _pad: [0; 2],
    };
    rec.dispatch(
        ctx,
        CAPACITY.entry("apply_capacity"),
        &params,
        &[
            (1, &ids.buffer),
            (2, &weights.buffer),
            (3, &routed_ids.buffer),
            (4, &dropped.buffer),
        ],
        workgroups(n, 64),
    );
    Ok(())
}

/// CPU reference: (routed ids, drops per expert).
pub fn capacity_reference(ids: &[u32], weights: &[f32], experts: usize, capacity: usize) -> (Vec<u32>, Vec<u32>) {
    let mut dropped = vec![0u32; experts];
    let routed = (0..ids.len())
        .map(|a| {
            let e = ids[a];
            if e == SENTINEL {
                return SENTINEL;
            }
            let w = weights[a];
            let rank = (0..ids.len())
                .filter(|&b| ids[b] == e && (weights[b] > w || (weights[b] == w && b < a)))
                .count();
            if rank >= capacity {
                dropped[e as usize] += 1;
                SENTINEL
            } else {
                e
            }
        })
        .collect();
    (routed, dropped)
}

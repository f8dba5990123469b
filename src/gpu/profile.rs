//! Per-kernel GPU time of a recorded forward: every dispatch in its own compute pass
//! with timestamps at its start and end, summed by section of the forward (see
//! [`Recorder::section`]) and kernel (`file::entry`). For finding
//! where a step's time goes (`webmoe bench --profile`); the passes add a little
//! overhead of their own, so the total is a bit above an ordinary submit's.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::kernel::Recorder;
use crate::gpu::tensor::map_read;
use crate::gpu::GpuContext;

/// wgpu's limit on queries per set: two per dispatch.
const MAX_QUERIES: u32 = 4096;

/// GPU time of one kernel in one section of a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelTime {
    /// The part of the forward, e.g. `attention`, `moe`, `lm head` (empty if unnamed).
    pub section: String,
    /// `file::entry`, e.g. `expert_gemv::gate_up`.
    pub kernel: String,
    pub calls: usize,
    pub ms: f64,
}

/// Submits `recording` once with a timestamp pair around each dispatch (the first 2,048
/// dispatches) and returns the time per (section, kernel), most first.
pub async fn profile(ctx: &GpuContext, recording: &Recorder) -> Result<Vec<KernelTime>> {
    if !ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
        return Err(Error::Unsupported(format!(
            "profiling needs timestamp queries, which {} does not offer",
            ctx.adapter_info.name
        )));
    }
    let kernels = recording.kernels();
    let queries = (2 * kernels.len() as u32).clamp(2, MAX_QUERIES);
    let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("profile timestamps"),
        ty: wgpu::QueryType::Timestamp,
        count: queries,
    });
    let bytes = queries as u64 * 8;
    let resolved = ctx.create_buffer(&wgpu::BufferDescriptor {
        label: Some("profile timestamps"),
        size: bytes,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = ctx.create_buffer(&wgpu::BufferDescriptor {
        label: Some("profile readback"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    recording.encode_timed(&mut encoder, &set, queries);
    encoder.resolve_query_set(&set, 0..queries, &resolved, 0);
    encoder.copy_buffer_to_buffer(&resolved, 0, &staging, 0, bytes);
    ctx.queue.submit([encoder.finish()]);
    let raw = map_read(ctx, &staging, "the profile's timestamps").await?;
    let ticks: Vec<u64> = raw
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    let period_ms = ctx.queue.get_timestamp_period() as f64 / 1e6;
    let mut times: Vec<KernelTime> = Vec::new();
    for (d, (section, kernel)) in kernels.iter().enumerate().take(queries as usize / 2) {
        let ms = ticks[2 * d + 1].saturating_sub(ticks[2 * d]) as f64 * period_ms;
        match times.iter_mut().find(|t| t.section == *section && t.kernel == *kernel) {
            Some(t) => {
                t.calls += 1;
                t.ms += ms;
            }
            None => times.push(KernelTime {
                section: section.to_string(),
                kernel: kernel.to_string(),
                calls: 1,
                ms,
            }),
        }
    }
    times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(times)
}

//! Router logits: `logits[t, r] = x[t] . w[r] (+ bias[r])` (shaders/routing.wgsl, entry
//! `router_logits`; decode fuses them with the selection, see
//! [`crate::ops::routing::encode_routing_fused`]).

use crate::error::Result;
use crate::gpu::kernel::{KernelKey, Recorder, ROUTING};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::ops::expert_matmul::{encode_down_with, ExpertRows};
use crate::ops::routing::{Router, RoutingParams};
use crate::ops::{expect_shape, weight_run, workgroups};
use crate::weights::{WeightFormat, WeightMatrix};

/// Records `logits [T, R] = x [T, d] . w [R, d]^T (+ bias [R])` (w in any weight dtype).
pub fn encode_router_logits(
    ctx: &GpuContext,
    rec: &mut Recorder,
    x: &GpuTensor,
    router: Router,
    logits: &GpuTensor,
) -> Result<()> {
    let (tokens, dim) = (x.shape[0], x.shape[1]);
    let rows = router.weight.shape[0];
    check_router(x, router, logits, rows)?;
    let params = RoutingParams::logits(tokens, rows, dim, router.bias.is_some());
    // Without a bias the kernel never reads binding 7; the input stands in for it.
    let bias = router.bias.map_or(&x.buffer, |b| &b.buffer);
    rec.dispatch(
        ctx,
        router_kernel("router_logits", router.weight, dim)?,
        &params,
        &[
            (1, &logits.buffer),
            (5, &x.buffer),
            (6, &router.weight.buffer),
            (7, bias),
        ],
        workgroups(tokens * rows, 64),
    );
    Ok(())
}

/// Records the same logits as [`encode_router_logits`] for a prompt's tokens through the
/// tiled matmul's dense mode (the router as a one-expert `[R, d]` weight matrix): each
/// logit is still one index-order sum, but an invocation computes 16 of them from
/// shared memory instead of reading a whole weight row for one. On lavapipe the router
/// of a 256-token prefill of the Qwen3-30B-A3B shape / 16 took 6.9 ms per layer as one
/// invocation per logit.
pub fn encode_router_logits_tiled(
    ctx: &GpuContext,
    rec: &mut Recorder,
    x: &GpuTensor,
    router: Router,
    logits: &GpuTensor,
) -> Result<()> {
    let (tokens, rows) = (x.shape[0], router.weight.shape[0]);
    check_router(x, router, logits, rows)?;
    let matrix = WeightMatrix::of_tensor("router weight", router.weight)?;
    let bias = router.bias.map(|b| b.reshaped(&[1, rows]));
    encode_down_with(
        ctx,
        rec,
        ExpertRows::Dense { tokens, gemv: false },
        x,
        &matrix,
        logits,
        bias.as_ref(),
    )
}

/// Checks a router's shapes: `x [T, d]`, weight `[rows, d]`, bias `[rows]`, logits `[T, rows]`.
pub(crate) fn check_router(x: &GpuTensor, router: Router, logits: &GpuTensor, rows: usize) -> Result<()> {
    let (tokens, dim) = (x.shape[0], x.shape[1]);
    expect_shape("router weight", router.weight, &[rows, dim])?;
    expect_shape("router logits", logits, &[tokens, rows])?;
    expect_shape("router input", x, &[tokens, dim])?;
    if let Some(b) = router.bias {
        expect_shape("router bias", b, &[rows])?;
    }
    debug_assert_ne!(x.dtype, DType::U32);
    Ok(())
}

/// The routing.wgsl `entry` that reads router weights `w` with rows `dim` long.
pub(crate) fn router_kernel(entry: &'static str, w: &GpuTensor, dim: usize) -> Result<KernelKey> {
    Ok(ROUTING
        .entry(entry)
        .weights(WeightFormat::of_dtype(w.dtype)?)
        .run(weight_run(dim)))
}

/// CPU reference: sequential f32 dot products.
pub fn router_logits_reference(x: &[f32], w: &[f32], tokens: usize, rows: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; tokens * rows];
    for t in 0..tokens {
        for r in 0..rows {
            out[t * rows + r] = dot(&x[t * dim..(t + 1) * dim], &w[r * dim..(r + 1) * dim]);
        }
    }
    out
}

/// Sequential f32 dot product (the order every kernel uses).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        acc += x * y;
    }
    acc
}

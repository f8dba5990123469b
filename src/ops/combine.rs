//! Weighted combine of expert outputs per token, plus an optional shared expert
//! (shaders/combine.wgsl).

use crate::error::{Error, Result};
use crate::gpu::kernel::{Recorder, COMBINE, SENTINEL};
use crate::gpu::{GpuContext, GpuTensor};
use crate::ops::{expect_shape, workgroups};

/// The shared expert's contribution to the combine.
#[derive(Clone, Copy)]
pub struct SharedTerm<'a> {
    /// The shared expert's output `[T, d]`.
    pub output: &'a GpuTensor,
    /// Gate logits `[T, 1]`: the output is scaled by their sigmoid (Qwen2-MoE).
    pub gate_logits: Option<&'a GpuTensor>,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CombineParams {
    pub(crate) tokens: u32,
    pub(crate) top_k: u32,
    pub(crate) dim: u32,
    pub(crate) identity_rows: u32,
    pub(crate) shared_mode: u32,
    pub(crate) residual: u32,
    pub(crate) residual_scale: f32,
    pub(crate) eps: f32,
}

/// The next layer's input norm, taken by the combine that ends a layer: `output =
/// rms_norm(stream) * weight` of each updated row of the residual stream.
#[derive(Clone, Copy)]
pub struct NextNorm<'a> {
    /// `[d]`
    pub weight: &'a GpuTensor,
    pub eps: f32,
    /// `[T, d]`
    pub output: &'a GpuTensor,
}

/// Records `out[t] = sum_j weights[t, j] * y[row(t, j)] (+ shared term)`, or with
/// `residual = Some(s)`, `out[t] += s * (that sum)`. `assignment_row` maps assignments
/// to rows of `y`; `None` means row = assignment (decode path). With `next_norm` (and a
/// residual), the same dispatch then writes the norm of each updated row of `out`
/// (one workgroup per token instead of one invocation per element).
#[allow(clippy::too_many_arguments)]
pub fn encode_combine(
    ctx: &GpuContext,
    rec: &mut Recorder,
    routed_ids: &GpuTensor,
    assignment_row: Option<&GpuTensor>,
    weights: &GpuTensor,
    y: &GpuTensor,
    shared: Option<SharedTerm>,
    out: &GpuTensor,
    residual: Option<f32>,
    next_norm: Option<NextNorm>,
) -> Result<()> {
    let (tokens, top_k) = (routed_ids.shape[0], routed_ids.shape[1]);
    let dim = out.shape[1];
    expect_shape("combine weights", weights, &routed_ids.shape)?;
    expect_shape("combine output", out, &[tokens, dim])?;
    expect_shape("expert outputs", y, &[y.shape[0], dim])?;
    if let Some(s) = shared {
        expect_shape("shared expert output", s.output, &[tokens, dim])?;
        if let Some(g) = s.gate_logits {
            expect_shape("shared expert gate logits", g, &[tokens, 1])?;
        }
    }
    let params = CombineParams {
        tokens: tokens as u32,
        top_k: top_k as u32,
        dim: dim as u32,
        identity_rows: assignment_row.is_none() as u32,
        shared_mode: match shared {
            None => 0,
            Some(SharedTerm { gate_logits: None, .. }) => 1,
            Some(_) => 2,
        },
        residual: residual.is_some() as u32,
        residual_scale: residual.unwrap_or(0.0),
        eps: next_norm.map_or(0.0, |n| n.eps),
    };
    // Unused inputs are never read; other read-only buffers stand in for them.
    let rows = assignment_row.map_or(&routed_ids.buffer, |r| &r.buffer);
    let shared_out = shared.map_or(&y.buffer, |s| &s.output.buffer);
    let shared_gate = shared.and_then(|s| s.gate_logits).map_or(&y.buffer, |g| &g.buffer);
    let mut bindings = vec![
        (1, &routed_ids.buffer),
        (2, rows),
        (3, &weights.buffer),
        (4, &y.buffer),
        (5, shared_out),
        (6, shared_gate),
        (7, &out.buffer),
    ];
    match next_norm {
        None => rec.dispatch(
            ctx,
            COMBINE.entry("combine"),
            &params,
            &bindings,
            workgroups(tokens * dim, 64),
        ),
        Some(norm) => {
            if residual.is_none() {
                return Err(Error::Config(
                    "the combine takes the next norm only when it adds into a residual stream".into(),
                ));
            }
            expect_shape("next norm weight", norm.weight, &[dim])?;
            expect_shape("next norm output", norm.output, &[tokens, dim])?;
            bindings.extend([(8, &norm.weight.buffer), (9, &norm.output.buffer)]);
            rec.dispatch(ctx, COMBINE.entry("combine_norm"), &params, &bindings, tokens as u32);
        }
    }
    Ok(())
}

/// CPU reference. `expert_rows[a]` is the output of assignment a's expert (`None`
/// when dropped); `shared` is the shared expert's output per token and its gate logit.
pub fn combine_reference(
    routed_ids: &[u32],
    weights: &[f32],
    expert_rows: &[Option<Vec<f32>>],
    shared: Option<(&[f32], Option<&[f32]>)>,
    tokens: usize,
    top_k: usize,
    dim: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; tokens * dim];
    for t in 0..tokens {
        for c in 0..dim {
            let mut acc = 0.0f32;
            for j in 0..top_k {
                let a = t * top_k + j;
                if routed_ids[a] == SENTINEL {
                    continue;
                }
                if let Some(row) = &expert_rows[a] {
                    acc += weights[a] * row[c];
                }
            }
            if let Some((s, gate)) = shared {
                let v = s[t * dim + c];
                acc += match gate {
                    None => v,
                    Some(g) => v * (1.0 / (1.0 + (-g[t]).exp())),
                };
            }
            out[t * dim + c] = acc;
        }
    }
    out
}

//! Expert matmuls: SwiGLU gate/up and down projections for routed rows, as a
//! grouped tiled matmul over the permuted layout (prefill, shaders/expert_matmul.wgsl)
//! or a per-assignment GEMV (decode, shaders/expert_gemv.wgsl), plus the dense form
//! used for shared experts.

use crate::error::{Error, Result};
use crate::gpu::kernel::{dispatch, EXPERT_GEMV, EXPERT_MATMUL};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::ops::permute::{Permutation, BLOCK_ROWS};
use crate::ops::router::dot;
use crate::ops::{expect_shape, workgroups};

/// Output columns per workgroup of the tiled kernel (its BN tile).
const TILE_COLS: usize = 64;
/// Output rows per workgroup of the GEMV kernel.
const GEMV_ROWS: usize = 4;

/// One storage buffer holding experts `expert_begin..expert_end` of a matrix kind.
#[derive(Clone, Debug)]
pub struct WeightChunk {
    pub tensor: GpuTensor,
    pub expert_begin: usize,
    pub expert_end: usize,
}

/// All experts' weights of one matrix kind, `[E, out, in]`, split into as few
/// buffers as the adapter's binding limit allows (whole experts per buffer).
#[derive(Clone, Debug)]
pub struct ExpertWeights {
    pub name: String,
    pub experts: usize,
    pub out_dim: usize,
    pub in_dim: usize,
    pub dtype: DType,
    pub chunks: Vec<WeightChunk>,
}

impl ExpertWeights {
    /// Uploads `values` (`[experts, out_dim, in_dim]`, row-major) stored as `dtype`.
    pub fn upload(ctx: &GpuContext, name: &str, values: &[f32], shape: [usize; 3], dtype: DType) -> Result<Self> {
        let [experts, out_dim, in_dim] = shape;
        if values.len() != experts * out_dim * in_dim {
            return Err(Error::Shape {
                what: name.to_string(),
                expected: shape.to_vec(),
                actual: vec![values.len()],
            });
        }
        if dtype == DType::U32 {
            return Err(Error::Config(format!("{name}: u32 is not a weight type")));
        }
        let per_expert = out_dim * in_dim;
        let expert_bytes = dtype.storage_bytes(per_expert);
        ctx.check_binding(&format!("one expert of {name}"), expert_bytes)?;
        let per_chunk = ((ctx.max_binding_bytes() / expert_bytes) as usize).clamp(1, experts.max(1));
        let mut chunks = Vec::new();
        for begin in (0..experts).step_by(per_chunk) {
            let end = (begin + per_chunk).min(experts);
            let tensor = GpuTensor::from_f32(
                ctx,
                &format!("{name}[{begin}..{end}]"),
                &[end - begin, out_dim, in_dim],
                &values[begin * per_expert..end * per_expert],
                dtype,
            )?;
            chunks.push(WeightChunk {
                tensor,
                expert_begin: begin,
                expert_end: end,
            });
        }
        Ok(Self {
            name: name.to_string(),
            experts,
            out_dim,
            in_dim,
            dtype,
            chunks,
        })
    }
}

/// Which rows the matmul computes and how they map to tokens and experts.
#[derive(Clone, Copy)]
pub enum ExpertRows<'a> {
    /// Permuted row blocks (prefill): row = the permutation's padded row.
    Permuted { permutation: &'a Permutation, top_k: usize },
    /// One row per assignment, expert from `routed_ids` (decode).
    PerAssignment { routed_ids: &'a GpuTensor, top_k: usize },
    /// Every token through expert 0 (a shared expert). `gemv` picks the decode kernel.
    Dense { tokens: usize, gemv: bool },
}

impl ExpertRows<'_> {
    /// Rows of the matmul's output.
    pub fn output_rows(&self) -> usize {
        match self {
            ExpertRows::Permuted { permutation, .. } => permutation.max_blocks * BLOCK_ROWS,
            ExpertRows::PerAssignment { routed_ids, .. } => routed_ids.len(),
            ExpertRows::Dense { tokens, .. } => *tokens,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulParams {
    rows_per_token: u32,
    k_dim: u32,
    n_dim: u32,
    col_tiles: u32,
    expert_begin: u32,
    expert_end: u32,
    /// Tiled: row blocks in the grid. GEMV: assignments (rows).
    rows_or_blocks: u32,
    /// Tiled: dense row count (0 = grouped). GEMV: 1 = dense.
    dense: u32,
}

/// Records `h = silu(x . gate^T) * (x . up^T)` per row: input `[tokens, d]`, output
/// `[rows, ffn]` (rows per `ExpertRows::output_rows`).
pub fn encode_gate_up(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    rows: ExpertRows,
    x: &GpuTensor,
    gate: &ExpertWeights,
    up: &ExpertWeights,
    h: &GpuTensor,
) -> Result<()> {
    if (up.experts, up.out_dim, up.in_dim, up.dtype) != (gate.experts, gate.out_dim, gate.in_dim, gate.dtype)
        || up.chunks.len() != gate.chunks.len()
    {
        return Err(Error::Config(format!(
            "{} and {} must have the same shape, dtype and chunking",
            gate.name, up.name
        )));
    }
    expect_shape("expert matmul input", x, &[x.shape[0], gate.in_dim])?;
    encode_expert_matmul(ctx, encoder, rows, x, gate, Some(up), h)
}

/// Records `y = h . down^T` per row: input `[rows, ffn]`, output `[rows, d]`.
pub fn encode_down(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    rows: ExpertRows,
    h: &GpuTensor,
    down: &ExpertWeights,
    y: &GpuTensor,
) -> Result<()> {
    expect_shape("down projection input", h, &[rows.output_rows(), down.in_dim])?;
    encode_expert_matmul(ctx, encoder, rows, h, down, None, y)
}

fn encode_expert_matmul(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    rows: ExpertRows,
    input: &GpuTensor,
    w0: &ExpertWeights,
    w1: Option<&ExpertWeights>,
    out: &GpuTensor,
) -> Result<()> {
    let out_rows = rows.output_rows();
    expect_shape("expert matmul output", out, &[out_rows, w0.out_dim])?;
    let (k_dim, n_dim) = (w0.in_dim, w0.out_dim);
    let entry = if w1.is_some() { "gate_up" } else { "down" };
    let (shader, index_buffer, block_buffer, rows_per_token, rows_or_blocks, dense, col_tiles, groups) = match rows {
        ExpertRows::Permuted { permutation, top_k } => {
            let tiles = n_dim.div_ceil(TILE_COLS);
            (
                &EXPERT_MATMUL,
                Some(&permutation.row_assignment.buffer),
                Some(&permutation.block_expert.buffer),
                top_k,
                permutation.max_blocks,
                0,
                tiles,
                permutation.max_blocks * tiles,
            )
        }
        ExpertRows::Dense { tokens, gemv: false } => {
            let tiles = n_dim.div_ceil(TILE_COLS);
            let blocks = tokens.div_ceil(BLOCK_ROWS);
            (&EXPERT_MATMUL, None, None, 1, blocks, tokens, tiles, blocks * tiles)
        }
        ExpertRows::PerAssignment { routed_ids, top_k } => {
            let groups = n_dim.div_ceil(GEMV_ROWS);
            (
                &EXPERT_GEMV,
                Some(&routed_ids.buffer),
                None,
                top_k,
                routed_ids.len(),
                0,
                groups,
                routed_ids.len() * groups,
            )
        }
        ExpertRows::Dense { tokens, gemv: true } => {
            let groups = n_dim.div_ceil(GEMV_ROWS);
            (&EXPERT_GEMV, None, None, 1, tokens, 1, groups, tokens * groups)
        }
    };
    let pipeline = ctx.pipeline(shader, entry, &[("WEIGHT_DTYPE", w0.dtype.weight_code())]);
    // Dense mode never reads the index buffers; the input stands in for them.
    let index_buffer = index_buffer.unwrap_or(&input.buffer);
    let tiled = std::ptr::eq(shader, &EXPERT_MATMUL);
    for (i, chunk) in w0.chunks.iter().enumerate() {
        let params = ctx.uniform(&MatmulParams {
            rows_per_token: rows_per_token as u32,
            k_dim: k_dim as u32,
            n_dim: n_dim as u32,
            col_tiles: col_tiles as u32,
            expert_begin: chunk.expert_begin as u32,
            expert_end: chunk.expert_end as u32,
            rows_or_blocks: rows_or_blocks as u32,
            dense: dense as u32,
        });
        let mut entries: Vec<(u32, &wgpu::Buffer)> = vec![(0, &params), (1, &input.buffer), (2, index_buffer)];
        if tiled {
            entries.push((3, block_buffer.unwrap_or(index_buffer)));
            entries.push((4, &chunk.tensor.buffer));
            entries.push((5, &out.buffer));
            if let Some(w1) = w1 {
                entries.push((6, &w1.chunks[i].tensor.buffer));
            }
        } else {
            entries.push((3, &chunk.tensor.buffer));
            entries.push((4, &out.buffer));
            if let Some(w1) = w1 {
                entries.push((5, &w1.chunks[i].tensor.buffer));
            }
        }
        let bind = ctx.bind(&pipeline, &entries);
        dispatch(encoder, &pipeline, &bind, workgroups(groups, 1));
    }
    Ok(())
}

/// CPU reference of one SwiGLU expert on one row: `silu(gate . x) * (up . x)`,
/// with `gate`, `up` as `[ffn, d]`.
pub fn swiglu_reference(x: &[f32], gate: &[f32], up: &[f32], ffn: usize) -> Vec<f32> {
    let d = x.len();
    (0..ffn)
        .map(|n| {
            let g = dot(x, &gate[n * d..(n + 1) * d]);
            let u = dot(x, &up[n * d..(n + 1) * d]);
            g / (1.0 + (-g).exp()) * u
        })
        .collect()
}

/// CPU reference of a matrix-vector product with `w` as `[out, in]`.
pub fn matvec_reference(v: &[f32], w: &[f32], out: usize) -> Vec<f32> {
    let k = v.len();
    (0..out).map(|n| dot(v, &w[n * k..(n + 1) * k])).collect()
}

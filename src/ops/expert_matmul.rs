//! Expert matmuls: SwiGLU gate/up and down projections for routed rows, as a
//! grouped tiled matmul over the permuted layout (prefill, shaders/expert_matmul.wgsl)
//! or a per-assignment GEMV (decode, shaders/expert_gemv.wgsl), plus the dense form
//! used for shared experts.

use crate::error::{Error, Result};
use crate::gpu::kernel::{Recorder, EXPERT_GEMV, EXPERT_GEMV_SUBGROUP, EXPERT_MATMUL};
use crate::gpu::{GpuContext, GpuTensor, KernelTarget};
use crate::ops::permute::{Permutation, BLOCK_ROWS};
use crate::ops::router::dot;
use crate::ops::{expect_shape, weight_run, workgroups};
use crate::weights::{WeightFormat, WeightMatrix};

/// Output columns per workgroup of the tiled kernel (its BN tile).
const TILE_COLS: usize = 64;
/// Rows per block of the tiled kernel's dense mode: 64 once a batch fills them (each
/// weight slice then feeds twice the outputs), else the largest expert block.
fn dense_block_rows(tokens: usize) -> usize {
    if tokens >= 64 {
        64
    } else {
        BLOCK_ROWS
    }
}

/// Output rows per workgroup of the GEMV kernel for rows of `k_dim` weights: about 4,096
/// weights per workgroup, 4 to 16 rows. Short rows would otherwise leave each
/// workgroup a few multiply-adds behind its reduction's barriers (most of the time on
/// CPU adapters); a row's sum is the same whatever this picks.
pub fn gemv_rows(k_dim: usize) -> usize {
    match k_dim {
        0..=256 => 16,
        257..=512 => 8,
        _ => 4,
    }
}

/// Most tokens one GEMV workgroup of dense rows takes (`MAX_TOKENS` in
/// shaders/expert_gemv.wgsl).
const GEMV_MAX_TOKENS: usize = 4;
/// Most (token, output) pairs one GEMV workgroup accumulates per matrix (`MAX_ROWS`).
const GEMV_MAX_PAIRS: usize = 16;

/// How the GEMV kernel maps outputs to invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvMapping {
    /// A workgroup of 64 invocations splits each output's K in coalesced slices and
    /// reduces the partial sums in shared memory (GPUs).
    Split,
    /// Each invocation sums all of one output's K, 64 outputs per workgroup: no shared
    /// memory and no barrier, which a CPU driver pays per workgroup (lavapipe: the MoE
    /// decode layer 2-4x faster than split, whole-model decode about 2x).
    Serial,
}

impl GemvMapping {
    /// The mapping kernels use on `target`.
    pub fn for_target(target: KernelTarget) -> Self {
        match target {
            KernelTarget::Gpu => GemvMapping::Split,
            KernelTarget::Cpu => GemvMapping::Serial,
        }
    }

    fn entry(self, gate_up: bool) -> &'static str {
        match (self, gate_up) {
            (GemvMapping::Split, true) => "gate_up",
            (GemvMapping::Split, false) => "down",
            (GemvMapping::Serial, true) => "gate_up_serial",
            (GemvMapping::Serial, false) => "down_serial",
        }
    }

    /// Weights per step of the kernel's loop over K (its `RUN`): the split mapping reads
    /// [`weight_run`]s; the serial one walks block formats' rows in runs of 32 (rows are
    /// whole blocks), reading the scales once per 32 weights (one block or sub-block),
    /// with the same sums as runs of 8.
    pub fn run(self, k_dim: usize, format: WeightFormat) -> u32 {
        match self {
            GemvMapping::Serial if format.is_quantized() && k_dim.is_multiple_of(32) => 32,
            _ => weight_run(k_dim),
        }
    }
}

/// Outputs per workgroup of the serial GEMV.
const SERIAL_GEMV_OUTPUTS: usize = 64;

/// Outputs per invocation of the serial GEMV for `tokens` rows per workgroup: 4 for one
/// row (each input run read once for 4 weight runs: lavapipe's decode GEMVs about
/// 1.7x faster than 1), 1 for more (their accumulators already fill the registers).
/// An output's sum is the same either way. A workgroup keeps 64 outputs (16 or 64
/// invocations, the kernel's `WG_ROWS`): as many workgroups as before for small layers.
fn serial_outputs(tokens: usize) -> usize {
    if tokens == 1 {
        4
    } else {
        1
    }
}

/// Tokens and output rows per GEMV workgroup: dense rows share each weight they read
/// among up to 4 tokens (split: the rest of [`gemv_rows`]' budget of 16 pairs goes to
/// outputs; serial: 64, [`serial_outputs`] per invocation); routed rows take one token
/// each, since their experts differ. A token's result is the same whatever this picks.
pub fn gemv_shape(k_dim: usize, tokens: usize, dense: bool, mapping: GemvMapping) -> (usize, usize) {
    let per_group = if dense {
        tokens.clamp(1, GEMV_MAX_TOKENS).next_power_of_two()
    } else {
        1
    };
    let outputs = match mapping {
        GemvMapping::Split => gemv_rows(k_dim).min(GEMV_MAX_PAIRS / per_group),
        GemvMapping::Serial => SERIAL_GEMV_OUTPUTS,
    };
    (per_group, outputs)
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
            ExpertRows::Permuted { permutation, .. } => permutation.max_blocks * permutation.block_rows.rows(),
            ExpertRows::PerAssignment { routed_ids, .. } => routed_ids.len(),
            ExpertRows::Dense { tokens, .. } => *tokens,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MatmulParams {
    pub(crate) rows_per_token: u32,
    pub(crate) k_dim: u32,
    /// Output width (the matrix's out_dim): the row stride of the output.
    pub(crate) n_dim: u32,
    /// Column tiles (tiled) or row groups (GEMV) of this chunk's rows.
    pub(crate) col_tiles: u32,
    pub(crate) expert_begin: u32,
    pub(crate) expert_end: u32,
    /// Tiled: row blocks in the grid. GEMV: assignments (rows).
    pub(crate) rows_or_blocks: u32,
    /// Tiled: dense row count (0 = grouped). GEMV: 1 = dense.
    pub(crate) dense: u32,
    /// The chunk holds output rows row_begin..row_end of each of its experts.
    pub(crate) row_begin: u32,
    pub(crate) row_end: u32,
    /// Elements from one expert to the next in the chunk.
    pub(crate) expert_stride: u32,
    /// HAS_BIAS | CLAMPED_SWIGLU | RESIDUAL (common.wgsl).
    pub(crate) flags: u32,
    pub(crate) alpha: f32,
    pub(crate) limit: f32,
    /// RESIDUAL: the output becomes `out + residual_scale * y`.
    pub(crate) residual_scale: f32,
    pub(crate) _pad: u32,
}

const HAS_BIAS: u32 = 1;
const CLAMPED_SWIGLU: u32 = 2;
const RESIDUAL: u32 = 4;

/// The gated activation of the gate/up matmul.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Activation {
    /// `silu(g) * u` (SwiGLU).
    #[default]
    Silu,
    /// gpt-oss: `g' * sigmoid(alpha * g') * (u' + 1)` with `g' = min(g, limit)` and
    /// `u' = clamp(u, -limit, limit)`.
    ClampedSwiglu { alpha: f32, limit: f32 },
}

impl Activation {
    /// CPU reference of the activation of gate `g` and up `u`.
    pub fn apply(self, g: f32, u: f32) -> f32 {
        match self {
            Activation::Silu => g / (1.0 + (-g).exp()) * u,
            Activation::ClampedSwiglu { alpha, limit } => {
                let g = g.min(limit);
                let u = u.clamp(-limit, limit);
                g / (1.0 + (-alpha * g).exp()) * (u + 1.0)
            }
        }
    }
}

/// What the expert matmuls do past the dot products: biases per expert and output
/// (`[experts, out]` f32, gpt-oss), the gate/up activation, and a residual add.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Gate/up: the gate's and the up's biases (both or neither). Down: `[0]` only.
    pub biases: Option<[&'a GpuTensor; 2]>,
    pub activation: Activation,
    /// Down only: `Some(s)` adds `s * y` (bias included) into the output, which then
    /// holds the residual stream, instead of writing `y` (one dispatch less than a
    /// separate add; the same sum `out + s * y`).
    pub residual: Option<f32>,
}

/// Records `h = silu(x . gate^T) * (x . up^T)` per row: input `[tokens, d]`, output
/// `[rows, ffn]` (rows per `ExpertRows::output_rows`).
pub fn encode_gate_up(
    ctx: &GpuContext,
    rec: &mut Recorder,
    rows: ExpertRows,
    x: &GpuTensor,
    gate: &WeightMatrix,
    up: &WeightMatrix,
    h: &GpuTensor,
) -> Result<()> {
    encode_gate_up_with(ctx, rec, rows, x, gate, up, h, Epilogue::default())
}

/// [`encode_gate_up`] with biases and another activation.
#[allow(clippy::too_many_arguments)]
pub fn encode_gate_up_with(
    ctx: &GpuContext,
    rec: &mut Recorder,
    rows: ExpertRows,
    x: &GpuTensor,
    gate: &WeightMatrix,
    up: &WeightMatrix,
    h: &GpuTensor,
    epilogue: Epilogue,
) -> Result<()> {
    let same_chunks = up.chunks.len() == gate.chunks.len()
        && up
            .chunks
            .iter()
            .zip(&gate.chunks)
            .all(|(a, b)| a.experts == b.experts && a.rows == b.rows);
    if (up.experts, up.out_dim, up.in_dim, up.format, up.expert_stride)
        != (gate.experts, gate.out_dim, gate.in_dim, gate.format, gate.expert_stride)
        || !same_chunks
    {
        return Err(Error::Config(format!(
            "{} and {} must have the same shape, format and chunking",
            gate.name, up.name
        )));
    }
    expect_shape("expert matmul input", x, &[x.shape[0], gate.in_dim])?;
    encode_expert_matmul(ctx, rec, rows, x, gate, Some(up), h, epilogue)
}

/// Records `y = h . down^T` per row: input `[rows, ffn]`, output `[rows, d]`.
pub fn encode_down(
    ctx: &GpuContext,
    rec: &mut Recorder,
    rows: ExpertRows,
    h: &GpuTensor,
    down: &WeightMatrix,
    y: &GpuTensor,
) -> Result<()> {
    encode_down_with(ctx, rec, rows, h, down, y, None)
}

/// [`encode_down`] plus a per-expert output bias `[experts, d]`.
pub fn encode_down_with(
    ctx: &GpuContext,
    rec: &mut Recorder,
    rows: ExpertRows,
    h: &GpuTensor,
    down: &WeightMatrix,
    y: &GpuTensor,
    bias: Option<&GpuTensor>,
) -> Result<()> {
    let epilogue = Epilogue {
        biases: bias.map(|b| [b, b]),
        ..Epilogue::default()
    };
    encode_down_epilogue(ctx, rec, rows, h, down, y, epilogue)
}

/// [`encode_down`] with an epilogue: a bias (`biases[0]`, `[experts, d]`) and a
/// residual add (`y += residual * (h . down^T + bias)`).
pub fn encode_down_epilogue(
    ctx: &GpuContext,
    rec: &mut Recorder,
    rows: ExpertRows,
    h: &GpuTensor,
    down: &WeightMatrix,
    y: &GpuTensor,
    epilogue: Epilogue,
) -> Result<()> {
    expect_shape("down projection input", h, &[rows.output_rows(), down.in_dim])?;
    encode_expert_matmul(ctx, rec, rows, h, down, None, y, epilogue)
}

#[allow(clippy::too_many_arguments)]
fn encode_expert_matmul(
    ctx: &GpuContext,
    rec: &mut Recorder,
    rows: ExpertRows,
    input: &GpuTensor,
    w0: &WeightMatrix,
    w1: Option<&WeightMatrix>,
    out: &GpuTensor,
    epilogue: Epilogue,
) -> Result<()> {
    let out_rows = rows.output_rows();
    expect_shape("expert matmul output", out, &[out_rows, w0.out_dim])?;
    if let Some(biases) = epilogue.biases {
        for (bias, w) in biases.iter().zip([Some(w0), w1]) {
            if let Some(w) = w {
                expect_shape(&format!("{} bias", w.name), bias, &[w.experts, w.out_dim])?;
            }
        }
    }
    let mut flags = if epilogue.biases.is_some() { HAS_BIAS } else { 0 };
    if epilogue.residual.is_some() {
        if w1.is_some() {
            return Err(Error::Config(format!(
                "{}: a residual add needs a down projection",
                w0.name
            )));
        }
        flags |= RESIDUAL;
    }
    let (alpha, limit) = match epilogue.activation {
        Activation::Silu => (0.0, 0.0),
        Activation::ClampedSwiglu { alpha, limit } => {
            flags |= CLAMPED_SWIGLU;
            (alpha, limit)
        }
    };
    let (k_dim, n_dim) = (w0.in_dim, w0.out_dim);
    // The tiled kernel's entry: on a CPU target with rows in runs of 8, the barrier-free
    // form reading the buffers directly (lavapipe: dense prefill about 1.5x, grouped
    // 2.3x faster than through shared tiles; BENCHMARKS.md, 2026-12-03).
    let direct = ctx.kernel_target == KernelTarget::Cpu && weight_run(k_dim) == 8;
    let entry = match (w1.is_some(), direct) {
        (true, false) => "gate_up",
        (false, false) => "down",
        (true, true) => "gate_up_direct",
        (false, true) => "down_direct",
    };
    let mapping = GemvMapping::for_target(ctx.kernel_target);
    let gemv_shader = if mapping == GemvMapping::Split && ctx.subgroup_reductions {
        EXPERT_GEMV_SUBGROUP
    } else {
        EXPERT_GEMV
    };
    // (kernel, row index buffer, block table, rows per token, grid rows, dense, outputs
    // per workgroup, rows per workgroup)
    let (shader, tiled, index_buffer, block_buffer, rows_per_token, rows_or_blocks, dense, per_group, row_group) =
        match rows {
            ExpertRows::Permuted { permutation, top_k } => (
                EXPERT_MATMUL,
                true,
                Some(&permutation.row_assignment.buffer),
                Some(&permutation.block_expert.buffer),
                top_k,
                permutation.max_blocks,
                0,
                TILE_COLS,
                permutation.block_rows.rows(),
            ),
            ExpertRows::Dense { tokens, gemv: false } => (
                EXPERT_MATMUL,
                true,
                None,
                None,
                1,
                tokens.div_ceil(dense_block_rows(tokens)),
                tokens as u32,
                TILE_COLS,
                dense_block_rows(tokens),
            ),
            ExpertRows::PerAssignment { routed_ids, top_k } => {
                let (tokens, outputs) = gemv_shape(k_dim, routed_ids.len(), false, mapping);
                let rows = routed_ids.len();
                (
                    gemv_shader,
                    false,
                    Some(&routed_ids.buffer),
                    None,
                    top_k,
                    rows,
                    0,
                    outputs,
                    tokens,
                )
            }
            ExpertRows::Dense { tokens, gemv: true } => {
                let (per_wg, outputs) = gemv_shape(k_dim, tokens, true, mapping);
                (gemv_shader, false, None, None, 1, tokens, 1, outputs, per_wg)
            }
        };
    let key = match rows {
        ExpertRows::Permuted { permutation, .. } => shader
            .entry(entry)
            .rows(permutation.block_rows.rows() as u32)
            .run(weight_run(k_dim)),
        ExpertRows::PerAssignment { .. } | ExpertRows::Dense { gemv: true, .. } => {
            let key = shader
                .entry(mapping.entry(w1.is_some()))
                .tokens(row_group as u32)
                .run(mapping.run(k_dim, w0.format));
            match mapping {
                GemvMapping::Split => key.rows(per_group as u32),
                GemvMapping::Serial => key.rows((SERIAL_GEMV_OUTPUTS / serial_outputs(row_group)) as u32),
            }
        }
        ExpertRows::Dense { tokens, gemv: false } => shader
            .entry(entry)
            .rows(dense_block_rows(tokens) as u32)
            .run(weight_run(k_dim)),
    }
    .weights(w0.format);
    // Workgroups along the rows: the tiled kernel's row blocks (already counted in
    // rows_or_blocks), the GEMV's groups of `row_group` rows.
    let row_groups = if tiled {
        rows_or_blocks
    } else {
        rows_or_blocks.div_ceil(row_group)
    };
    // Dense mode never reads the index buffers; the input stands in for them.
    let index_buffer = index_buffer.unwrap_or(&input.buffer);
    for (i, chunk) in w0.chunks.iter().enumerate() {
        let col_tiles = chunk.rows.len().div_ceil(per_group);
        let params = MatmulParams {
            rows_per_token: rows_per_token as u32,
            k_dim: k_dim as u32,
            n_dim: n_dim as u32,
            col_tiles: col_tiles as u32,
            expert_begin: chunk.experts.start as u32,
            expert_end: chunk.experts.end as u32,
            rows_or_blocks: rows_or_blocks as u32,
            dense,
            row_begin: chunk.rows.start as u32,
            row_end: chunk.rows.end as u32,
            expert_stride: w0.expert_stride as u32,
            flags,
            alpha,
            limit,
            residual_scale: epilogue.residual.unwrap_or(0.0),
            _pad: 0,
        };
        let mut entries: Vec<(u32, &wgpu::Buffer)> = vec![(1, &input.buffer), (2, index_buffer)];
        // Without biases the kernels never read them; the input stands in.
        let [bias0, bias1] = epilogue
            .biases
            .map_or([&input.buffer; 2], |[a, b]| [&a.buffer, &b.buffer]);
        if tiled {
            entries.push((3, block_buffer.unwrap_or(index_buffer)));
            entries.push((4, &chunk.buffer));
            entries.push((5, &out.buffer));
            entries.push((7, bias0));
            if let Some(w1) = w1 {
                entries.push((6, &w1.chunks[i].buffer));
                entries.push((8, bias1));
            }
        } else {
            entries.push((3, &chunk.buffer));
            entries.push((4, &out.buffer));
            entries.push((6, bias0));
            if let Some(w1) = w1 {
                entries.push((5, &w1.chunks[i].buffer));
                entries.push((7, bias1));
            }
        }
        rec.dispatch(ctx, key, &params, &entries, workgroups(row_groups * col_tiles, 1));
    }
    Ok(())
}

/// CPU reference of one SwiGLU expert on one row: `silu(gate . x) * (up . x)`,
/// with `gate`, `up` as `[ffn, d]`.
pub fn swiglu_reference(x: &[f32], gate: &[f32], up: &[f32], ffn: usize) -> Vec<f32> {
    gated_reference(x, gate, up, ffn, None, Activation::Silu)
}

/// CPU reference of one gated expert on one row with optional biases (`[ffn]` each):
/// `act(gate . x + bg, up . x + bu)`.
pub fn gated_reference(
    x: &[f32],
    gate: &[f32],
    up: &[f32],
    ffn: usize,
    biases: Option<(&[f32], &[f32])>,
    activation: Activation,
) -> Vec<f32> {
    let d = x.len();
    (0..ffn)
        .map(|n| {
            let mut g = dot(x, &gate[n * d..(n + 1) * d]);
            let mut u = dot(x, &up[n * d..(n + 1) * d]);
            if let Some((bg, bu)) = biases {
                g += bg[n];
                u += bu[n];
            }
            activation.apply(g, u)
        })
        .collect()
}

/// CPU reference of a matrix-vector product with `w` as `[out, in]`.
pub fn matvec_reference(v: &[f32], w: &[f32], out: usize) -> Vec<f32> {
    let k = v.len();
    (0..out).map(|n| dot(v, &w[n * k..(n + 1) * k])).collect()
}

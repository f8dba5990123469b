//! Token permutation: a stable GPU counting sort of the T * k assignments by
//! expert into the padded, block-aligned row layout the grouped matmul reads
//! (shaders/permute.wgsl).

use crate::error::Result;
use crate::gpu::kernel::{Recorder, PERMUTE, SENTINEL};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::ops::workgroups;

/// The largest row block of the grouped matmul (its default BM tile, and the block of
/// its dense mode).
pub const BLOCK_ROWS: usize = 32;
/// Assignments per chunk of the counting sort (the kernel's workgroup size).
const CHUNK: usize = 256;

/// Rows per block of the grouped matmul, each expert's segment padded to a whole
/// number of them. Few rows per expert (many experts, short prompts) waste most of a
/// 32-row block on padding; smaller blocks waste less but reload the expert's weight
/// tiles once per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockRows {
    R8 = 8,
    R16 = 16,
    R32 = 32,
}

impl BlockRows {
    /// The block for `assignments` over `experts`: the smallest that holds the rows an
    /// expert gets on average when they spread evenly.
    pub fn for_load(assignments: usize, experts: usize) -> Self {
        match average_rows(assignments, experts) {
            0..=8 => BlockRows::R8,
            9..=16 => BlockRows::R16,
            _ => BlockRows::R32,
        }
    }

    pub fn rows(self) -> usize {
        self as usize
    }
}

/// The rows each expert gets on average when `assignments` spread evenly over `experts`
/// (rounded up; the experts that get any).
pub fn average_rows(assignments: usize, experts: usize) -> usize {
    assignments.div_ceil(experts.min(assignments).max(1))
}

/// Upper bound on row blocks for `assignments` spread over `experts`: the grid the
/// grouped matmul is dispatched with, so no readback is needed.
pub fn max_blocks(assignments: usize, experts: usize, block: BlockRows) -> usize {
    let rows = block.rows();
    (assignments + experts.min(assignments) * (rows - 1)) / rows
}

/// The permutation's GPU buffers for one batch size.
pub struct Permutation {
    pub assignments: usize,
    pub experts: usize,
    pub max_blocks: usize,
    /// Rows per block.
    pub block_rows: BlockRows,
    /// Tokens routed to each expert [E] (routing statistics).
    pub expert_counts: GpuTensor,
    /// Start row of each expert in the padded layout [E + 1].
    pub padded_offsets: GpuTensor,
    /// Expert of each row block [max_blocks], SENTINEL past the last block.
    pub block_expert: GpuTensor,
    /// Assignment (t * k + slot) of each row [max_blocks * block rows], SENTINEL for padding.
    pub row_assignment: GpuTensor,
    /// Row of each assignment [T * k], SENTINEL when dropped.
    pub assignment_row: GpuTensor,
    ranks: GpuTensor,
    chunk_counts: GpuTensor,
    chunk_offsets: GpuTensor,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct PermuteParams {
    pub(crate) assignments: u32,
    pub(crate) experts: u32,
    pub(crate) chunks: u32,
    pub(crate) block_rows: u32,
    pub(crate) max_blocks: u32,
    pub(crate) _pad: [u32; 3],
}

impl Permutation {
    /// Buffers for `assignments` over `experts`, in blocks of [`BlockRows::for_load`].
    pub fn new(ctx: &GpuContext, assignments: usize, experts: usize) -> Result<Self> {
        Self::with_blocks(ctx, assignments, experts, BlockRows::for_load(assignments, experts))
    }

    pub fn with_blocks(ctx: &GpuContext, assignments: usize, experts: usize, block_rows: BlockRows) -> Result<Self> {
        let chunks = assignments.div_ceil(CHUNK);
        let max_blocks = max_blocks(assignments, experts, block_rows);
        let u32_tensor = |name: &str, len: usize| GpuTensor::empty(ctx, name, &[len], DType::U32);
        Ok(Self {
            assignments,
            experts,
            max_blocks,
            block_rows,
            expert_counts: u32_tensor("expert counts", experts)?,
            padded_offsets: u32_tensor("padded expert offsets", experts + 1)?,
            block_expert: u32_tensor("block expert table", max_blocks)?,
            row_assignment: u32_tensor("row assignments", max_blocks * block_rows.rows())?,
            assignment_row: u32_tensor("assignment rows", assignments)?,
            ranks: u32_tensor("chunk ranks", assignments)?,
            chunk_counts: u32_tensor("chunk counts", chunks * experts)?,
            chunk_offsets: u32_tensor("chunk offsets", chunks * experts)?,
        })
    }

    /// Records the sort of `routed_ids [T * k]` (SENTINEL entries get no row).
    pub fn encode(&self, ctx: &GpuContext, rec: &mut Recorder, routed_ids: &GpuTensor) {
        let chunks = self.assignments.div_ceil(CHUNK);
        let params = PermuteParams {
            assignments: self.assignments as u32,
            experts: self.experts as u32,
            chunks: chunks as u32,
            block_rows: self.block_rows.rows() as u32,
            max_blocks: self.max_blocks as u32,
            _pad: [0; 3],
        };
        rec.clear(&self.chunk_counts.buffer);

        rec.dispatch(
            ctx,
            PERMUTE.entry("count_chunks"),
            &params,
            &[
                (1, &routed_ids.buffer),
                (2, &self.ranks.buffer),
                (3, &self.chunk_counts.buffer),
            ],
            chunks as u32,
        );

        rec.dispatch(
            ctx,
            PERMUTE.entry("scan_offsets"),
            &params,
            &[
                (3, &self.chunk_counts.buffer),
                (4, &self.chunk_offsets.buffer),
                (5, &self.expert_counts.buffer),
                (6, &self.padded_offsets.buffer),
                (7, &self.block_expert.buffer),
                (8, &self.row_assignment.buffer),
            ],
            1,
        );

        rec.dispatch(
            ctx,
            PERMUTE.entry("scatter"),
            &params,
            &[
                (1, &routed_ids.buffer),
                (2, &self.ranks.buffer),
                (4, &self.chunk_offsets.buffer),
                (6, &self.padded_offsets.buffer),
                (8, &self.row_assignment.buffer),
                (9, &self.assignment_row.buffer),
            ],
            workgroups(self.assignments, 64),
        );
    }
}

/// Records `counts [E]` = assignments of `routed_ids [N]` per expert, without a
/// permutation (the decode path's routing statistics).
pub fn encode_expert_counts(ctx: &GpuContext, rec: &mut Recorder, routed_ids: &GpuTensor, counts: &GpuTensor) {
    let params = PermuteParams {
        assignments: routed_ids.len() as u32,
        experts: counts.len() as u32,
        chunks: 0,
        block_rows: BLOCK_ROWS as u32,
        max_blocks: 0,
        _pad: [0; 3],
    };
    rec.dispatch(
        ctx,
        PERMUTE.entry("count_experts"),
        &params,
        &[(1, &routed_ids.buffer), (5, &counts.buffer)],
        workgroups(counts.len(), 64),
    );
}

/// CPU reference of the expert counts (also how a decode step counts its read-back
/// ids): like the kernel, ids that name no expert (SENTINEL for a dropped assignment)
/// count nowhere.
pub fn expert_counts_reference(routed_ids: &[u32], experts: usize) -> Vec<u32> {
    let mut counts = vec![0u32; experts];
    for &e in routed_ids {
        if let Some(c) = counts.get_mut(e as usize) {
            *c += 1;
        }
    }
    counts
}

/// What the permutation computes, on the CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermutationReference {
    pub expert_counts: Vec<u32>,
    pub padded_offsets: Vec<u32>,
    /// [max_blocks]
    pub block_expert: Vec<u32>,
    /// Only the first `padded_offsets[E]` rows are defined.
    pub row_assignment: Vec<u32>,
    pub assignment_row: Vec<u32>,
}

/// CPU reference: a stable counting sort into blocks of `block`.
pub fn permutation_reference(routed_ids: &[u32], experts: usize, block: BlockRows) -> PermutationReference {
    let rows = block.rows();
    let expert_counts = expert_counts_reference(routed_ids, experts);
    let mut padded_offsets = vec![0u32; experts + 1];
    for e in 0..experts {
        padded_offsets[e + 1] = padded_offsets[e] + expert_counts[e].div_ceil(rows as u32) * rows as u32;
    }
    let total_rows = padded_offsets[experts] as usize;
    let mut block_expert = vec![SENTINEL; max_blocks(routed_ids.len(), experts, block)];
    for e in 0..experts {
        for row in (padded_offsets[e]..padded_offsets[e + 1]).step_by(rows) {
            block_expert[row as usize / rows] = e as u32;
        }
    }
    let mut row_assignment = vec![SENTINEL; total_rows];
    let mut assignment_row = vec![SENTINEL; routed_ids.len()];
    let mut next = padded_offsets.clone();
    for (a, &e) in routed_ids.iter().enumerate() {
        if e == SENTINEL {
            continue;
        }
        let row = next[e as usize];
        next[e as usize] += 1;
        row_assignment[row as usize] = a as u32;
        assignment_row[a] = row;
    }
    PermutationReference {
        expert_counts,
        padded_offsets,
        block_expert,
        row_assignment,
        assignment_row,
    }
}

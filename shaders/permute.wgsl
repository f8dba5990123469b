// Token permutation: a stable counting sort of the N = T * k assignments by expert,
// entirely on the GPU, in the padded layout of vLLM's moe_align_block_size: each
// expert's rows start at a multiple of block_rows, padding rows hold SENTINEL, and
// block_expert[b] names the expert of row block b (SENTINEL past the last block).
// Within an expert, rows keep assignment order (token-major), so results are
// deterministic. Assignments whose expert is SENTINEL (dropped) get no row.
// Buffers: routed_ids [N]; ranks [N] (rank within its chunk among equal experts);
// chunk_counts / chunk_offsets [C, E] for C = ceil(N / 256) chunks (counts zeroed by
// the host); expert_counts [E]; padded_offsets [E + 1]; block_expert [max_blocks];
// row_assignment [max_blocks * block_rows]; assignment_row [N].
// Kernels: count_chunks (one 256-wide workgroup per chunk), scan_offsets (one
// workgroup), scatter (one invocation per assignment).

struct PermuteParams {
    assignments: u32,
    experts: u32,
    chunks: u32,
    block_rows: u32,
    max_blocks: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const CHUNK: u32 = 256u;

@group(0) @binding(0) var<uniform> p: PermuteParams;
@group(0) @binding(1) var<storage, read> routed_ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> ranks: array<u32>;
@group(0) @binding(3) var<storage, read_write> chunk_counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> chunk_offsets: array<u32>;
@group(0) @binding(5) var<storage, read_write> expert_counts: array<u32>;
@group(0) @binding(6) var<storage, read_write> padded_offsets: array<u32>;
@group(0) @binding(7) var<storage, read_write> block_expert: array<u32>;
@group(0) @binding(8) var<storage, read_write> row_assignment: array<u32>;
@group(0) @binding(9) var<storage, read_write> assignment_row: array<u32>;

var<workgroup> chunk_ids: array<u32, CHUNK>;

// Per chunk: each assignment's rank among earlier equal experts in the chunk, and
// per-expert counts (written by the last assignment of each expert in the chunk).
@compute @workgroup_size(256)
fn count_chunks(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let chunk = linear_workgroup(wid, nwg);
    if (chunk >= p.chunks) {
        return;
    }
    let a = chunk * CHUNK + lid;
    var e = SENTINEL;
    if (a < p.assignments) {
        e = routed_ids[a];
    }
    chunk_ids[lid] = e;
    workgroupBarrier();
    if (e == SENTINEL) {
        return;
    }
    var rank = 0u;
    for (var i = 0u; i < lid; i++) {
        rank += u32(chunk_ids[i] == e);
    }
    var last = true;
    for (var i = lid + 1u; i < CHUNK; i++) {
        if (chunk_ids[i] == e) {
            last = false;
            break;
        }
    }
    ranks[a] = rank;
    if (last) {
        chunk_counts[chunk * p.experts + e] = rank + 1u;
    }
}

var<workgroup> total_blocks: u32;

// Exclusive scans: chunk offsets within each expert, expert totals, padded expert
// offsets; then the block table and the padding rows.
@compute @workgroup_size(256)
fn scan_offsets(@builtin(local_invocation_index) lid: u32) {
    let n = p.experts;
    for (var e = lid; e < n; e += 256u) {
        var running = 0u;
        for (var c = 0u; c < p.chunks; c++) {
            chunk_offsets[c * n + e] = running;
            running += chunk_counts[c * n + e];
        }
        expert_counts[e] = running;
    }
    storageBarrier();
    workgroupBarrier();
    if (lid == 0u) {
        var offset = 0u;
        for (var e = 0u; e < n; e++) {
            padded_offsets[e] = offset;
            offset += (expert_counts[e] + p.block_rows - 1u) / p.block_rows * p.block_rows;
        }
        padded_offsets[n] = offset;
        total_blocks = offset / p.block_rows;
    }
    storageBarrier();
    workgroupBarrier();
    let blocks = total_blocks;
    for (var b = lid; b < p.max_blocks; b += 256u) {
        var expert = SENTINEL;
        if (b < blocks) {
            // Largest e with padded_offsets[e] <= first row of the block.
            let row = b * p.block_rows;
            var lo = 0u;
            var hi = n;
            while (hi - lo > 1u) {
                let mid = (lo + hi) / 2u;
                if (padded_offsets[mid] <= row) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            expert = lo;
        }
        block_expert[b] = expert;
    }
    for (var e = lid; e < n; e += 256u) {
        for (var r = padded_offsets[e] + expert_counts[e]; r < padded_offsets[e + 1u]; r++) {
            row_assignment[r] = SENTINEL;
        }
    }
}

// Places each assignment at its row and records the inverse map.
@compute @workgroup_size(64)
fn scatter(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let a = linear_workgroup(wid, nwg) * 64u + lid;
    if (a >= p.assignments) {
        return;
    }
    let e = routed_ids[a];
    if (e == SENTINEL) {
        assignment_row[a] = SENTINEL;
        return;
    }
    let row = padded_offsets[e] + chunk_offsets[(a / CHUNK) * p.experts + e] + ranks[a];
    row_assignment[row] = a;
    assignment_row[a] = row;
}

// Decode path (no permutation): expert_counts[e] = assignments routed to e, one
// invocation per expert scanning the few assignments in order.
@compute @workgroup_size(64)
fn count_experts(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = linear_workgroup(wid, nwg) * 64u + lid;
    if (e >= p.experts) {
        return;
    }
    var n = 0u;
    for (var a = 0u; a < p.assignments; a++) {
        n += select(0u, 1u, routed_ids[a] == e);
    }
    expert_counts[e] = n;
}

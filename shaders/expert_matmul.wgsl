// Grouped expert matmul (prefill path): for each row block of the permuted layout,
// its rows times the weights of the block's expert, tiled WG_ROWS x BN with BK-deep
// shared-memory slices. Each output is summed over the inner dimension in index
// order in f32, whatever the tiling.
// gate_up: h[row, n] = act(x[tok] . gate[e, n] (+ bg[e, n]), x[tok] . up[e, n] (+ bu[e, n])),
//          x [T, d] gathered through row_assignment (tok = assignment / rows_per_token),
//          h [rows, ffn], act = SwiGLU or clamped SwiGLU (common.wgsl).
// down:    y[row, n] = h[row] . down[e, n] (+ bd[e, n]), y [rows, d].
// One dispatch per weight chunk: the chunk holds output columns row_begin..row_end (weight
// rows) of experts expert_begin..expert_end, expert_stride elements apart, each weight
// row K elements (WEIGHT_DTYPE); blocks of other experts, empty blocks and SENTINEL
// blocks exit at once. Outputs are [rows, n_dim].
// Dense mode (dense_rows > 0): row r is token r and the expert is 0 (shared expert).
// Mapping: one 256-invocation workgroup per (row block of WG_ROWS rows, column tile of BN);
// invocation (ty, tx) = (lid / TX, lid % TX) computes rows RM ty + i (i < RM) and
// columns tx + TX j (j < RN): for WG_ROWS = 32, 16, 8 that is 2 x 4, 1 x 4, 1 x 2.
//! weights: w0, w1

struct MatmulParams {
    rows_per_token: u32,
    k_dim: u32,
    n_dim: u32,
    col_tiles: u32,
    expert_begin: u32,
    expert_end: u32,
    blocks: u32,
    dense_rows: u32,
    row_begin: u32,
    row_end: u32,
    expert_stride: u32,
    flags: u32,
    alpha: f32,
    limit: f32,
    residual_scale: f32,
    _pad1: u32,
}

const BN: u32 = 64u;
const BK: u32 = 16u;
const MAX_BM: u32 = 32u;
const MAX_RM: u32 = 2u;
const MAX_RN: u32 = 4u;
// Rows per block (the host's BlockRows: 32, 16 or 8; the permutation pads each expert
// to it), and the outputs of one invocation: RM rows x RN columns TX apart. Loops run
// to the constant MAX_RM / MAX_RN with RM / RN as guards, so compilers unroll them and
// keep the accumulators in registers.
override WG_ROWS: u32 = 32u;
override RM: u32 = max(WG_ROWS / 16u, 1u);
override RN: u32 = WG_ROWS * BN / (256u * RM);
override TX: u32 = BN / RN;
// Consecutive weights one invocation decodes per read when filling a weight slice: 8
// (K a multiple of 8: 128 invocations take a [BK][BN] slice, two per weight row) or 1.
override RUN: u32 = 1u;

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a_in: array<f32>;
@group(0) @binding(2) var<storage, read> row_assignment: array<u32>;
@group(0) @binding(3) var<storage, read> block_expert: array<u32>;
@group(0) @binding(4) var<storage, read> w0: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> w1: array<u32>;
// [experts, n_dim] biases of w0's and w1's outputs (read when flags has HAS_BIAS).
@group(0) @binding(7) var<storage, read> bias0: array<f32>;
@group(0) @binding(8) var<storage, read> bias1: array<f32>;

var<workgroup> tile_a: array<f32, 512>;   // [WG_ROWS][BK] (sized for MAX_BM)
var<workgroup> tile_b0: array<f32, 1024>; // [BK][BN]
var<workgroup> tile_b1: array<f32, 1024>; // [BK][BN]
var<workgroup> src_row: array<u32, MAX_BM>; // row of a_in feeding each tile row, or SENTINEL
var<workgroup> shared_expert_id: u32;

// The expert of row block b (uniform across the workgroup).
fn block_expert_of(b: u32, lid: u32) -> u32 {
    if (lid == 0u) {
        var e = 0u;
        if (p.dense_rows == 0u) {
            e = block_expert[b];
        }
        shared_expert_id = e;
    }
    return workgroupUniformLoad(&shared_expert_id);
}

// Fills src_row for block b. gather_tokens: a_in rows are tokens (gate_up), else rows.
fn prepare_rows(b: u32, lid: u32, gather_tokens: bool) {
    if (lid < WG_ROWS) {
        let row = b * WG_ROWS + lid;
        var src = SENTINEL;
        if (p.dense_rows > 0u) {
            if (row < p.dense_rows) {
                src = row;
            }
        } else {
            let a = row_assignment[row];
            if (a != SENTINEL) {
                src = select(row, a / p.rows_per_token, gather_tokens);
            }
        }
        src_row[lid] = src;
    }
    workgroupBarrier();
}

fn load_a_tile(k0: u32, lid: u32) {
    for (var idx = lid; idx < WG_ROWS * BK; idx += 256u) {
        let r = idx / BK;
        let k = k0 + idx % BK;
        let src = src_row[r];
        var v = 0.0;
        if (src != SENTINEL && k < p.k_dim) {
            v = a_in[src * p.k_dim + k];
        }
        tile_a[idx] = v;
    }
}

// The A values of invocation row ty at depth kk: its RM rows, read once per kk.
fn a_column(ty: u32, kk: u32) -> array<f32, MAX_RM> {
    var a: array<f32, MAX_RM>;
    for (var i = 0u; i < MAX_RM; i++) {
        if (i < RM) {
            a[i] = tile_a[(ty * RM + i) * BK + kk];
        }
    }
    return a;
}

// Index into the weights of element idx (0..1023) of a [BK][BN] weight slice for
// expert-local index e, or SENTINEL outside the matrix. The slice is stored transposed
// (tile[kk][n]) while consecutive invocations read consecutive k of one weight row.
fn weight_tile_index(idx: u32, k0: u32, col0: u32, e: u32) -> u32 {
    let col = col0 + idx / BK;
    let k = k0 + idx % BK;
    if (col >= p.row_end || k >= p.k_dim) {
        return SENTINEL;
    }
    return e * p.expert_stride + (col - p.row_begin) * p.k_dim + k;
}

fn tile_slot(idx: u32) -> u32 {
    return (idx % BK) * BN + idx / BK;
}

// Weights k0 + kk .. k0 + kk + 8 of output column col of expert-local e (zeros past the
// chunk's columns or K), the run invocation lid fills when RUN = 8.
struct WeightRun {
    col: u32,
    kk: u32,
    index: u32,
}

fn weight_run(k0: u32, col0: u32, e: u32, lid: u32) -> WeightRun {
    let col = col0 + lid / 2u;
    let kk = (lid % 2u) * 8u;
    var index = SENTINEL;
    if (col < p.row_end && k0 + kk < p.k_dim) {
        index = e * p.expert_stride + (col - p.row_begin) * p.k_dim + k0 + kk;
    }
    return WeightRun(col - col0, kk, index);
}

fn load_w0_tile(k0: u32, col0: u32, e: u32, lid: u32) {
    if (RUN == 8u) {
        if (lid < BN * BK / 8u) {
            let run = weight_run(k0, col0, e, lid);
            var v = Run8(vec4<f32>(0.0), vec4<f32>(0.0));
            if (run.index != SENTINEL) {
                v = w0_at8(run.index);
            }
            for (var j = 0u; j < 4u; j++) {
                tile_b0[(run.kk + j) * BN + run.col] = v.lo[j];
                tile_b0[(run.kk + 4u + j) * BN + run.col] = v.hi[j];
            }
        }
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        let idx = lid + 256u * i;
        let wi = weight_tile_index(idx, k0, col0, e);
        var v = 0.0;
        if (wi != SENTINEL) {
            v = w0_at(wi);
        }
        tile_b0[tile_slot(idx)] = v;
    }
}

fn load_w1_tile(k0: u32, col0: u32, e: u32, lid: u32) {
    if (RUN == 8u) {
        if (lid < BN * BK / 8u) {
            let run = weight_run(k0, col0, e, lid);
            var v = Run8(vec4<f32>(0.0), vec4<f32>(0.0));
            if (run.index != SENTINEL) {
                v = w1_at8(run.index);
            }
            for (var j = 0u; j < 4u; j++) {
                tile_b1[(run.kk + j) * BN + run.col] = v.lo[j];
                tile_b1[(run.kk + 4u + j) * BN + run.col] = v.hi[j];
            }
        }
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        let idx = lid + 256u * i;
        let wi = weight_tile_index(idx, k0, col0, e);
        var v = 0.0;
        if (wi != SENTINEL) {
            v = w1_at(wi);
        }
        tile_b1[tile_slot(idx)] = v;
    }
}

@compute @workgroup_size(256)
fn gate_up(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = linear_workgroup(wid, nwg);
    if (wg >= p.blocks * p.col_tiles) {
        return;
    }
    let b = wg / p.col_tiles;
    let col0 = p.row_begin + (wg % p.col_tiles) * BN;
    let e = block_expert_of(b, lid);
    if (e == SENTINEL || e < p.expert_begin || e >= p.expert_end) {
        return;
    }
    prepare_rows(b, lid, true);
    let ty = lid / TX;
    let tx = lid % TX;
    var acc_g: array<f32, 8>;
    var acc_u: array<f32, 8>;
    for (var k0 = 0u; k0 < p.k_dim; k0 += BK) {
        load_a_tile(k0, lid);
        load_w0_tile(k0, col0, e - p.expert_begin, lid);
        load_w1_tile(k0, col0, e - p.expert_begin, lid);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = a_column(ty, kk);
            for (var j = 0u; j < MAX_RN; j++) {
                if (j < RN) {
                    let g = tile_b0[kk * BN + tx + TX * j];
                    let u = tile_b1[kk * BN + tx + TX * j];
                    for (var i = 0u; i < MAX_RM; i++) {
                        if (i < RM) {
                            acc_g[MAX_RN * i + j] += a[i] * g;
                            acc_u[MAX_RN * i + j] += a[i] * u;
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < RM; i++) {
        if (src_row[ty * RM + i] == SENTINEL) {
            continue;
        }
        let row = b * WG_ROWS + ty * RM + i;
        for (var j = 0u; j < RN; j++) {
            let col = col0 + tx + TX * j;
            if (col < p.row_end) {
                var g = acc_g[MAX_RN * i + j];
                var u = acc_u[MAX_RN * i + j];
                if ((p.flags & HAS_BIAS) != 0u) {
                    g += bias0[e * p.n_dim + col];
                    u += bias1[e * p.n_dim + col];
                }
                out[row * p.n_dim + col] = gated_activation(g, u, p.flags, p.alpha, p.limit);
            }
        }
    }
}

@compute @workgroup_size(256)
fn down(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = linear_workgroup(wid, nwg);
    if (wg >= p.blocks * p.col_tiles) {
        return;
    }
    let b = wg / p.col_tiles;
    let col0 = p.row_begin + (wg % p.col_tiles) * BN;
    let e = block_expert_of(b, lid);
    if (e == SENTINEL || e < p.expert_begin || e >= p.expert_end) {
        return;
    }
    prepare_rows(b, lid, false);
    let ty = lid / TX;
    let tx = lid % TX;
    var acc: array<f32, 8>;
    for (var k0 = 0u; k0 < p.k_dim; k0 += BK) {
        load_a_tile(k0, lid);
        load_w0_tile(k0, col0, e - p.expert_begin, lid);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = a_column(ty, kk);
            for (var j = 0u; j < MAX_RN; j++) {
                if (j < RN) {
                    let w = tile_b0[kk * BN + tx + TX * j];
                    for (var i = 0u; i < MAX_RM; i++) {
                        if (i < RM) {
                            acc[MAX_RN * i + j] += a[i] * w;
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < RM; i++) {
        if (src_row[ty * RM + i] == SENTINEL) {
            continue;
        }
        let row = b * WG_ROWS + ty * RM + i;
        for (var j = 0u; j < RN; j++) {
            let col = col0 + tx + TX * j;
            if (col < p.row_end) {
                var y = acc[MAX_RN * i + j];
                if ((p.flags & HAS_BIAS) != 0u) {
                    y += bias0[e * p.n_dim + col];
                }
                let at = row * p.n_dim + col;
                if ((p.flags & RESIDUAL) != 0u) {
                    y = out[at] + p.residual_scale * y;
                }
                out[at] = y;
            }
        }
    }
}

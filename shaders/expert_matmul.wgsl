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
// Mapping: one workgroup of WG_SIZE = 4 WG_ROWS invocations per (row block of WG_ROWS
// rows, column tile of BN = 64); invocation (ty, tx) = (lid / 16, lid % 16) computes the
// 4 x 4 outputs of rows 4 ty .. 4 ty + 3 and columns 4 tx .. 4 tx + 3 as four vec4
// accumulators, reading per depth one vec4 of A (its 4 rows) and one vec4 per weight
// matrix (its 4 columns) from shared memory: 16 multiply-adds per matrix for 2 or 3
// vec4 loads. Consecutive invocations read consecutive vec4s (free of bank conflicts).
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
const MAX_BM: u32 = 64u;
// Invocations along a tile's columns, 4 columns each.
const COL_GROUPS: u32 = BN / 4u;
// Rows per block (the host's row block: 8, 16 or 32 for experts, where the permutation
// pads each expert to it; 32 or 64 in dense mode) and the invocations that cover it.
override WG_ROWS: u32 = 32u;
override WG_SIZE: u32 = WG_ROWS * 4u;
// Consecutive weights one invocation decodes per read when filling a weight slice: 8
// (K a multiple of 8: a [BK][BN] slice is 128 runs, two per weight row) or 1.
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

// tile_a[kk * WG_ROWS / 4 + g][i]: row 4 g + i of the block at depth k0 + kk.
var<workgroup> tile_a: array<vec4<f32>, 256>;  // [BK][MAX_BM / 4]
// tile_bN[kk * COL_GROUPS + g][j]: weight row (output column) col0 + 4 g + j at depth k0 + kk.
var<workgroup> tile_b0: array<vec4<f32>, 256>; // [BK][COL_GROUPS]
var<workgroup> tile_b1: array<vec4<f32>, 256>; // [BK][COL_GROUPS]
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

// The row of a_in feeding row r of block b, or SENTINEL for a padding row.
// gather_tokens: a_in rows are tokens (gate_up), else rows.
fn block_row_source(b: u32, r: u32, gather_tokens: bool) -> u32 {
    let row = b * WG_ROWS + r;
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
    return src;
}

// Fills src_row for block b.
fn prepare_rows(b: u32, lid: u32, gather_tokens: bool) {
    if (lid < WG_ROWS) {
        src_row[lid] = block_row_source(b, lid, gather_tokens);
    }
    workgroupBarrier();
}

fn load_a_tile(k0: u32, lid: u32) {
    for (var idx = lid; idx < WG_ROWS * BK; idx += WG_SIZE) {
        let r = idx / BK;
        let kk = idx % BK;
        let src = src_row[r];
        var v = 0.0;
        if (src != SENTINEL && k0 + kk < p.k_dim) {
            v = a_in[src * p.k_dim + k0 + kk];
        }
        tile_a[kk * (WG_ROWS / 4u) + r / 4u][r % 4u] = v;
    }
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
    return weight_row_index(col, e) + k;
}

// Index of the first weight of output column (weight row) col of expert-local e.
fn weight_row_index(col: u32, e: u32) -> u32 {
    return e * p.expert_stride + (col - p.row_begin) * p.k_dim;
}

// Weights k0 + kk .. k0 + kk + 8 of output column col of expert-local e (zeros past the
// chunk's columns or K): run r (0..127) of a weight slice when RUN = 8.
struct WeightRun {
    col: u32,
    kk: u32,
    index: u32,
}

fn weight_run(k0: u32, col0: u32, e: u32, r: u32) -> WeightRun {
    let col = col0 + r / 2u;
    let kk = (r % 2u) * 8u;
    var index = SENTINEL;
    if (col < p.row_end && k0 + kk < p.k_dim) {
        index = weight_row_index(col, e) + k0 + kk;
    }
    return WeightRun(col - col0, kk, index);
}

fn load_w0_tile(k0: u32, col0: u32, e: u32, lid: u32) {
    if (RUN == 8u) {
        for (var r = lid; r < BN * BK / 8u; r += WG_SIZE) {
            let run = weight_run(k0, col0, e, r);
            var v = Run8(vec4<f32>(0.0), vec4<f32>(0.0));
            if (run.index != SENTINEL) {
                v = w0_at8(run.index);
            }
            let slot = run.kk * COL_GROUPS + run.col / 4u;
            for (var j = 0u; j < 4u; j++) {
                tile_b0[slot + j * COL_GROUPS][run.col % 4u] = v.lo[j];
                tile_b0[slot + (4u + j) * COL_GROUPS][run.col % 4u] = v.hi[j];
            }
        }
        return;
    }
    for (var idx = lid; idx < BN * BK; idx += WG_SIZE) {
        let wi = weight_tile_index(idx, k0, col0, e);
        var v = 0.0;
        if (wi != SENTINEL) {
            v = w0_at(wi);
        }
        let col = idx / BK;
        tile_b0[(idx % BK) * COL_GROUPS + col / 4u][col % 4u] = v;
    }
}

fn load_w1_tile(k0: u32, col0: u32, e: u32, lid: u32) {
    if (RUN == 8u) {
        for (var r = lid; r < BN * BK / 8u; r += WG_SIZE) {
            let run = weight_run(k0, col0, e, r);
            var v = Run8(vec4<f32>(0.0), vec4<f32>(0.0));
            if (run.index != SENTINEL) {
                v = w1_at8(run.index);
            }
            let slot = run.kk * COL_GROUPS + run.col / 4u;
            for (var j = 0u; j < 4u; j++) {
                tile_b1[slot + j * COL_GROUPS][run.col % 4u] = v.lo[j];
                tile_b1[slot + (4u + j) * COL_GROUPS][run.col % 4u] = v.hi[j];
            }
        }
        return;
    }
    for (var idx = lid; idx < BN * BK; idx += WG_SIZE) {
        let wi = weight_tile_index(idx, k0, col0, e);
        var v = 0.0;
        if (wi != SENTINEL) {
            v = w1_at(wi);
        }
        let col = idx / BK;
        tile_b1[(idx % BK) * COL_GROUPS + col / 4u][col % 4u] = v;
    }
}

// The output row of row r of block b fed by a_in row src, or SENTINEL for a padding row.
fn output_row(b: u32, r: u32, src: u32) -> u32 {
    return select(b * WG_ROWS + r, SENTINEL, src == SENTINEL);
}

// Writes output row `row` (SENTINEL: none): act(g, u) over columns 4 tx .. 4 tx + 3 of
// the tile (plus biases).
fn store_gate_up(row: u32, e: u32, col0: u32, tx: u32, g: vec4<f32>, u: vec4<f32>) {
    if (row == SENTINEL) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + 4u * tx + j;
        if (col < p.row_end) {
            var gj = g[j];
            var uj = u[j];
            if ((p.flags & HAS_BIAS) != 0u) {
                gj += bias0[e * p.n_dim + col];
                uj += bias1[e * p.n_dim + col];
            }
            out[row * p.n_dim + col] = gated_activation(gj, uj, p.flags, p.alpha, p.limit);
        }
    }
}

@compute @workgroup_size(WG_SIZE)
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
    let ty = lid / COL_GROUPS;
    let tx = lid % COL_GROUPS;
    // gN / uN: row 4 ty + N, columns 4 tx .. 4 tx + 3.
    var g0 = vec4<f32>(0.0);
    var g1 = vec4<f32>(0.0);
    var g2 = vec4<f32>(0.0);
    var g3 = vec4<f32>(0.0);
    var u0 = vec4<f32>(0.0);
    var u1 = vec4<f32>(0.0);
    var u2 = vec4<f32>(0.0);
    var u3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k_dim; k0 += BK) {
        load_a_tile(k0, lid);
        load_w0_tile(k0, col0, e - p.expert_begin, lid);
        load_w1_tile(k0, col0, e - p.expert_begin, lid);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = tile_a[kk * (WG_ROWS / 4u) + ty];
            let g = tile_b0[kk * COL_GROUPS + tx];
            let u = tile_b1[kk * COL_GROUPS + tx];
            g0 += a.x * g;
            g1 += a.y * g;
            g2 += a.z * g;
            g3 += a.w * g;
            u0 += a.x * u;
            u1 += a.y * u;
            u2 += a.z * u;
            u3 += a.w * u;
        }
        workgroupBarrier();
    }
    store_gate_up(output_row(b, 4u * ty, src_row[4u * ty]), e, col0, tx, g0, u0);
    store_gate_up(output_row(b, 4u * ty + 1u, src_row[4u * ty + 1u]), e, col0, tx, g1, u1);
    store_gate_up(output_row(b, 4u * ty + 2u, src_row[4u * ty + 2u]), e, col0, tx, g2, u2);
    store_gate_up(output_row(b, 4u * ty + 3u, src_row[4u * ty + 3u]), e, col0, tx, g3, u3);
}

// Writes output row `row` (SENTINEL: none) over columns 4 tx .. 4 tx + 3 of the tile
// (plus bias, or onto the residual).
fn store_down(row: u32, e: u32, col0: u32, tx: u32, y: vec4<f32>) {
    if (row == SENTINEL) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + 4u * tx + j;
        if (col < p.row_end) {
            var yj = y[j];
            if ((p.flags & HAS_BIAS) != 0u) {
                yj += bias0[e * p.n_dim + col];
            }
            let at = row * p.n_dim + col;
            if ((p.flags & RESIDUAL) != 0u) {
                yj = out[at] + p.residual_scale * yj;
            }
            out[at] = yj;
        }
    }
}

@compute @workgroup_size(WG_SIZE)
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
    let ty = lid / COL_GROUPS;
    let tx = lid % COL_GROUPS;
    // yN: row 4 ty + N, columns 4 tx .. 4 tx + 3.
    var y0 = vec4<f32>(0.0);
    var y1 = vec4<f32>(0.0);
    var y2 = vec4<f32>(0.0);
    var y3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k_dim; k0 += BK) {
        load_a_tile(k0, lid);
        load_w0_tile(k0, col0, e - p.expert_begin, lid);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = tile_a[kk * (WG_ROWS / 4u) + ty];
            let w = tile_b0[kk * COL_GROUPS + tx];
            y0 += a.x * w;
            y1 += a.y * w;
            y2 += a.z * w;
            y3 += a.w * w;
        }
        workgroupBarrier();
    }
    store_down(output_row(b, 4u * ty, src_row[4u * ty]), e, col0, tx, y0);
    store_down(output_row(b, 4u * ty + 1u, src_row[4u * ty + 1u]), e, col0, tx, y1);
    store_down(output_row(b, 4u * ty + 2u, src_row[4u * ty + 2u]), e, col0, tx, y2);
    store_down(output_row(b, 4u * ty + 3u, src_row[4u * ty + 3u]), e, col0, tx, y3);
}

// CPU-target variants (`gate_up_direct`, `down_direct`; RUN = 8, K a multiple of 8):
// the same workgroup mapping and per-output sums in index order, but each invocation
// reads its block's expert, its 4 rows' sources, and its 4 rows of A and 4 weight rows
// (in runs of 8) straight from the buffers: no shared memory and no barrier. A CPU
// driver runs an invocation per SIMD lane and keeps the buffers in its caches, so the
// tile fills and barriers (most of a tile's time there) buy nothing; a GPU keeps the
// tiled entries.

// Elements k..k+7 of row src of a_in (row 0 stands in for a padding row, never stored).
fn a_run8(src: u32, k: u32) -> Run8 {
    let at = select(src, 0u, src == SENTINEL) * p.k_dim + k;
    return Run8(
        vec4<f32>(a_in[at], a_in[at + 1u], a_in[at + 2u], a_in[at + 3u]),
        vec4<f32>(a_in[at + 4u], a_in[at + 5u], a_in[at + 6u], a_in[at + 7u]),
    );
}

// acc[j] += a[kk] * wj[kk] for kk = 0..7 in order: one row's sums over 4 columns.
fn fma_run8(acc: vec4<f32>, a: Run8, w0: Run8, w1: Run8, w2: Run8, w3: Run8) -> vec4<f32> {
    var s = acc;
    s += a.lo.x * vec4<f32>(w0.lo.x, w1.lo.x, w2.lo.x, w3.lo.x);
    s += a.lo.y * vec4<f32>(w0.lo.y, w1.lo.y, w2.lo.y, w3.lo.y);
    s += a.lo.z * vec4<f32>(w0.lo.z, w1.lo.z, w2.lo.z, w3.lo.z);
    s += a.lo.w * vec4<f32>(w0.lo.w, w1.lo.w, w2.lo.w, w3.lo.w);
    s += a.hi.x * vec4<f32>(w0.hi.x, w1.hi.x, w2.hi.x, w3.hi.x);
    s += a.hi.y * vec4<f32>(w0.hi.y, w1.hi.y, w2.hi.y, w3.hi.y);
    s += a.hi.z * vec4<f32>(w0.hi.z, w1.hi.z, w2.hi.z, w3.hi.z);
    s += a.hi.w * vec4<f32>(w0.hi.w, w1.hi.w, w2.hi.w, w3.hi.w);
    return s;
}

// Start of weight row col of expert-local e, clamped to the chunk's last row (columns
// past the chunk read it; their outputs are never stored).
fn weight_row_start(col: u32, e: u32) -> u32 {
    return weight_row_index(min(col, p.row_end - 1u), e);
}

// The invocation of a direct entry: its block, expert and tile, the a_in rows of its
// rows 4 ty .. 4 ty + 3 (SENTINEL: padding) and the first weights of its columns
// 4 tx .. 4 tx + 3 (clamped into the chunk). `live` is false when it has nothing to
// compute: a block of no expert here, all its rows padding, or all its columns past
// the chunk.
struct DirectTile {
    live: bool,
    b: u32,
    e: u32,
    col0: u32,
    ty: u32,
    tx: u32,
    src: vec4<u32>,
    weights: vec4<u32>,
}

fn direct_tile(wg: u32, lid: u32, gather_tokens: bool) -> DirectTile {
    var t: DirectTile;
    t.live = false;
    if (wg >= p.blocks * p.col_tiles) {
        return t;
    }
    t.b = wg / p.col_tiles;
    t.col0 = p.row_begin + (wg % p.col_tiles) * BN;
    t.e = select(block_expert[t.b], 0u, p.dense_rows > 0u);
    if (t.e == SENTINEL || t.e < p.expert_begin || t.e >= p.expert_end) {
        return t;
    }
    t.ty = lid / COL_GROUPS;
    t.tx = lid % COL_GROUPS;
    let r = 4u * t.ty;
    t.src = vec4<u32>(block_row_source(t.b, r, gather_tokens), block_row_source(t.b, r + 1u, gather_tokens),
        block_row_source(t.b, r + 2u, gather_tokens), block_row_source(t.b, r + 3u, gather_tokens));
    let c = t.col0 + 4u * t.tx;
    if (all(t.src == vec4<u32>(SENTINEL)) || c >= p.row_end) {
        return t;
    }
    let el = t.e - p.expert_begin;
    t.weights = vec4<u32>(weight_row_start(c, el), weight_row_start(c + 1u, el), weight_row_start(c + 2u, el),
        weight_row_start(c + 3u, el));
    t.live = true;
    return t;
}

// The entries below write their loops out in full: the same loops through helper
// functions taking and returning structs of runs and sums ran 8-15% slower on
// lavapipe (whole-model prefill, three alternations).
@compute @workgroup_size(WG_SIZE)
fn gate_up_direct(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = direct_tile(linear_workgroup(wid, nwg), lid, true);
    if (!t.live) {
        return;
    }
    let src = t.src;
    let w = t.weights;
    var g0 = vec4<f32>(0.0);
    var g1 = vec4<f32>(0.0);
    var g2 = vec4<f32>(0.0);
    var g3 = vec4<f32>(0.0);
    var u0 = vec4<f32>(0.0);
    var u1 = vec4<f32>(0.0);
    var u2 = vec4<f32>(0.0);
    var u3 = vec4<f32>(0.0);
    for (var k = 0u; k < p.k_dim; k += 8u) {
        let a0 = a_run8(src.x, k);
        let a1 = a_run8(src.y, k);
        let a2 = a_run8(src.z, k);
        let a3 = a_run8(src.w, k);
        let x0 = w0_at8(w.x + k);
        let x1 = w0_at8(w.y + k);
        let x2 = w0_at8(w.z + k);
        let x3 = w0_at8(w.w + k);
        g0 = fma_run8(g0, a0, x0, x1, x2, x3);
        g1 = fma_run8(g1, a1, x0, x1, x2, x3);
        g2 = fma_run8(g2, a2, x0, x1, x2, x3);
        g3 = fma_run8(g3, a3, x0, x1, x2, x3);
        let y0 = w1_at8(w.x + k);
        let y1 = w1_at8(w.y + k);
        let y2 = w1_at8(w.z + k);
        let y3 = w1_at8(w.w + k);
        u0 = fma_run8(u0, a0, y0, y1, y2, y3);
        u1 = fma_run8(u1, a1, y0, y1, y2, y3);
        u2 = fma_run8(u2, a2, y0, y1, y2, y3);
        u3 = fma_run8(u3, a3, y0, y1, y2, y3);
    }
    store_gate_up(output_row(t.b, 4u * t.ty, src.x), t.e, t.col0, t.tx, g0, u0);
    store_gate_up(output_row(t.b, 4u * t.ty + 1u, src.y), t.e, t.col0, t.tx, g1, u1);
    store_gate_up(output_row(t.b, 4u * t.ty + 2u, src.z), t.e, t.col0, t.tx, g2, u2);
    store_gate_up(output_row(t.b, 4u * t.ty + 3u, src.w), t.e, t.col0, t.tx, g3, u3);
}

@compute @workgroup_size(WG_SIZE)
fn down_direct(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = direct_tile(linear_workgroup(wid, nwg), lid, false);
    if (!t.live) {
        return;
    }
    let src = t.src;
    let w = t.weights;
    var y0 = vec4<f32>(0.0);
    var y1 = vec4<f32>(0.0);
    var y2 = vec4<f32>(0.0);
    var y3 = vec4<f32>(0.0);
    for (var k = 0u; k < p.k_dim; k += 8u) {
        let x0 = w0_at8(w.x + k);
        let x1 = w0_at8(w.y + k);
        let x2 = w0_at8(w.z + k);
        let x3 = w0_at8(w.w + k);
        y0 = fma_run8(y0, a_run8(src.x, k), x0, x1, x2, x3);
        y1 = fma_run8(y1, a_run8(src.y, k), x0, x1, x2, x3);
        y2 = fma_run8(y2, a_run8(src.z, k), x0, x1, x2, x3);
        y3 = fma_run8(y3, a_run8(src.w, k), x0, x1, x2, x3);
    }
    store_down(output_row(t.b, 4u * t.ty, src.x), t.e, t.col0, t.tx, y0);
    store_down(output_row(t.b, 4u * t.ty + 1u, src.y), t.e, t.col0, t.tx, y1);
    store_down(output_row(t.b, 4u * t.ty + 2u, src.z), t.e, t.col0, t.tx, y2);
    store_down(output_row(t.b, 4u * t.ty + 3u, src.w), t.e, t.col0, t.tx, y3);
}

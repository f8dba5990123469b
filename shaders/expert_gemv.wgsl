// Expert GEMV (decode path, few tokens): each assignment's row times its own expert's
// weights, with no permutation, so only the selected experts' weights are read.
// gate_up: h[a, n] = act(x[tok] . gate[e, n] (+ bg[e, n]), x[tok] . up[e, n] (+ bu[e, n])),
//          tok = a / rows_per_token, act = SwiGLU or clamped SwiGLU (common.wgsl)
// down:    y[a, n] = h[a] . down[e, n] (+ bd[e, n])
// e = routed_ids[a] (SENTINEL: dropped, skipped); dense mode (dense != 0): row a is token a
// and the expert is 0 (shared expert, attention projections, lm head). One dispatch per
// weight chunk: the chunk holds output rows row_begin..row_end of experts
// expert_begin..expert_end, expert_stride elements apart, each row K elements
// (WEIGHT_DTYPE); assignments of other experts exit at once. Outputs are [A, n_dim].
// Split mapping (entries gate_up, down; GPUs): one 64-invocation workgroup per (group
// of TOKENS rows a, group of WG_ROWS outputs); each invocation sums a strided slice of K
// for every (row, output) pair of the group, reading each weight once for all TOKENS
// rows (dense mode; routed rows take TOKENS = 1, since their experts differ); then the
// pairs' partials are summed in a fixed order: after one barrier, invocation s adds
// pair s's 64 partials in invocation order (gemv_reduce_shared.wgsl; one barrier
// instead of a tree's six, which dominate on CPU adapters), or, where the adapter has
// subgroups, with subgroupAdd first and one partial per subgroup through shared memory
// (gemv_reduce_subgroup.wgsl).
// The host composes the reduction at the `//! part: gemv_reduce` line, with `Lanes`,
// the invocation ids it needs. A row's sum depends on neither WG_ROWS nor TOKENS
// (picked by the host from K and the row count: about 16 products per invocation and
// step), so a token's result never depends on the tokens batched with it. The slice is
// runs of RUN consecutive weights (8 where K is a multiple of 8: a 16-byte read of f16
// weights, one scale per run for block formats; else 1), invocation i taking runs i,
// i + 64, ...: coalesced reads either way.
// The products' loops run to WG_ROWS / TOKENS / RUN themselves (constants once the
// pipeline is built), so they unroll to exactly WG_ROWS x TOKENS x RUN multiply-adds
// with the accumulators in registers; looping to MAX_ROWS / MAX_TOKENS / MAX_RUN with
// guards unrolled to 512 guarded products per matrix, which lavapipe left rolled, its
// accumulators in memory (7x slower, measured).
//! weights: w0, w1

struct GemvParams {
    rows_per_token: u32,
    k_dim: u32,
    n_dim: u32,
    row_groups: u32,
    expert_begin: u32,
    expert_end: u32,
    assignments: u32,
    dense: u32,
    row_begin: u32,
    row_end: u32,
    expert_stride: u32,
    flags: u32,
    alpha: f32,
    limit: f32,
    residual_scale: f32,
    _pad1: u32,
}

const WG: u32 = 64u;
const MAX_ROWS: u32 = 16u;
const MAX_TOKENS: u32 = 4u;
override WG_ROWS: u32 = 4u;
// Rows a per workgroup; WG_ROWS * TOKENS <= MAX_ROWS (the accumulators of one matrix).
override TOKENS: u32 = 1u;
const MAX_RUN: u32 = 8u;
// Consecutive weights per step of the loop over K: 8 (K a multiple of 8) or 1; the
// serial mapping also 32 (K a multiple of 32: scales read once per 4 runs of 8).
override RUN: u32 = 1u;

@group(0) @binding(0) var<uniform> p: GemvParams;
@group(0) @binding(1) var<storage, read> a_in: array<f32>;
@group(0) @binding(2) var<storage, read> routed_ids: array<u32>;
@group(0) @binding(3) var<storage, read> w0: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> w1: array<u32>;
// [experts, n_dim] biases of w0's and w1's outputs (read when flags has HAS_BIAS).
@group(0) @binding(6) var<storage, read> bias0: array<f32>;
@group(0) @binding(7) var<storage, read> bias1: array<f32>;

// Partials [WG invocations][SLOT_STRIDE]: slot s (matrix m, row r: s = m WG_ROWS + r)
// of invocation i at i * SLOT_STRIDE + s. The odd stride keeps both the writes (one
// invocation per bank) and the per-slot reads (consecutive slots) free of bank conflicts.
const SLOT_STRIDE: u32 = 33u;
var<workgroup> partial: array<f32, 2112>; // WG * SLOT_STRIDE
var<workgroup> shared_expert_id: u32;

// The expert of the workgroup whose first row is a (uniform across the workgroup).
fn expert_of(a: u32, lid: u32) -> u32 {
    if (lid == 0u) {
        var e = 0u;
        if (p.dense == 0u) {
            e = routed_ids[a];
        }
        shared_expert_id = e;
    }
    return workgroupUniformLoad(&shared_expert_id);
}

//! part: gemv_reduce
// The rows a of workgroup wg (first_row + t for t < TOKENS) and its first output.
struct GemvTile {
    first_row: u32,
    n0: u32,
}

fn gemv_tile(wg: u32) -> GemvTile {
    return GemvTile((wg / p.row_groups) * TOKENS, p.row_begin + (wg % p.row_groups) * WG_ROWS);
}

fn row_valid(tile: GemvTile, t: u32) -> bool {
    return tile.first_row + t < p.assignments;
}

// Offsets into a_in of the tile's input rows: tokens for matrices reading tokens
// (gate_up; routed row a reads token a / rows_per_token), else the rows themselves
// (down). Rows past the last read row 0.
fn input_offsets(tile: GemvTile, gather_tokens: bool) -> array<u32, MAX_TOKENS> {
    var offsets: array<u32, MAX_TOKENS>;
    for (var t = 0u; t < MAX_TOKENS; t++) {
        if (t < TOKENS && row_valid(tile, t)) {
            let a = tile.first_row + t;
            offsets[t] = select(a, a / p.rows_per_token, gather_tokens && p.dense == 0u) * p.k_dim;
        }
    }
    return offsets;
}

// Index into the chunk's weights of output n (clamped into the chunk), element i.
fn gemv_weight_index(base: u32, n: u32, i: u32) -> u32 {
    return base + (min(n, p.row_end - 1u) - p.row_begin) * p.k_dim + i;
}

// The tile's input values at i..i + RUN, one run per token.
fn input_run(src: array<u32, MAX_TOKENS>, i: u32) -> array<array<f32, MAX_RUN>, MAX_TOKENS> {
    var xv: array<array<f32, MAX_RUN>, MAX_TOKENS>;
    for (var t = 0u; t < TOKENS; t++) {
        for (var j = 0u; j < RUN; j++) {
            xv[t][j] = a_in[src[t] + i + j];
        }
    }
    return xv;
}

// Writes output n of row a for expert e: the gated activation of gate g and up u, with
// the expert's biases where flags say so.
fn store_gate_up(e: u32, a: u32, n: u32, g: f32, u: f32) {
    var gb = g;
    var ub = u;
    if ((p.flags & HAS_BIAS) != 0u) {
        gb += bias0[e * p.n_dim + n];
        ub += bias1[e * p.n_dim + n];
    }
    out[a * p.n_dim + n] = gated_activation(gb, ub, p.flags, p.alpha, p.limit);
}

// Writes output n of row a for expert e: y, plus the expert's bias where flags say so,
// or adds it times residual_scale to the output (RESIDUAL).
fn store_down(e: u32, a: u32, n: u32, y: f32) {
    var yb = y;
    if ((p.flags & HAS_BIAS) != 0u) {
        yb += bias0[e * p.n_dim + n];
    }
    let at = a * p.n_dim + n;
    if ((p.flags & RESIDUAL) != 0u) {
        yb = out[at] + p.residual_scale * yb;
    }
    out[at] = yb;
}

@compute @workgroup_size(64)
fn gate_up(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    lanes: Lanes,
) {
    let lid = lanes.lid;
    let wg = linear_workgroup(wid, nwg);
    let tile = gemv_tile(wg);
    if (tile.first_row >= p.assignments) {
        return;
    }
    let e = expert_of(tile.first_row, lid);
    if (e == SENTINEL || e < p.expert_begin || e >= p.expert_end) {
        return;
    }
    let base = (e - p.expert_begin) * p.expert_stride;
    let src = input_offsets(tile, true);
    var acc_g: array<f32, MAX_ROWS>;
    var acc_u: array<f32, MAX_ROWS>;
    for (var i = lid * RUN; i < p.k_dim; i += WG * RUN) {
        let xv = input_run(src, i);
        for (var r = 0u; r < WG_ROWS; r++) {
            let wi = gemv_weight_index(base, tile.n0 + r, i);
            let g = run8_array(w0_run8(wi));
            let u = run8_array(w1_run8(wi));
            for (var t = 0u; t < TOKENS; t++) {
                for (var j = 0u; j < RUN; j++) {
                    acc_g[t * WG_ROWS + r] += xv[t][j] * g[j];
                    acc_u[t * WG_ROWS + r] += xv[t][j] * u[j];
                }
            }
        }
    }
    let slots = WG_ROWS * TOKENS;
    for (var s = 0u; s < MAX_ROWS; s++) {
        if (s < slots) {
            partial[lid * SLOT_STRIDE + s] = acc_g[s];
            partial[lid * SLOT_STRIDE + slots + s] = acc_u[s];
        }
    }
    reduce_partials(lanes, 2u * slots);
    let t = lid / WG_ROWS;
    let n = tile.n0 + lid % WG_ROWS;
    if (lid < slots && row_valid(tile, t) && n < p.row_end) {
        store_gate_up(e, tile.first_row + t, n, partial[lid], partial[slots + lid]);
    }
}

@compute @workgroup_size(64)
fn down(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    lanes: Lanes,
) {
    let lid = lanes.lid;
    let wg = linear_workgroup(wid, nwg);
    let tile = gemv_tile(wg);
    if (tile.first_row >= p.assignments) {
        return;
    }
    let e = expert_of(tile.first_row, lid);
    if (e == SENTINEL || e < p.expert_begin || e >= p.expert_end) {
        return;
    }
    let base = (e - p.expert_begin) * p.expert_stride;
    let src = input_offsets(tile, false);
    var acc: array<f32, MAX_ROWS>;
    for (var i = lid * RUN; i < p.k_dim; i += WG * RUN) {
        let hv = input_run(src, i);
        for (var r = 0u; r < WG_ROWS; r++) {
            let w = run8_array(w0_run8(gemv_weight_index(base, tile.n0 + r, i)));
            for (var t = 0u; t < TOKENS; t++) {
                for (var j = 0u; j < RUN; j++) {
                    acc[t * WG_ROWS + r] += hv[t][j] * w[j];
                }
            }
        }
    }
    let slots = WG_ROWS * TOKENS;
    for (var s = 0u; s < MAX_ROWS; s++) {
        if (s < slots) {
            partial[lid * SLOT_STRIDE + s] = acc[s];
        }
    }
    reduce_partials(lanes, slots);
    let t = lid / WG_ROWS;
    let n = tile.n0 + lid % WG_ROWS;
    if (lid < slots && row_valid(tile, t) && n < p.row_end) {
        store_down(e, tile.first_row + t, n, partial[lid]);
    }
}

// Serial mapping (CPU adapters): one invocation per serial_outs() consecutive outputs of
// the group's TOKENS rows, summing all of K, RUN weights per step; WG_ROWS invocations
// (here the workgroup's size) of WG_ROWS * serial_outs() = 64 consecutive outputs per
// workgroup (p.row_groups counts those groups). One row (TOKENS = 1: decode, routed
// rows) takes 4 outputs per invocation, reading each input run once for 4 weight runs;
// more rows take 1 output (their accumulators already fill the registers). No shared
// memory and no barrier, which a CPU driver pays per workgroup; on a GPU the split
// mapping above coalesces better.
// Each row's sum runs in 4 lanes of a vec4 (lane l takes elements l, l + 4, l + 8, ...
// in index order; with RUN = 1 everything lands in lane 0), added as (l0 + l1) + (l2 +
// l3) at the end; the same for every TOKENS, so a token's result never depends on the
// rows batched with it, and RUN = 32 adds the same products in the same order as RUN =
// 8. The loop over K has no inner loop over tokens and indexes no local array: a JIT
// that neither unrolls loops nor keeps arrays in registers (SwiftShader's Subzero, the
// browser's fallback adapter) ran the looped form 3-4x slower (measured).
struct SerialOutput {
    tile: GemvTile,
    expert: u32,
    // Index of the output's first weight.
    weights: u32,
}

// Outputs per invocation of the serial mapping (the host's `serial_outputs`).
fn serial_outs() -> u32 {
    return select(1u, 4u, TOKENS == 1u);
}

// The rows and first output of this invocation, or expert SENTINEL when it has none.
fn serial_output(wg: u32, lid: u32) -> SerialOutput {
    let n0 = p.row_begin + ((wg % p.row_groups) * WG_ROWS + lid) * serial_outs();
    let tile = GemvTile((wg / p.row_groups) * TOKENS, n0);
    var e = SENTINEL;
    if (tile.first_row < p.assignments && tile.n0 < p.row_end) {
        e = 0u;
        if (p.dense == 0u) {
            e = routed_ids[tile.first_row];
        }
        if (e != SENTINEL && (e < p.expert_begin || e >= p.expert_end)) {
            e = SENTINEL;
        }
    }
    var weights = 0u;
    if (e != SENTINEL) {
        weights = gemv_weight_index((e - p.expert_begin) * p.expert_stride, tile.n0, 0u);
    }
    return SerialOutput(tile, e, weights);
}

// The input run of the row at offset `row` (RUN = 1: element i alone, the rest zero).
fn input_run8(row: u32, i: u32) -> Run8 {
    let at = row + i;
    if (RUN == 1u) {
        return Run8(vec4<f32>(a_in[at], 0.0, 0.0, 0.0), vec4<f32>(0.0));
    }
    return Run8(vec4<f32>(a_in[at], a_in[at + 1u], a_in[at + 2u], a_in[at + 3u]),
        vec4<f32>(a_in[at + 4u], a_in[at + 5u], a_in[at + 6u], a_in[at + 7u]));
}

// Lane sums of up to MAX_TOKENS rows, one named field per row (no dynamic indexing).
struct RowSums {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

fn lane_products(acc: vec4<f32>, x: Run8, w: Run8) -> vec4<f32> {
    return acc + (x.lo * w.lo + x.hi * w.hi);
}

// Adds the products of weight run w (elements i..) with each of the TOKENS rows at src.
fn add_run(sums: RowSums, src: array<u32, MAX_TOKENS>, i: u32, w: Run8) -> RowSums {
    var s = sums;
    s.r0 = lane_products(s.r0, input_run8(src[0], i), w);
    if (TOKENS > 1u) {
        s.r1 = lane_products(s.r1, input_run8(src[1], i), w);
    }
    if (TOKENS > 2u) {
        s.r2 = lane_products(s.r2, input_run8(src[2], i), w);
    }
    if (TOKENS > 3u) {
        s.r3 = lane_products(s.r3, input_run8(src[3], i), w);
    }
    return s;
}

// add_run for the four runs of w (elements i..i + 32), in order.
fn add_run32(sums: RowSums, src: array<u32, MAX_TOKENS>, i: u32, w: Run32) -> RowSums {
    let s = add_run(add_run(sums, src, i, w.r0), src, i + 8u, w.r1);
    return add_run(add_run(s, src, i + 16u, w.r2), src, i + 24u, w.r3);
}

// Row t's sum.
fn row_sum(sums: RowSums, t: u32) -> f32 {
    var v = sums.r0;
    if (t == 1u) {
        v = sums.r1;
    } else if (t == 2u) {
        v = sums.r2;
    } else if (t == 3u) {
        v = sums.r3;
    }
    return (v.x + v.y) + (v.z + v.w);
}

fn zero_sums() -> RowSums {
    return RowSums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
}

// Lane sums of one row's 4 consecutive outputs (serial_outs() = 4).
struct OutputSums {
    o0: vec4<f32>,
    o1: vec4<f32>,
    o2: vec4<f32>,
    o3: vec4<f32>,
}

fn zero_outputs() -> OutputSums {
    return OutputSums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
}

// The input's runs at i, i + 8, i + 16, i + 24 (RUN = 32; else only r0, at i).
fn input_runs(row: u32, i: u32) -> Run32 {
    let zero = Run8(vec4<f32>(0.0), vec4<f32>(0.0));
    if (RUN == 32u) {
        return Run32(input_run8(row, i), input_run8(row, i + 8u), input_run8(row, i + 16u), input_run8(row, i + 24u));
    }
    return Run32(input_run8(row, i), zero, zero, zero);
}

// The products of the input runs x with weight run r, in the order add_run and
// add_run32 take them (RUN = 32: four runs of 8; else r.r0 alone).
fn run_products(acc: vec4<f32>, x: Run32, r: Run32) -> vec4<f32> {
    if (RUN == 32u) {
        let s = lane_products(lane_products(acc, x.r0, r.r0), x.r1, r.r1);
        return lane_products(lane_products(s, x.r2, r.r2), x.r3, r.r3);
    }
    return lane_products(acc, x.r0, r.r0);
}

// RUN weights of w0 / w1 at i as a Run32 (RUN = 32; else the run of 8 in r0).
fn w0_runs(i: u32) -> Run32 {
    if (RUN == 32u) {
        return w0_at32(i);
    }
    let zero = Run8(vec4<f32>(0.0), vec4<f32>(0.0));
    return Run32(w0_run8(i), zero, zero, zero);
}

fn w1_runs(i: u32) -> Run32 {
    if (RUN == 32u) {
        return w1_at32(i);
    }
    let zero = Run8(vec4<f32>(0.0), vec4<f32>(0.0));
    return Run32(w1_run8(i), zero, zero, zero);
}

// Index of the first weight of each of the 4 outputs from n0 (clamped into the chunk).
fn output_weights(o: SerialOutput) -> vec4<u32> {
    let base = (o.expert - p.expert_begin) * p.expert_stride;
    let n = o.tile.n0;
    return vec4<u32>(gemv_weight_index(base, n, 0u), gemv_weight_index(base, n + 1u, 0u),
        gemv_weight_index(base, n + 2u, 0u), gemv_weight_index(base, n + 3u, 0u));
}

fn output_sum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

@compute @workgroup_size(WG_ROWS)
fn gate_up_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = serial_output(linear_workgroup(wid, nwg), lid);
    if (o.expert == SENTINEL) {
        return;
    }
    let src = input_offsets(o.tile, true);
    if (serial_outs() == 4u) {
        // Written out: helpers returning structs of sums ran slower on lavapipe (see
        // expert_matmul.wgsl's direct entries).
        let w = output_weights(o);
        var g = zero_outputs();
        var u = zero_outputs();
        for (var i = 0u; i < p.k_dim; i += RUN) {
            let x = input_runs(src[0], i);
            g.o0 = run_products(g.o0, x, w0_runs(w.x + i));
            g.o1 = run_products(g.o1, x, w0_runs(w.y + i));
            g.o2 = run_products(g.o2, x, w0_runs(w.z + i));
            g.o3 = run_products(g.o3, x, w0_runs(w.w + i));
            u.o0 = run_products(u.o0, x, w1_runs(w.x + i));
            u.o1 = run_products(u.o1, x, w1_runs(w.y + i));
            u.o2 = run_products(u.o2, x, w1_runs(w.z + i));
            u.o3 = run_products(u.o3, x, w1_runs(w.w + i));
        }
        let gs = vec4<f32>(output_sum(g.o0), output_sum(g.o1), output_sum(g.o2), output_sum(g.o3));
        let us = vec4<f32>(output_sum(u.o0), output_sum(u.o1), output_sum(u.o2), output_sum(u.o3));
        for (var j = 0u; j < 4u; j++) {
            if (o.tile.n0 + j < p.row_end) {
                store_gate_up(o.expert, o.tile.first_row, o.tile.n0 + j, gs[j], us[j]);
            }
        }
        return;
    }
    var gate = zero_sums();
    var up = zero_sums();
    for (var i = 0u; i < p.k_dim; i += RUN) {
        let wi = o.weights + i;
        if (RUN == 32u) {
            gate = add_run32(gate, src, i, w0_at32(wi));
            up = add_run32(up, src, i, w1_at32(wi));
        } else {
            gate = add_run(gate, src, i, w0_run8(wi));
            up = add_run(up, src, i, w1_run8(wi));
        }
    }
    for (var t = 0u; t < TOKENS; t++) {
        if (row_valid(o.tile, t)) {
            store_gate_up(o.expert, o.tile.first_row + t, o.tile.n0, row_sum(gate, t), row_sum(up, t));
        }
    }
}

@compute @workgroup_size(WG_ROWS)
fn down_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = serial_output(linear_workgroup(wid, nwg), lid);
    if (o.expert == SENTINEL) {
        return;
    }
    let src = input_offsets(o.tile, false);
    if (serial_outs() == 4u) {
        let w = output_weights(o);
        var y = zero_outputs();
        for (var i = 0u; i < p.k_dim; i += RUN) {
            let x = input_runs(src[0], i);
            y.o0 = run_products(y.o0, x, w0_runs(w.x + i));
            y.o1 = run_products(y.o1, x, w0_runs(w.y + i));
            y.o2 = run_products(y.o2, x, w0_runs(w.z + i));
            y.o3 = run_products(y.o3, x, w0_runs(w.w + i));
        }
        let ys = vec4<f32>(output_sum(y.o0), output_sum(y.o1), output_sum(y.o2), output_sum(y.o3));
        for (var j = 0u; j < 4u; j++) {
            if (o.tile.n0 + j < p.row_end) {
                store_down(o.expert, o.tile.first_row, o.tile.n0 + j, ys[j]);
            }
        }
        return;
    }
    var sums = zero_sums();
    for (var i = 0u; i < p.k_dim; i += RUN) {
        let wi = o.weights + i;
        if (RUN == 32u) {
            sums = add_run32(sums, src, i, w0_at32(wi));
        } else {
            sums = add_run(sums, src, i, w0_run8(wi));
        }
    }
    for (var t = 0u; t < TOKENS; t++) {
        if (row_valid(o.tile, t)) {
            store_down(o.expert, o.tile.first_row + t, o.tile.n0, row_sum(sums, t));
        }
    }
}

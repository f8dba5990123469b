// Expert GEMV (decode path, few tokens): each assignment's row times its own expert's
// weights, with no permutation, so only the selected experts' weights are read.
// gate_up: h[a, n] = act(x[tok] . gate[e, n] (+ bg[e, n]), x[tok] . up[e, n] (+ bu[e, n])),
//          tok = a / rows_per_token, act = SwiGLU or clamped SwiGLU (common.wgsl)
// down:    y[a, n] = h[a] . down[e, n] (+ bd[e, n])
// e = routed_ids[a] (SENTINEL: dropped, skipped); dense mode (dense != 0): row a is token a
// and the expert is 0 (shared expert). One dispatch per weight chunk: the chunk holds
// output rows row_begin..row_end of experts expert_begin..expert_end, expert_stride
// elements apart, each row K elements (WEIGHT_DTYPE); assignments of other experts
// exit at once. Outputs are [A, n_dim].
// Mapping: one 64-invocation workgroup per (assignment, group of WG_ROWS outputs); each
// invocation sums a strided slice of K (coalesced weight reads) for every row of the
// group; after one barrier, invocation s adds slot s's 64 partials in index order
// (deterministic, and one barrier instead of a tree's six, which dominate on CPU
// adapters). A row's sum does not depend on WG_ROWS (4, 8 or 16, picked by the host
// from K: more rows per workgroup when rows are short, so fewer workgroups each do
// more). Row loops run to the constant MAX_ROWS with WG_ROWS as a guard, so they
// unroll with the accumulators in registers.
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
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 64u;
const MAX_ROWS: u32 = 16u;
override WG_ROWS: u32 = 4u;

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

// Sums each slot s < `slots` over the WG invocations, in invocation order, into
// partial[s] (slots <= WG).
fn reduce_partials(lid: u32, slots: u32) {
    workgroupBarrier();
    var sum = 0.0;
    if (lid < slots) {
        for (var i = 0u; i < WG; i++) {
            sum += partial[i * SLOT_STRIDE + lid];
        }
    }
    workgroupBarrier();
    if (lid < slots) {
        partial[lid] = sum;
    }
    workgroupBarrier();
}

@compute @workgroup_size(64)
fn gate_up(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = linear_workgroup(wid, nwg);
    if (wg >= p.assignments * p.row_groups) {
        return;
    }
    let a = wg / p.row_groups;
    let n0 = p.row_begin + (wg % p.row_groups) * WG_ROWS;
    let e = expert_of(a, lid);
    if (e == SENTINEL || e < p.expert_begin || e >= p.expert_end) {
        return;
    }
    let tok = select(a / p.rows_per_token, a, p.dense != 0u);
    let base = (e - p.expert_begin) * p.expert_stride;
    var acc_g: array<f32, MAX_ROWS>;
    var acc_u: array<f32, MAX_ROWS>;
    for (var i = lid; i < p.k_dim; i += WG) {
        let xv = a_in[tok * p.k_dim + i];
        for (var r = 0u; r < MAX_ROWS; r++) {
            if (r < WG_ROWS) {
                let n = min(n0 + r, p.row_end - 1u);
                let wi = base + (n - p.row_begin) * p.k_dim + i;
                acc_g[r] += xv * w0_at(wi);
                acc_u[r] += xv * w1_at(wi);
            }
        }
    }
    for (var r = 0u; r < MAX_ROWS; r++) {
        if (r < WG_ROWS) {
            partial[lid * SLOT_STRIDE + r] = acc_g[r];
            partial[lid * SLOT_STRIDE + WG_ROWS + r] = acc_u[r];
        }
    }
    reduce_partials(lid, 2u * WG_ROWS);
    if (lid < WG_ROWS && n0 + lid < p.row_end) {
        var g = partial[lid];
        var u = partial[WG_ROWS + lid];
        if ((p.flags & HAS_BIAS) != 0u) {
            g += bias0[e * p.n_dim + n0 + lid];
            u += bias1[e * p.n_dim + n0 + lid];
        }
        out[a * p.n_dim + n0 + lid] = gated_activation(g, u, p.flags, p.alpha, p.limit);
    }
}

@compute @workgroup_size(64)
fn down(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = linear_workgroup(wid, nwg);
    if (wg >= p.assignments * p.row_groups) {
        return;
    }
    let a = wg / p.row_groups;
    let n0 = p.row_begin + (wg % p.row_groups) * WG_ROWS;
    let e = expert_of(a, lid);
    if (e == SENTINEL || e < p.expert_begin || e >= p.expert_end) {
        return;
    }
    let base = (e - p.expert_begin) * p.expert_stride;
    var acc: array<f32, MAX_ROWS>;
    for (var i = lid; i < p.k_dim; i += WG) {
        let hv = a_in[a * p.k_dim + i];
        for (var r = 0u; r < MAX_ROWS; r++) {
            if (r < WG_ROWS) {
                let n = min(n0 + r, p.row_end - 1u);
                let wi = base + (n - p.row_begin) * p.k_dim + i;
                acc[r] += hv * w0_at(wi);
            }
        }
    }
    for (var r = 0u; r < MAX_ROWS; r++) {
        if (r < WG_ROWS) {
            partial[lid * SLOT_STRIDE + r] = acc[r];
        }
    }
    reduce_partials(lid, WG_ROWS);
    if (lid < WG_ROWS && n0 + lid < p.row_end) {
        var y = partial[lid];
        if ((p.flags & HAS_BIAS) != 0u) {
            y += bias0[e * p.n_dim + n0 + lid];
        }
        out[a * p.n_dim + n0 + lid] = y;
    }
}

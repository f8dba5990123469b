// Router logits: logits[t, r] = sum_i x[t, i] * w[r, i], accumulated in f32 in index order.
// Layout: x [T, d] f32 row-major; w [R, d] weights (WEIGHT_DTYPE); logits [T, R] f32.
// Mapping: one invocation per (t, r), 64 per workgroup, grid split over x/y; weights
// read in runs of RUN (8 where d is a multiple of 8, else 1), summed in index order.
// Also used with R = 1 for the shared expert's sigmoid gate.
//! weights: w

struct RouterParams {
    tokens: u32,
    rows: u32,
    dim: u32,
    _pad: u32,
}

override RUN: u32 = 1u;

@group(0) @binding(0) var<uniform> p: RouterParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> logits: array<f32>;

@compute @workgroup_size(64)
fn router_logits(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_workgroup(wid, nwg) * 64u + lid;
    if (idx >= p.tokens * p.rows) {
        return;
    }
    let t = idx / p.rows;
    let r = idx % p.rows;
    let xb = t * p.dim;
    let wb = r * p.dim;
    var acc = 0.0;
    if (RUN == 1u) {
        for (var i = 0u; i < p.dim; i++) {
            acc += x[xb + i] * w_at(wb + i);
        }
    } else {
        for (var i = 0u; i < p.dim; i += 8u) {
            let v = w_at8(wb + i);
            // In index order, as the RUN = 1 loop.
            let at = xb + i;
            acc += x[at] * v.lo.x;
            acc += x[at + 1u] * v.lo.y;
            acc += x[at + 2u] * v.lo.z;
            acc += x[at + 3u] * v.lo.w;
            acc += x[at + 4u] * v.hi.x;
            acc += x[at + 5u] * v.hi.y;
            acc += x[at + 6u] * v.hi.z;
            acc += x[at + 7u] * v.hi.w;
        }
    }
    logits[idx] = acc;
}

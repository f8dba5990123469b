// Combine: out[t, c] = sum over slots j (in order) of weight[t, j] * y[row(t, j), c],
// plus the shared expert's output (times sigmoid(gate logit) when gated). Fixed
// summation order, no atomics: deterministic.
// Layout: routed_ids, weights, assignment_row [T * k]; y [rows, d]; shared_out [T, d];
// shared_gate [T]; out [T, d]. row(t, j) = assignment_row[t*k + j], or t*k + j when
// identity_rows (decode path); SENTINEL rows (dropped) add nothing. With residual, the
// sum is added times residual_scale into out (the residual stream) instead.
// combine_norm: the same into the residual stream, then the next layer's input norm of
// each updated row: normed[t, c] = out[t, c] / sqrt(mean_c(out[t, c]^2) + eps) *
// norm_weight[c], so that layer records no norm of its own.
// Mapping: combine one invocation per output element, 64 per workgroup; combine_norm
// one 64-invocation workgroup per token, elements strided over the lanes, the sum of
// squares by a fixed-order tree (norm.wgsl's rms_norm: the same sums, bit for bit).

struct CombineParams {
    tokens: u32,
    top_k: u32,
    dim: u32,
    identity_rows: u32,
    shared_mode: u32, // 0 = none, 1 = added as is, 2 = times sigmoid(shared_gate[t])
    residual: u32,
    residual_scale: f32,
    eps: f32, // combine_norm
}

@group(0) @binding(0) var<uniform> p: CombineParams;
@group(0) @binding(1) var<storage, read> routed_ids: array<u32>;
@group(0) @binding(2) var<storage, read> assignment_row: array<u32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
@group(0) @binding(4) var<storage, read> y: array<f32>;
@group(0) @binding(5) var<storage, read> shared_out: array<f32>;
@group(0) @binding(6) var<storage, read> shared_gate: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read> norm_weight: array<f32>; // [d], combine_norm
@group(0) @binding(9) var<storage, read_write> normed: array<f32>; // [T, d], combine_norm

// Output element c of token t: its slots' weighted expert rows and the shared term.
fn combined(t: u32, c: u32) -> f32 {
    var acc = 0.0;
    for (var j = 0u; j < p.top_k; j++) {
        let a = t * p.top_k + j;
        if (routed_ids[a] == SENTINEL) {
            continue;
        }
        let row = select(assignment_row[a], a, p.identity_rows != 0u);
        if (row == SENTINEL) {
            continue;
        }
        acc += weights[a] * y[row * p.dim + c];
    }
    let idx = t * p.dim + c;
    if (p.shared_mode == 1u) {
        acc += shared_out[idx];
    } else if (p.shared_mode == 2u) {
        acc += shared_out[idx] * (1.0 / (1.0 + exp(-shared_gate[t])));
    }
    return acc;
}

@compute @workgroup_size(64)
fn combine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_workgroup(wid, nwg) * 64u + lid;
    if (idx >= p.tokens * p.dim) {
        return;
    }
    var acc = combined(idx / p.dim, idx % p.dim);
    if (p.residual == 1u) {
        acc = out[idx] + p.residual_scale * acc;
    }
    out[idx] = acc;
}

@compute @workgroup_size(64)
fn combine_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = linear_workgroup(wid, nwg);
    if (t >= p.tokens) {
        return;
    }
    let base = t * p.dim;
    var sum = 0.0;
    for (var c = lid; c < p.dim; c += 64u) {
        let v = out[base + c] + p.residual_scale * combined(t, c);
        out[base + c] = v;
        sum += v * v;
    }
    let inv = inverse_rms(workgroup_sum(lid, sum), p.dim, p.eps);
    // Each invocation reads back only the elements it wrote.
    for (var c = lid; c < p.dim; c += 64u) {
        normed[base + c] = out[base + c] * inv * norm_weight[c];
    }
}

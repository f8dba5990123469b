// RMSNorm: y[r, i] = x[r, i] / sqrt(mean_i(x[r, i]^2) + eps) * w[i].
// Layout: x, y [rows, dim] f32; w [dim] f32. Used for the block norms (rows = tokens),
// per-head q/k norms (rows = tokens * heads, dim = head_dim) and whole-projection
// q/k norms (OLMoE).
// Mapping: one 64-invocation workgroup per row; strided partial sums of squares, then a
// fixed-order tree reduction (deterministic).

struct NormParams {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn rms_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_workgroup(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var sum = 0.0;
    for (var i = lid; i < p.dim; i += 64u) {
        let v = x[base + i];
        sum += v * v;
    }
    partial[lid] = sum;
    for (var stride = 32u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            partial[lid] += partial[lid + stride];
        }
    }
    workgroupBarrier();
    let inv = 1.0 / sqrt(partial[0] / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += 64u) {
        y[base + i] = x[base + i] * inv * w[i];
    }
}

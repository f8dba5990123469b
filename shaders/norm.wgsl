// RMSNorm: y[r, i] = x[r, i] / sqrt(mean_i(x[r, i]^2) + eps) * w[i].
// Layout: x, y [rows, dim] f32; w [dim] f32. Used for the block norms (rows = tokens),
// per-head q/k norms (rows = tokens * heads, dim = head_dim) and whole-projection
// q/k norms (OLMoE).
// With rows2 > 0, two norms in one dispatch (a layer's q and k norms): the rows of x
// with w into y, then rows2 rows of x2 [rows2, dim2] with w2 into y2.
// Mapping (rms_norm): one 64-invocation workgroup per row; strided partial sums of
// squares, then a fixed-order tree reduction (deterministic). rms_norm_serial (CPU
// drivers, which pay for each barrier and workgroup): one invocation per row, its
// squares summed in index order, no barriers.

struct NormParams {
    rows: u32,
    dim: u32,
    eps: f32,
    rows2: u32, // rows of x2; 0: x only
    dim2: u32,  // their length
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> x2: array<f32>;
@group(0) @binding(5) var<storage, read> w2: array<f32>;
@group(0) @binding(6) var<storage, read_write> y2: array<f32>;

@compute @workgroup_size(64)
fn rms_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_workgroup(wid, nwg);
    if (row < p.rows) {
        let base = row * p.dim;
        var sum = 0.0;
        for (var i = lid; i < p.dim; i += 64u) {
            let v = x[base + i];
            sum += v * v;
        }
        let inv = inverse_rms(workgroup_sum(lid, sum), p.dim, p.eps);
        for (var i = lid; i < p.dim; i += 64u) {
            y[base + i] = x[base + i] * inv * w[i];
        }
    } else if (row < p.rows + p.rows2) {
        let base = (row - p.rows) * p.dim2;
        var sum = 0.0;
        for (var i = lid; i < p.dim2; i += 64u) {
            let v = x2[base + i];
            sum += v * v;
        }
        let inv = inverse_rms(workgroup_sum(lid, sum), p.dim2, p.eps);
        for (var i = lid; i < p.dim2; i += 64u) {
            y2[base + i] = x2[base + i] * inv * w2[i];
        }
    }
}

// y = rms_norm(x) * w for one row of `dim` elements at `base`, summed in index order.
fn serial_row(base: u32, dim: u32, second: bool) {
    var sum = 0.0;
    for (var i = 0u; i < dim; i++) {
        var v = 0.0;
        if (second) {
            v = x2[base + i];
        } else {
            v = x[base + i];
        }
        sum += v * v;
    }
    let inv = inverse_rms(sum, dim, p.eps);
    for (var i = 0u; i < dim; i++) {
        if (second) {
            y2[base + i] = x2[base + i] * inv * w2[i];
        } else {
            y[base + i] = x[base + i] * inv * w[i];
        }
    }
}

@compute @workgroup_size(64)
fn rms_norm_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_workgroup(wid, nwg) * 64u + lid;
    if (row < p.rows) {
        serial_row(row * p.dim, p.dim, false);
    } else if (row < p.rows + p.rows2) {
        serial_row((row - p.rows) * p.dim2, p.dim2, true);
    }
}

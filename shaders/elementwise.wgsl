// Elementwise updates in place on a [len] f32 buffer `x` (viewed as rows of `cols`):
//   add_scaled:  x[i] += scale * other[i]           (residual add, with a multiplier)
//   add_row_bias: x[i] += other[i % cols]           (linear-layer bias)
//   scale_clamp: x[i] = clamp(x[i] * scale, -limit, limit)  (multipliers, OLMoE clip_qkv)
//   gather_rows: x[r, c] = other[rows[r], c]           (the rows that get logits)
// Mapping: one invocation per element, 64 per workgroup.

struct ElementwiseParams {
    len: u32,
    cols: u32,
    scale: f32,
    limit: f32,
}

@group(0) @binding(0) var<uniform> p: ElementwiseParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> other: array<f32>;
@group(0) @binding(3) var<storage, read> rows: array<u32>;

fn element_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return linear_workgroup(wid, nwg) * 64u + lid;
}

@compute @workgroup_size(64)
fn add_scaled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = element_index(wid, nwg, lid);
    if (i < p.len) {
        x[i] += p.scale * other[i];
    }
}

@compute @workgroup_size(64)
fn add_row_bias(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = element_index(wid, nwg, lid);
    if (i < p.len) {
        x[i] += other[i % p.cols];
    }
}

@compute @workgroup_size(64)
fn scale_clamp(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = element_index(wid, nwg, lid);
    if (i < p.len) {
        x[i] = clamp(x[i] * p.scale, -p.limit, p.limit);
    }
}

@compute @workgroup_size(64)
fn gather_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = element_index(wid, nwg, lid);
    if (i < p.len) {
        x[i] = other[rows[i / p.cols] * p.cols + i % p.cols];
    }
}

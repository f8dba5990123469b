// Token embedding lookup: x[t, c] = table[ids[t], c] * scale.
// Layout: ids [T] u32 (checked < vocab on the host); the table [vocab, d] (WEIGHT_DTYPE)
// is split into chunks of rows: this dispatch holds rows row_begin..row_end and writes
// only the tokens whose id falls there; x [T, d] f32.
// Mapping: one invocation per run of RUN output elements (8 where d is a multiple of 8,
// decoded together: one scale read per run for block formats; else 1), 64 per workgroup.
//! weights: table

struct EmbeddingParams {
    tokens: u32,
    dim: u32,
    scale: f32,
    row_begin: u32,
    row_end: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override RUN: u32 = 1u;

@group(0) @binding(0) var<uniform> p: EmbeddingParams;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn embed(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (linear_workgroup(wid, nwg) * 64u + lid) * RUN;
    if (idx >= p.tokens * p.dim) {
        return;
    }
    let id = ids[idx / p.dim];
    if (id < p.row_begin || id >= p.row_end) {
        return;
    }
    let wi = (id - p.row_begin) * p.dim + idx % p.dim;
    if (RUN == 1u) {
        x[idx] = table_at(wi) * p.scale;
        return;
    }
    let v = table_at8(wi);
    let lo = v.lo * p.scale;
    let hi = v.hi * p.scale;
    x[idx] = lo.x;
    x[idx + 1u] = lo.y;
    x[idx + 2u] = lo.z;
    x[idx + 3u] = lo.w;
    x[idx + 4u] = hi.x;
    x[idx + 5u] = hi.y;
    x[idx + 6u] = hi.z;
    x[idx + 7u] = hi.w;
}

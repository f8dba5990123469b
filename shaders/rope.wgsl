// Rotary position embedding, in place, rotate-half (GPT-NeoX / HF Llama) layout:
// for i < rot/2 at token t's position pos = positions[t].position:
//   x[i]         = x[i] * cos - x[i + rot/2] * sin
//   x[i + rot/2] = x[i + rot/2] * cos + x[i] * sin
// Dimensions rot..head_dim are left alone (partial rotary).
// Layout: x [T, heads, head_dim] f32; positions [T] (slot, position) u32; table [positions, rot/2, 2] f32 = (cos, sin),
// computed on the CPU the way transformers does (f32 inv_freq * position), or with by_token
// [T, rot/2, 2] rows written for this step (dynamic NTK, whose angles depend on the step).
// A second tensor y [T, heads2, head_dim] (the keys, beside the queries in x) rotates in
// the same dispatch when heads2 > 0: token t's heads run x's then y's.
// Mapping: one invocation per (t, head, i) over heads + heads2 heads, 64 per workgroup.

struct RopeParams {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    half_rot: u32,
    interleaved: u32, // 1: pairs (2i, 2i + 1) (llama.cpp's layout for llama-style GGUF files)
    by_token: u32,    // 1: table row t for token t, else row positions[t].position
    heads2: u32,      // heads of y; 0: x only
    _pad: u32,
}


@group(0) @binding(0) var<uniform> p: RopeParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read> positions: array<u32>; // [T] x (slot, position)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// The pair (x1, x2) rotated by (cos, sin) = cs.
fn rotate(x1: f32, x2: f32, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(x1 * cs.x - x2 * cs.y, x2 * cs.x + x1 * cs.y);
}

@compute @workgroup_size(64)
fn rope(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_workgroup(wid, nwg) * 64u + lid;
    let heads = p.heads + p.heads2;
    if (idx >= p.tokens * heads * p.half_rot) {
        return;
    }
    let i = idx % p.half_rot;
    let th = idx / p.half_rot; // t * (heads + heads2) + head
    let t = th / heads;
    let head = th % heads;
    let row = select(positions[2u * t + 1u], t, p.by_token != 0u);
    let entry = (row * p.half_rot + i) * 2u;
    let cs = vec2<f32>(table[entry], table[entry + 1u]);
    var a = i;
    var b = i + p.half_rot;
    if (p.interleaved != 0u) {
        a = 2u * i;
        b = a + 1u;
    }
    if (head < p.heads) {
        let base = (t * p.heads + head) * p.head_dim;
        let r = rotate(x[base + a], x[base + b], cs);
        x[base + a] = r.x;
        x[base + b] = r.y;
    } else {
        let base = (t * p.heads2 + head - p.heads) * p.head_dim;
        let r = rotate(y[base + a], y[base + b], cs);
        y[base + a] = r.x;
        y[base + b] = r.y;
    }
}

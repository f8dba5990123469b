// Rotary position embedding, in place, rotate-half (GPT-NeoX / HF Llama) layout:
// for i < rot/2 at token t's position pos = positions[t].position:
//   x[i]         = x[i] * cos - x[i + rot/2] * sin
//   x[i + rot/2] = x[i + rot/2] * cos + x[i] * sin
// Dimensions rot..head_dim are left alone (partial rotary).
// Layout: x [T, heads, head_dim] f32; positions [T] (slot, position) u32; table [positions, rot/2, 2] f32 = (cos, sin),
// computed on the CPU the way transformers does (f32 inv_freq * position), or with by_token
// [T, rot/2, 2] rows written for this step (dynamic NTK, whose angles depend on the step).
// Mapping: one invocation per (t, head, i), 64 per workgroup.

struct RopeParams {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    half_rot: u32,
    interleaved: u32, // 1: pairs (2i, 2i + 1) (llama.cpp's layout for llama-style GGUF files)
    by_token: u32,    // 1: table row t for token t, else row positions[t].position
    _pad1: u32,
    _pad2: u32,
}


@group(0) @binding(0) var<uniform> p: RopeParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read> positions: array<u32>; // [T] x (slot, position)

@compute @workgroup_size(64)
fn rope(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_workgroup(wid, nwg) * 64u + lid;
    if (idx >= p.tokens * p.heads * p.half_rot) {
        return;
    }
    let i = idx % p.half_rot;
    let th = idx / p.half_rot; // t * heads + head
    let t = th / p.heads;
    let base = th * p.head_dim;
    let row = select(positions[2u * t + 1u], t, p.by_token != 0u);
    let entry = (row * p.half_rot + i) * 2u;
    let c = table[entry];
    let s = table[entry + 1u];
    var a = base + i;
    var b = base + i + p.half_rot;
    if (p.interleaved != 0u) {
        a = base + 2u * i;
        b = a + 1u;
    }
    let x1 = x[a];
    let x2 = x[b];
    x[a] = x1 * c - x2 * s;
    x[b] = x2 * c + x1 * s;
}

// Arithmetic ceiling probe: each invocation runs ITERATIONS rounds of 8 independent
// vec4 FMAs (64 FLOPs a round) on values seeded from its index, then writes one sum
// so the work cannot be optimised away.
// Layout: out [invocations] f32. Mapping: 256 invocations per workgroup, grid over x/y.

struct BenchParams {
    invocations: u32,
    iterations: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: BenchParams;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn fma_f32(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= p.invocations) {
        return;
    }
    let s = f32(i) * 1e-7;
    var a0 = vec4<f32>(s, s + 0.1, s + 0.2, s + 0.3);
    var a1 = a0 + 0.01;
    var a2 = a0 + 0.02;
    var a3 = a0 + 0.03;
    var a4 = a0 + 0.04;
    var a5 = a0 + 0.05;
    var a6 = a0 + 0.06;
    var a7 = a0 + 0.07;
    let m = vec4<f32>(0.9999);
    let c = vec4<f32>(1e-4);
    for (var k = 0u; k < p.iterations; k++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    let t = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    out[i] = t.x + t.y + t.z + t.w;
}

// Shader read bandwidth probe: invocation i sums src[i], src[i + stride], ... (vec4
// loads, consecutive invocations on consecutive vectors, stride = the whole grid) and
// writes one value, so every byte of src is read once through the shader path.
// Layout: src [vectors] vec4<f32>; out [invocations] f32 (p.invocations; p.iterations
// holds the number of vectors). Mapping: 256 invocations per workgroup, grid over x/y.
@group(0) @binding(2) var<storage, read> src: array<vec4<f32>>;

@compute @workgroup_size(256)
fn read_f32(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= p.invocations) {
        return;
    }
    var acc = vec4<f32>(0.0);
    for (var v = i; v < p.iterations; v += p.invocations) {
        acc += src[v];
    }
    out[i] = acc.x + acc.y + acc.z + acc.w;
}

enable f16;

// Half-precision arithmetic ceiling probe (only built where the adapter has shader-f16):
// each invocation runs ITERATIONS rounds of 8 independent vec4<f16> FMAs (64 FLOPs a
// round), then writes one sum. Layout: out [invocations] f32. Mapping: 256 invocations
// per workgroup, grid over x/y.

struct BenchParams {
    invocations: u32,
    iterations: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: BenchParams;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn fma_f16(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_workgroup(wid, nwg) * 256u + lid;
    if (i >= p.invocations) {
        return;
    }
    let s = f16(f32(i % 1024u) * 1e-4);
    var a0 = vec4<f16>(s, s + 0.1h, s + 0.2h, s + 0.3h);
    var a1 = a0 + 0.01h;
    var a2 = a0 + 0.02h;
    var a3 = a0 + 0.03h;
    var a4 = a0 + 0.04h;
    var a5 = a0 + 0.05h;
    var a6 = a0 + 0.06h;
    var a7 = a0 + 0.07h;
    let m = vec4<f16>(0.999h);
    let c = vec4<f16>(0.001h);
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
    let t = vec4<f32>(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7);
    out[i] = t.x + t.y + t.z + t.w;
}

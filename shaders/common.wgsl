// Helpers the host prepends to every kernel file of shaders/ (see src/gpu/kernel.rs).

// Weight format of the arrays this kernel decodes (see weight_access.wgsl).
override WEIGHT_DTYPE: u32 = 0u;

// "No expert / no row": padded or dropped entries of index buffers.
const SENTINEL: u32 = 0xffffffffu;

// Linear workgroup index of a grid split over x and y (x <= 65535).
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

var<workgroup> tree_sums: array<f32, 64>;

// The sum of `value` over a 64-invocation workgroup by a fixed-order tree (so
// deterministic), for every invocation. Call from uniform control flow.
fn workgroup_sum(lid: u32, value: f32) -> f32 {
    tree_sums[lid] = value;
    for (var stride = 32u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            tree_sums[lid] += tree_sums[lid + stride];
        }
    }
    workgroupBarrier();
    let total = tree_sums[0];
    // No invocation may start another sum before all have read this one.
    workgroupBarrier();
    return total;
}

// RMSNorm's scale of a row of `dim` elements whose squares sum to `squares`:
// 1 / sqrt(mean + eps). Every norm kernel takes it from here, so they agree bit for bit
// where their sums do.
fn inverse_rms(squares: f32, dim: u32, eps: f32) -> f32 {
    return 1.0 / sqrt(squares / f32(dim) + eps);
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

// Bits of the expert matmuls' `flags`: per-expert biases on the outputs, the gate/up
// activation, and (down) a residual add: out += residual_scale * y instead of out = y.
const HAS_BIAS: u32 = 1u;
const CLAMPED_SWIGLU: u32 = 2u;
const RESIDUAL: u32 = 4u;

// The gated activation of gate g and up u: SwiGLU silu(g) * u, or gpt-oss's clamped
// form g' sigmoid(alpha g') (u' + 1) with g' = min(g, limit), u' = clamp(u, -limit, limit).
fn gated_activation(g: f32, u: f32, flags: u32, alpha: f32, limit: f32) -> f32 {
    if ((flags & CLAMPED_SWIGLU) != 0u) {
        let gc = min(g, limit);
        let uc = clamp(u, -limit, limit);
        return gc / (1.0 + exp(-alpha * gc)) * (uc + 1.0);
    }
    return silu(g) * u;
}

// Eight consecutive values (a run of weights or inputs): elements 0..3 in lo, 4..7 in hi.
struct Run8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// Thirty-two consecutive values: four runs of 8, in order.
struct Run32 {
    r0: Run8,
    r1: Run8,
    r2: Run8,
    r3: Run8,
}

// Element j (0..8) of a run.
fn run8_at(r: Run8, j: u32) -> f32 {
    if (j < 4u) {
        return r.lo[j];
    }
    return r.hi[j - 4u];
}

// What a run decoder reads once per 32 elements (weight_access.wgsl's WEIGHTS_scales):
// scales a and b and bits, their meaning set by the format.
struct RunScales {
    a: f32,
    b: f32,
    bits: u32,
}

// Block bytes of q4_1 (9), q5_0 (10) and q5_1 (11).
fn q_legacy_block_bytes() -> u32 {
    return select(select(24u, 22u, WEIGHT_DTYPE == 10u), 20u, WEIGHT_DTYPE == 9u);
}

// The run as an array (for loops over RUN = 1 or 8 elements).
fn run8_array(r: Run8) -> array<f32, 8> {
    return array<f32, 8>(r.lo.x, r.lo.y, r.lo.z, r.lo.w, r.hi.x, r.hi.y, r.hi.z, r.hi.w);
}

// Helpers of weight_access.wgsl's run decoders, on the 4 bytes of `word` (byte 0 in the
// low 8 bits), one lane per byte.
const BYTE_SHIFTS: vec4<u32> = vec4<u32>(0u, 8u, 16u, 24u);

// The 4 bits at `shift` of each byte.
fn nibbles(word: u32, shift: u32) -> vec4<u32> {
    return (vec4<u32>(word) >> (BYTE_SHIFTS + vec4<u32>(shift))) & vec4<u32>(15u);
}

// The bits `mask` at `shift` of each byte.
fn byte_bits(word: u32, shift: u32, mask: u32) -> vec4<u32> {
    return (vec4<u32>(word) >> (BYTE_SHIFTS + vec4<u32>(shift))) & vec4<u32>(mask);
}

// Each byte as a signed 8-bit integer.
fn signed_bytes(word: u32) -> vec4<i32> {
    return bitcast<vec4<i32>>(vec4<u32>(word) << (vec4<u32>(24u) - BYTE_SHIFTS)) >> vec4<u32>(24u);
}

// bf16 pairs: words (w, w, v, v) to the f32 bits of (w.low, w.high, v.low, v.high).
fn bf16_pairs(words: vec4<u32>) -> vec4<u32> {
    return select(words << vec4<u32>(16u), words & vec4<u32>(0xffff0000u), vec4<bool>(false, true, false, true));
}

// Doubled e2m1 values of nibbles q (sign bit 3, exponent bits 2..1, mantissa bit 0):
// 0, 1, 2, 3, 4, 6, 8, 12, negated when the sign is set; nibble 8 is +0 (as ggml's table).
fn doubled_e2m1(q: vec4<u32>) -> vec4<f32> {
    let m = q & vec4<u32>(1u);
    let e = (q >> vec4<u32>(1u)) & vec4<u32>(3u);
    let normal = (vec4<u32>(2u) + m) << (max(e, vec4<u32>(1u)) - vec4<u32>(1u));
    let magnitude = vec4<i32>(select(m, normal, e > vec4<u32>(0u)));
    return vec4<f32>(select(magnitude, -magnitude, (q & vec4<u32>(8u)) != vec4<u32>(0u)));
}

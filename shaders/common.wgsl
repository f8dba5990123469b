// Helpers the host prepends to every kernel file of shaders/ (see src/gpu/kernel.rs).

// Weight format of the arrays this kernel decodes (see weight_access.wgsl).
override WEIGHT_DTYPE: u32 = 0u;

// "No expert / no row": padded or dropped entries of index buffers.
const SENTINEL: u32 = 0xffffffffu;

// Linear workgroup index of a grid split over x and y (x <= 65535).
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

// Bits of the expert matmuls' `flags`: per-expert biases on the outputs, and the
// gate/up activation.
const HAS_BIAS: u32 = 1u;
const CLAMPED_SWIGLU: u32 = 2u;

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

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

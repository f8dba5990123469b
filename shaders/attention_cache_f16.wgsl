// KV caches of f16 elements, two to a u32 word (pack2x16float / unpack2x16float are
// core WGSL: no shader-f16 feature, so this runs in every browser): composed into
// attention.wgsl and attention_inputs.wgsl at their `//! part: attention_cache` line.
// Half the bytes of f32 for the cache and for every read of it; a quad (4 elements) is
// one vec2<u32> load.

const ELEMENTS_PER_WORD: u32 = 2u;
const F16_MAX: f32 = 65504.0;

@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;
// The caches again, as rows of quads (a cache row is head_dim rounded up to a
// multiple of 4, the padding zeros).
@group(0) @binding(10) var<storage, read> k_rows: array<vec2<u32>>;
@group(0) @binding(11) var<storage, read> v_rows: array<vec2<u32>>;

// A cache word of elements (pair.x, pair.y); values past f16's range are clamped
// to it (pack2x16float leaves them indeterminate).
fn cache_word(pair: vec2<f32>) -> u32 {
    return pack2x16float(clamp(pair, vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX)));
}

fn key_quad(i: u32) -> vec4<f32> {
    let w = k_rows[i];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn value_quad(i: u32) -> vec4<f32> {
    let w = v_rows[i];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

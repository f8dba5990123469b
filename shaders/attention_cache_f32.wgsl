// KV caches of f32 elements: composed into attention.wgsl and attention_inputs.wgsl
// at their `//! part: attention_cache` line. A word is one element; a quad is a vec4 load.

const ELEMENTS_PER_WORD: u32 = 1u;

@group(0) @binding(2) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<f32>;
// The caches again, as rows of vec4 (a cache row is head_dim rounded up to a
// multiple of 4, the padding zeros).
@group(0) @binding(10) var<storage, read> k_rows: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> v_rows: array<vec4<f32>>;

// A cache word: element pair.x (pair.y is the next word's).
fn cache_word(pair: vec2<f32>) -> f32 {
    return pair.x;
}

fn key_quad(i: u32) -> vec4<f32> {
    return k_rows[i];
}

fn value_quad(i: u32) -> vec4<f32> {
    return v_rows[i];
}

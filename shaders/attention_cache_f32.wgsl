// KV caches of f32 elements: composed into attention.wgsl at its
// `//! part: attention_cache` line. A word is one element; a quad is a vec4 load.

const ELEMENTS_PER_WORD: u32 = 1u;

@group(0) @binding(2) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<f32>;
// The caches again, as rows of vec4 (a cache row is head_dim rounded up to a
// multiple of 4, the padding zeros).
@group(0) @binding(10) var<storage, read> k_rows: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> v_rows: array<vec4<f32>>;

// Element d of its head (k_new / v_new[src]) to cache word dst.
fn store_word(dst: u32, src: u32, d: u32) {
    k_cache[dst] = k_new[src];
    if (p.latent == 0u) {
        v_cache[dst] = v_new[src];
    }
}

fn key_quad(i: u32) -> vec4<f32> {
    return k_rows[i];
}

fn value_quad(i: u32) -> vec4<f32> {
    return v_rows[i];
}

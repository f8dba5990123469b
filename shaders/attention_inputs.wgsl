// Attention's inputs for a step of grouped-query attention, after the q/k/v
// projections, in one dispatch. For token t at (slot s_t, position p_t):
//   query head h:  q_out[t, h]               = rope(clip(norm_q(q[t, h])))
//   kv head g:     k_cache[s_t, g, p_t]      = rope(clip(norm_k(k[t, g])))
//                  v_cache[s_t, g, p_t]      = clip(v[t, g])
// norm_* is the per-head RMSNorm when has_norm (x / sqrt(mean(x^2) + eps) * w, w
// [head_dim]; Qwen3's q/k norms), clip a clamp to [-clip, clip] when clip > 0 (OLMoE's
// clip_qkv), rope as rope.wgsl's (pairs (i, i + rot/2), or (2i, 2i + 1) when
// interleaved; (cos, sin) from the table row of the token's position, or row t when
// by_token; elements rot.. left alone). It replaces the separate q/k norm, clamp, rope
// and kv_store dispatches: every output element is computed from the inputs alone
// (its own and its RoPE partner's), so queries go to their own output and keys and
// values straight into the caches.
// Inputs: q, k, v element e of head h at offset + t * stride + h * head_dim of bindings
// 1, 4, 5: one fused [T, qw + 2 kvw] projection bound three times, or three tensors.
// Caches as attention.wgsl's kv_store writes them ([slots, kv_heads, max_ctx, row], row
// = head_dim rounded up to a multiple of 4, the padding left zero); a token whose
// (slot, position) lies outside the cache stores nothing.
// Mapping: rope_store one 64-invocation workgroup per (t, head slot) over heads +
// kv_heads slots (query heads, then kv heads: a kv slot writes the key and the value),
// lanes over elements / cache words; the norm's sum of squares strided over the lanes,
// then a fixed-order tree (norm.wgsl's rms_norm). rope_store_serial (CPU drivers, which
// pay for each barrier and workgroup): one invocation per (t, head slot), squares summed
// in index order (rms_norm_serial), no barriers.

struct InputsParams {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_ctx: u32,
    slots: u32,
    half_rot: u32,
    interleaved: u32, // 1: pairs (2i, 2i + 1)
    by_token: u32,    // 1: table row t for token t, else row positions[t].position
    has_norm: u32,    // 1: per-head RMSNorm of queries and keys with q_norm / k_norm
    eps: f32,
    clip: f32, // > 0: clamp q, k and v to [-clip, clip]
    q_offset: u32,
    q_stride: u32,
    k_offset: u32,
    k_stride: u32,
    v_offset: u32,
    v_stride: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: InputsParams;
@group(0) @binding(1) var<storage, read> q_in: array<f32>;
@group(0) @binding(4) var<storage, read> k_in: array<f32>;
@group(0) @binding(5) var<storage, read> v_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> q_out: array<f32>; // [T, heads * head_dim]
@group(0) @binding(7) var<storage, read> table: array<f32>;       // [rows, rot/2, 2] (cos, sin)
@group(0) @binding(8) var<storage, read> positions: array<u32>;   // [T] x (slot, position)
@group(0) @binding(9) var<storage, read> q_norm: array<f32>;      // [head_dim], read when has_norm
@group(0) @binding(12) var<storage, read> k_norm: array<f32>;     // [head_dim], read when has_norm

// The caches (2, 3: k_cache, v_cache in words of ELEMENTS_PER_WORD elements) and
// cache_word(pair), as attention.wgsl composes them (f32 or f16).
//! part: attention_cache

const QUERY: u32 = 0u;
const KEY: u32 = 1u;
const VALUE: u32 = 2u;

// Element e of head h of token t in input `which`.
fn input(which: u32, t: u32, h: u32, e: u32) -> f32 {
    switch which {
        case 0u: {
            return q_in[p.q_offset + t * p.q_stride + h * p.head_dim + e];
        }
        case 1u: {
            return k_in[p.k_offset + t * p.k_stride + h * p.head_dim + e];
        }
        default: {
            return v_in[p.v_offset + t * p.v_stride + h * p.head_dim + e];
        }
    }
}

// Element e after the norm (queries and keys, scaled by their row's inverse RMS `inv`)
// and the clamp.
fn prepared(which: u32, t: u32, h: u32, e: u32, inv: f32) -> f32 {
    var x = input(which, t, h, e);
    if (p.has_norm != 0u && which != VALUE) {
        x = x * inv * select(k_norm[e], q_norm[e], which == QUERY);
    }
    if (p.clip > 0.0) {
        x = clamp(x, -p.clip, p.clip);
    }
    return x;
}

// Element e of the output row: prepared, then rotated with its pair's other element
// (queries and keys below rot; values pass through).
fn element(which: u32, t: u32, h: u32, e: u32, inv: f32) -> f32 {
    let x = prepared(which, t, h, e, inv);
    if (which == VALUE || e >= 2u * p.half_rot) {
        return x;
    }
    var i = e;
    var partner = e + p.half_rot;
    var first = true;
    if (p.interleaved != 0u) {
        i = e / 2u;
        first = e % 2u == 0u;
        partner = select(e - 1u, e + 1u, first);
    } else if (e >= p.half_rot) {
        i = e - p.half_rot;
        partner = i;
        first = false;
    }
    let row = select(positions[2u * t + 1u], t, p.by_token != 0u);
    let entry = (row * p.half_rot + i) * 2u;
    let cs = vec2<f32>(table[entry], table[entry + 1u]);
    let y = prepared(which, t, h, partner, inv);
    // rope.wgsl's rotate(): (x1 c - x2 s, x2 c + x1 s).
    if (first) {
        return x * cs.x - y * cs.y;
    }
    return x * cs.x + y * cs.y;
}

// Whether token t's (slot, position) lies inside the cache.
fn placed(t: u32) -> bool {
    return positions[2u * t] < p.slots && positions[2u * t + 1u] < p.max_ctx;
}

// Kv head g's key and value of token t into the caches, words first, first + step, ...
fn store_head(t: u32, g: u32, first: u32, step: u32, inv: f32) {
    if (!placed(t)) {
        return;
    }
    let words = (p.head_dim + ELEMENTS_PER_WORD - 1u) / ELEMENTS_PER_WORD;
    let row_words = (p.head_dim + 3u) / 4u * 4u / ELEMENTS_PER_WORD;
    let base = ((positions[2u * t] * p.kv_heads + g) * p.max_ctx + positions[2u * t + 1u]) * row_words;
    for (var w = first; w < words; w += step) {
        let e = w * ELEMENTS_PER_WORD;
        var k = vec2<f32>(element(KEY, t, g, e, inv), 0.0);
        var v = vec2<f32>(element(VALUE, t, g, e, inv), 0.0);
        if (ELEMENTS_PER_WORD == 2u && e + 1u < p.head_dim) {
            k.y = element(KEY, t, g, e + 1u, inv);
            v.y = element(VALUE, t, g, e + 1u, inv);
        }
        k_cache[base + w] = cache_word(k);
        v_cache[base + w] = cache_word(v);
    }
}

// (which, head) of head slot `slot`: query heads first, then kv heads.
fn slot_head(slot: u32) -> vec2<u32> {
    if (slot < p.heads) {
        return vec2<u32>(QUERY, slot);
    }
    return vec2<u32>(KEY, slot - p.heads);
}

// Token t's head slot row's sum of squares over elements first, first + step, ...
fn sum_of_squares(head: vec2<u32>, t: u32, first: u32, step: u32) -> f32 {
    var sum = 0.0;
    for (var e = first; e < p.head_dim; e += step) {
        let x = input(head.x, t, head.y, e);
        sum += x * x;
    }
    return sum;
}

// Token t's head slot row, elements (or cache words) first, first + step, ...: a query
// head's into q_out, a kv head's key and value into the caches.
fn write_row(head: vec2<u32>, t: u32, first: u32, step: u32, inv: f32) {
    if (head.x == QUERY) {
        for (var e = first; e < p.head_dim; e += step) {
            q_out[(t * p.heads + head.y) * p.head_dim + e] = element(QUERY, t, head.y, e, inv);
        }
    } else {
        store_head(t, head.y, first, step, inv);
    }
}

@compute @workgroup_size(64)
fn rope_store(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let slots = p.heads + p.kv_heads;
    let index = linear_workgroup(wid, nwg);
    if (index >= p.tokens * slots) {
        return;
    }
    let t = index / slots;
    let head = slot_head(index % slots);
    var inv = 1.0;
    if (p.has_norm != 0u) {
        inv = inverse_rms(workgroup_sum(lid, sum_of_squares(head, t, lid, 64u)), p.head_dim, p.eps);
    }
    write_row(head, t, lid, 64u, inv);
}

@compute @workgroup_size(64)
fn rope_store_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let slots = p.heads + p.kv_heads;
    let index = linear_workgroup(wid, nwg) * 64u + lid;
    if (index >= p.tokens * slots) {
        return;
    }
    let t = index / slots;
    let head = slot_head(index % slots);
    var inv = 1.0;
    if (p.has_norm != 0u) {
        inv = inverse_rms(sum_of_squares(head, t, 0u, 1u), p.head_dim, p.eps);
    }
    write_row(head, t, 0u, 1u, inv);
}

// Causal attention with a KV cache of several sequences (slots) and grouped-query heads.
// Token t belongs to sequence slot s_t at position p_t: positions [T] = (s_t, p_t), so one
// step may hold a prompt chunk of one sequence, or one token of each of many sequences
// of different lengths (continuous batching).
// kv_store: copies this step's k, v [T, kv_heads * head_dim] into the caches
//   [slots, kv_heads, max_ctx, head_dim] at (s_t, p_t).
// attend: out[t, h] = sum_j softmax_j(scale * q[t, h] . k[s_t, j, h / group]) v[s_t, j, h / group]
//   over cache positions j <= p_t, or with a sliding window (window > 0) only
//   p_t - window < j <= p_t. With sinks (has_sinks), the softmax of head h also holds
//   the logit sinks[h] (not scaled): it enters the max and the sum but has no value,
//   so it only takes probability mass (gpt-oss). Tokens past the cache (slot or
//   position) are skipped (the host refuses them first). Scores and then
//   probabilities go through the `scores` scratch [T * heads, max_ctx]; max and sum
//   by fixed-order tree reductions, the weighted sum of values in position order:
//   deterministic.
// Latent caches (MLA, latent = 1): one kv head whose key is [latent, RoPE key] and whose
//   value is the key's first value_dim elements; no value cache is written or read.
//   out is [T, heads * value_dim].
// Mapping: kv_store one invocation per element of k; attend one 64-invocation
// workgroup per (t, head).

struct AttentionParams {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_ctx: u32,
    scale: f32,
    slots: u32,
    has_sinks: u32, // 1: sinks holds [heads] logits; 0: sinks is a dummy, not read
    window: u32,    // sliding window in positions; 0 = full causal
    value_dim: u32, // values per head (head_dim, or the latent width of a latent cache)
    latent: u32,    // 1: values are the first value_dim elements of each key (MLA)
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: AttentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> k_new: array<f32>;
@group(0) @binding(7) var<storage, read> v_new: array<f32>;
@group(0) @binding(8) var<storage, read> positions: array<u32>; // [T] x (slot, position)
@group(0) @binding(9) var<storage, read> sinks: array<f32>; // [heads], read when p.has_sinks == 1

// Whether token t's (slot, position) lies inside the cache.
fn placed(t: u32) -> bool {
    return positions[2u * t] < p.slots && positions[2u * t + 1u] < p.max_ctx;
}

@compute @workgroup_size(64)
fn kv_store(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_workgroup(wid, nwg) * 64u + lid;
    let width = p.kv_heads * p.head_dim;
    if (idx >= p.tokens * width) {
        return;
    }
    let t = idx / width;
    let kvh = (idx % width) / p.head_dim;
    let d = idx % p.head_dim;
    if (!placed(t)) {
        return;
    }
    let slot = positions[2u * t];
    let dst = ((slot * p.kv_heads + kvh) * p.max_ctx + positions[2u * t + 1u]) * p.head_dim + d;
    k_cache[dst] = k_new[idx];
    if (p.latent == 0u) {
        v_cache[dst] = v_new[idx];
    }
}

var<workgroup> partial: array<f32, 64>;
var<workgroup> row_slot: u32;
var<workgroup> row_position: u32;

// Tree reduction of partial[0..64] with max (use_max) or sum; result for all invocations.
fn reduce(lid: u32, use_max: bool) -> f32 {
    for (var stride = 32u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            let a = partial[lid];
            let b = partial[lid + stride];
            partial[lid] = select(a + b, max(a, b), use_max);
        }
    }
    workgroupBarrier();
    let r = partial[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn attend(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let th = linear_workgroup(wid, nwg);
    if (th >= p.tokens * p.heads) {
        return;
    }
    let t = th / p.heads;
    // (slot, position) made workgroup-uniform, as the reductions below need.
    if (lid == 0u) {
        row_slot = positions[2u * t];
        row_position = positions[2u * t + 1u];
    }
    let slot = workgroupUniformLoad(&row_slot);
    let pos = workgroupUniformLoad(&row_position);
    if (slot >= p.slots || pos >= p.max_ctx) {
        return;
    }
    let h = th % p.heads;
    let kvh = h / (p.heads / p.kv_heads);
    let keys = pos + 1u;
    // First position in the window (p_t + 1 - window, written so as not to wrap below 0).
    let start = select(0u, keys - p.window, p.window > 0u && keys > p.window);
    let qb = th * p.head_dim;
    let cache_base = (slot * p.kv_heads + kvh) * p.max_ctx * p.head_dim;
    let sb = th * p.max_ctx;

    var local_max = -3.0e38;
    for (var j = start + lid; j < keys; j += 64u) {
        var s = 0.0;
        let kb = cache_base + j * p.head_dim;
        for (var d = 0u; d < p.head_dim; d++) {
            s += q[qb + d] * k_cache[kb + d];
        }
        s *= p.scale;
        scores[sb + j] = s;
        local_max = max(local_max, s);
    }
    partial[lid] = local_max;
    var m = reduce(lid, true);
    let has_sink = p.has_sinks != 0u;
    var sink = 0.0;
    if (has_sink) {
        sink = sinks[h];
        m = max(m, sink);
    }

    var local_sum = 0.0;
    for (var j = start + lid; j < keys; j += 64u) {
        let e = exp(scores[sb + j] - m);
        scores[sb + j] = e;
        local_sum += e;
    }
    partial[lid] = local_sum;
    var total = reduce(lid, false);
    if (has_sink) {
        total += exp(sink - m);
    }
    storageBarrier();

    for (var d = lid; d < p.value_dim; d += 64u) {
        var acc = 0.0;
        if (p.latent != 0u) {
            for (var j = start; j < keys; j++) {
                acc += scores[sb + j] * k_cache[cache_base + j * p.head_dim + d];
            }
        } else {
            for (var j = start; j < keys; j++) {
                acc += scores[sb + j] * v_cache[cache_base + j * p.head_dim + d];
            }
        }
        out[th * p.value_dim + d] = acc / total;
    }
}

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
//   position) are skipped (the host refuses them first).
//   An online softmax over blocks of 256 positions (flash attention): per block the
//   scores' max by a fixed-order tree, the running max, sum and value sums rescaled
//   by exp(old max - new max), the weighted values added in position order. Blocks
//   start at multiples of 256 positions whatever the step holds, so a token's output
//   depends only on its own sequence: deterministic and the same in any batch. No
//   scratch grows with the context.
// Latent caches (MLA, latent = 1): one kv head whose key is [latent, RoPE key] and whose
//   value is the key's first value_dim elements; no value cache is written or read.
//   out is [T, heads * value_dim].
// Mapping: kv_store one invocation per element of k; attend one 64-invocation
// workgroup per (t, head): invocation i scores positions i, i + 64, i + 128, i + 192 of
// each block and owns the value sums of elements d = i (mod 64) (value_dim <= 1024).

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

const BLOCK: u32 = 256u;
const MAX_VALUE_DIM: u32 = 1024u;
const NO_SCORE: f32 = -3.0e38;

var<workgroup> partial: array<f32, 64>;
var<workgroup> probs: array<f32, 256>; // BLOCK
var<workgroup> value_sums: array<f32, 1024>; // MAX_VALUE_DIM
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

// scale * q . k at cache position j (keys from cache_base), or NO_SCORE outside [start, keys).
fn masked_score(qb: u32, cache_base: u32, j: u32, start: u32, keys: u32) -> f32 {
    if (j < start || j >= keys) {
        return NO_SCORE;
    }
    var s = 0.0;
    let kb = cache_base + j * p.head_dim;
    for (var d = 0u; d < p.head_dim; d++) {
        s += q[qb + d] * k_cache[kb + d];
    }
    return s * p.scale;
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
    for (var d = lid; d < p.value_dim; d += 64u) {
        value_sums[d] = 0.0;
    }

    var m = NO_SCORE; // running max (uniform)
    var sum = 0.0; // this invocation's share of the running sum of exp(score - m)
    for (var block = start - start % BLOCK; block < keys; block += BLOCK) {
        // Four positions per invocation; those outside [start, keys) score NO_SCORE.
        let j = block + lid;
        let s = vec4<f32>(
            masked_score(qb, cache_base, j, start, keys),
            masked_score(qb, cache_base, j + 64u, start, keys),
            masked_score(qb, cache_base, j + 128u, start, keys),
            masked_score(qb, cache_base, j + 192u, start, keys),
        );
        partial[lid] = max(max(s.x, s.y), max(s.z, s.w));
        let m_new = max(m, reduce(lid, true));
        let rescale = exp(m - m_new);
        // exp(NO_SCORE - m_new) is 0: positions outside the window take no mass.
        let e = exp(s - vec4<f32>(m_new));
        probs[lid] = e.x;
        probs[lid + 64u] = e.y;
        probs[lid + 128u] = e.z;
        probs[lid + 192u] = e.w;
        sum = sum * rescale + ((e.x + e.y) + (e.z + e.w));
        m = m_new;
        workgroupBarrier();
        let first = max(start, block) - block;
        let end = min(keys - block, BLOCK);
        for (var d = lid; d < p.value_dim; d += 64u) {
            var acc = value_sums[d] * rescale;
            let base = cache_base + block * p.head_dim + d;
            var i = first;
            // Twin loops keep the latent test out of the inner loop (a test per load
            // made attend about 5% slower on lavapipe).
            if (p.latent != 0u) {
                for (; i + 4u <= end; i += 4u) {
                    let r = base + i * p.head_dim;
                    acc += probs[i] * k_cache[r];
                    acc += probs[i + 1u] * k_cache[r + p.head_dim];
                    acc += probs[i + 2u] * k_cache[r + 2u * p.head_dim];
                    acc += probs[i + 3u] * k_cache[r + 3u * p.head_dim];
                }
                for (; i < end; i++) {
                    acc += probs[i] * k_cache[base + i * p.head_dim];
                }
            } else {
                for (; i + 4u <= end; i += 4u) {
                    let r = base + i * p.head_dim;
                    acc += probs[i] * v_cache[r];
                    acc += probs[i + 1u] * v_cache[r + p.head_dim];
                    acc += probs[i + 2u] * v_cache[r + 2u * p.head_dim];
                    acc += probs[i + 3u] * v_cache[r + 3u * p.head_dim];
                }
                for (; i < end; i++) {
                    acc += probs[i] * v_cache[base + i * p.head_dim];
                }
            }
            value_sums[d] = acc;
        }
        // The next block's probabilities are written after its max reduction's
        // barriers, so every invocation has finished reading these by then.
    }
    partial[lid] = sum;
    var total = reduce(lid, false);
    if (p.has_sinks != 0u) {
        // The sink's logit joins the softmax: rescale to the larger max.
        let sink = sinks[h];
        let m_all = max(m, sink);
        let rescale = exp(m - m_all);
        total = total * rescale + exp(sink - m_all);
        for (var d = lid; d < p.value_dim; d += 64u) {
            out[th * p.value_dim + d] = value_sums[d] * rescale / total;
        }
        return;
    }
    for (var d = lid; d < p.value_dim; d += 64u) {
        out[th * p.value_dim + d] = value_sums[d] / total;
    }
}

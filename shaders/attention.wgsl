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
// attend_split + attend_merge: the same attention with each (token, head)'s blocks
//   cut into `splits` runs, each run's softmax in its own workgroup, then merged
//   (flash decoding): for steps of few tokens on GPUs. The runs depend only on the
//   token's position, so this pair too gives a token the same output in any batch
//   (not bit for bit what attend gives: the sums are grouped differently).
// Latent caches (MLA, latent = 1): one kv head whose key is [latent, RoPE key] and whose
//   value is the key's first value_dim elements; no value cache is written or read.
//   out is [T, heads * value_dim].
// Mapping: kv_store one invocation per element of k; attend one 64-invocation
// workgroup per (t, head) (attend_split: per (t, head, run)): invocation i scores
// positions i, i + 64, i + 128, i + 192 of each block and owns the value sums of
// elements d = i (mod 64) (value_dim <= 1024).

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
    splits: u32,    // attend_split / attend_merge: runs per (token, head), 1 to MAX_SPLITS
}

@group(0) @binding(0) var<uniform> p: AttentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>; // attend_split's runs
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

// This invocation's (slot, position) of token t, made workgroup-uniform as the
// reductions need; slot = p.slots when the token lies outside the cache.
fn uniform_placement(t: u32, lid: u32) -> vec2<u32> {
    if (lid == 0u) {
        row_slot = positions[2u * t];
        row_position = positions[2u * t + 1u];
        if (row_position >= p.max_ctx) {
            row_slot = p.slots;
        }
    }
    return vec2<u32>(workgroupUniformLoad(&row_slot), workgroupUniformLoad(&row_position));
}

// The first cache position token t at `pos` attends to: p_t + 1 - window, written so
// as not to wrap below 0.
fn window_start(pos: u32) -> u32 {
    let keys = pos + 1u;
    return select(0u, keys - p.window, p.window > 0u && keys > p.window);
}

// The online softmax of (token, head) th over the cache positions of the blocks
// that start at block_begin, block_begin + BLOCK, ... below block_end, limited to
// [start, keys). Leaves the value sums (scaled by exp(-max)) in value_sums (invocation
// lid owns elements d = lid (mod 64)); returns (max, sum of exp(score - max)) for
// every invocation. With no position in range: (NO_SCORE, 0) and zero value sums.
fn attend_blocks(
    lid: u32,
    th: u32,
    slot: u32,
    start: u32,
    keys: u32,
    block_begin: u32,
    block_end: u32,
) -> vec2<f32> {
    let h = th % p.heads;
    let kvh = h / (p.heads / p.kv_heads);
    let qb = th * p.head_dim;
    let cache_base = (slot * p.kv_heads + kvh) * p.max_ctx * p.head_dim;
    for (var d = lid; d < p.value_dim; d += 64u) {
        value_sums[d] = 0.0;
    }

    var m = NO_SCORE; // running max (uniform)
    var sum = 0.0; // this invocation's share of the running sum of exp(score - m)
    for (var block = block_begin; block < block_end; block += BLOCK) {
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
    return vec2<f32>(m, reduce(lid, false));
}

// Writes out[th] = value_sums / total, the softmax's sum total at max m, first
// joining head h's sink logit to the softmax where the model has sinks.
fn write_output(lid: u32, th: u32, m: f32, sum: f32) {
    var total = sum;
    if (p.has_sinks != 0u) {
        // The sink's logit joins the softmax: rescale to the larger max.
        let sink = sinks[th % p.heads];
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

// One pass over each (token, head)'s whole range: one workgroup per (t, head).
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
    let placement = uniform_placement(th / p.heads, lid);
    if (placement.x >= p.slots) {
        return;
    }
    let keys = placement.y + 1u;
    let start = window_start(placement.y);
    let r = attend_blocks(lid, th, placement.x, start, keys, start - start % BLOCK, keys);
    write_output(lid, th, r.x, r.y);
}

// Split over the context (flash decoding; steps of few tokens on GPUs, where one
// workgroup per (token, head) leaves most of the GPU idle): the blocks of a
// (token, head)'s range are cut into p.splits runs of equal block counts, and
// workgroup (th, s) takes run s: one workgroup per (t, head, split), th-major.
// Writes partials[(th * splits + s) * (value_dim + 2)..]: [max, sum, value sums]
// (runs past the range's end write nothing; attend_merge does not read them). The
// runs depend only on the token's own position, so the output does too.
@compute @workgroup_size(64)
fn attend_split(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ths = linear_workgroup(wid, nwg);
    if (ths >= p.tokens * p.heads * p.splits) {
        return;
    }
    let th = ths / p.splits;
    let placement = uniform_placement(th / p.heads, lid);
    if (placement.x >= p.slots) {
        return;
    }
    let keys = placement.y + 1u;
    let start = window_start(placement.y);
    let run = split_run(start, keys, ths % p.splits);
    if (run.x >= run.y) {
        return;
    }
    let r = attend_blocks(lid, th, placement.x, start, keys, run.x, run.y);
    let base = ths * (p.value_dim + 2u);
    if (lid == 0u) {
        partials[base] = r.x;
        partials[base + 1u] = r.y;
    }
    for (var d = lid; d < p.value_dim; d += 64u) {
        partials[base + 2u + d] = value_sums[d];
    }
}

// Split s's first position and its end: the range [start, keys) covers blocks
// first .. first + n of BLOCK positions; each split takes ceil(n / splits) of them.
fn split_run(start: u32, keys: u32, s: u32) -> vec2<u32> {
    let first = start - start % BLOCK;
    let blocks = (keys - first + BLOCK - 1u) / BLOCK;
    let per_split = (blocks + p.splits - 1u) / p.splits;
    let begin = first + s * per_split * BLOCK;
    return vec2<u32>(begin, min(begin + per_split * BLOCK, keys));
}

// Merges attend_split's partials of each (token, head) into out, one 64-invocation
// workgroup per (t, head): max M over the runs (and the sink), total =
// sum_s sum_s' exp(max_s - M) (+ exp(sink - M)), out = sum_s values_s exp(max_s - M)
// / total, runs added in order (deterministic). Every invocation computes M and the
// total itself (no barriers) and writes elements d = lid (mod 64).
@compute @workgroup_size(64)
fn attend_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let th = linear_workgroup(wid, nwg);
    if (th >= p.tokens * p.heads) {
        return;
    }
    let t = th / p.heads;
    let slot = positions[2u * t];
    let pos = positions[2u * t + 1u];
    if (slot >= p.slots || pos >= p.max_ctx) {
        return;
    }
    let keys = pos + 1u;
    let start = window_start(pos);
    var runs = 0u;
    while (runs < p.splits && split_run(start, keys, runs).x < keys) {
        runs++;
    }
    let stride = p.value_dim + 2u;
    let base = th * p.splits * stride;
    var m = NO_SCORE;
    for (var s = 0u; s < runs; s++) {
        m = max(m, partials[base + s * stride]);
    }
    if (p.has_sinks != 0u) {
        m = max(m, sinks[th % p.heads]);
    }
    var total = 0.0;
    for (var s = 0u; s < runs; s++) {
        total += partials[base + s * stride + 1u] * exp(partials[base + s * stride] - m);
    }
    if (p.has_sinks != 0u) {
        total += exp(sinks[th % p.heads] - m);
    }
    for (var d = lid; d < p.value_dim; d += 64u) {
        var acc = 0.0;
        for (var s = 0u; s < runs; s++) {
            acc += partials[base + s * stride + 2u + d] * exp(partials[base + s * stride] - m);
        }
        out[th * p.value_dim + d] = acc / total;
    }
}

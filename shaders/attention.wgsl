// Causal attention with a KV cache of several sequences (slots) and grouped-query heads.
// Token t belongs to sequence slot s_t at position p_t: positions [T] = (s_t, p_t), so one
// step may hold a prompt chunk of one sequence, or one token of each of many sequences
// of different lengths (continuous batching).
// kv_store: copies this step's k, v [T, kv_heads * head_dim] into the caches
//   [slots, kv_heads, max_ctx, row] at (s_t, p_t), row = head_dim rounded up to a
//   multiple of 4 (the padding stays zero), so attend reads rows in quads of 4
//   elements. The caches hold f32 or f16 (the attention_cache part below); every
//   kernel computes in f32.
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
// Mapping: kv_store one invocation per cache word (an element, or two of f16); attend one 64-invocation
// workgroup per (t, head) (attend_split: per (t, head, run)): the query goes to
// workgroup memory as vec4 quads; invocation i scores positions i, i + 64, i + 128,
// i + 192 of each block (16-byte loads along the key rows, each query load shared by
// the four), then the value sums are work items (group g, quad c): quad c of the
// values (value_dim <= 1024) over the block's positions i = g (mod groups), with
// groups = 64 / quads where the quads are 32 or fewer (head_dim 128: 2 groups), so
// all 64 invocations load 16 bytes per step; the groups are added in order at the
// end. CPU drivers pay per load instruction: against one f32 element per load and a
// query load per product, decode attention over 1,024 positions runs 2.2-3.0x faster
// on lavapipe and 1.2-2.0x on SwiftShader (BENCHMARKS.md). (Contiguous position
// ranges per group with one vec4 probability load per four positions measured
// 10-20% faster on lavapipe but 20-50% slower on SwiftShader, the browser's driver.)

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
    group_lanes: u32, // attend_grouped*: query heads per workgroup (1 to 4, dividing heads / kv_heads)
    token_lanes: u32, // attend_grouped: tokens per workgroup (group_lanes * token_lanes <= 4); 1 for the split
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: AttentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>; // attend_split's runs
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> k_new: array<f32>;
@group(0) @binding(7) var<storage, read> v_new: array<f32>;
@group(0) @binding(8) var<storage, read> positions: array<u32>; // [T] x (slot, position)
@group(0) @binding(9) var<storage, read> sinks: array<f32>; // [heads], read when p.has_sinks == 1

// How the caches store their elements: the host composes attention_cache_f32 or
// attention_cache_f16 here. Each binds the caches for writing (2, 3: k_cache,
// v_cache, in words of ELEMENTS_PER_WORD elements) and again for reading as rows of
// quads (10, 11: k_rows, v_rows), and defines cache_word(pair) (the word holding
// elements pair.x and, in f16, pair.y), key_quad(i) and value_quad(i) (quad i of the
// key / value rows as f32).
//! part: attention_cache

// Elements d (and d + 1 in f16) of their head, k_new / v_new[src..], to cache word
// dst; past head_dim a word's second element is the row's zero padding.
fn store_word(dst: u32, src: u32, d: u32) {
    var k = vec2<f32>(k_new[src], 0.0);
    var v = vec2<f32>(0.0);
    let pair = ELEMENTS_PER_WORD == 2u && d + 1u < p.head_dim;
    if (pair) {
        k.y = k_new[src + 1u];
    }
    k_cache[dst] = cache_word(k);
    if (p.latent == 0u) {
        v.x = v_new[src];
        if (pair) {
            v.y = v_new[src + 1u];
        }
        v_cache[dst] = cache_word(v);
    }
}

// Elements per cache row: head_dim rounded up to a multiple of 4.
fn row_width() -> u32 {
    return (p.head_dim + 3u) / 4u * 4u;
}

// Whether token t's (slot, position) lies inside the cache.
fn placed(t: u32) -> bool {
    return positions[2u * t] < p.slots && positions[2u * t + 1u] < p.max_ctx;
}

// One invocation per cache word of this step's keys (and values): words of
// ELEMENTS_PER_WORD elements, (t, kv head, word) row-major.
@compute @workgroup_size(64)
fn kv_store(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_workgroup(wid, nwg) * 64u + lid;
    let words = (p.head_dim + ELEMENTS_PER_WORD - 1u) / ELEMENTS_PER_WORD;
    if (idx >= p.tokens * p.kv_heads * words) {
        return;
    }
    let t = idx / (p.kv_heads * words);
    let kvh = idx / words % p.kv_heads;
    let d = idx % words * ELEMENTS_PER_WORD;
    if (!placed(t)) {
        return;
    }
    let slot = positions[2u * t];
    let row = (slot * p.kv_heads + kvh) * p.max_ctx + positions[2u * t + 1u];
    store_word(row * (row_width() / ELEMENTS_PER_WORD) + d / ELEMENTS_PER_WORD, (t * p.kv_heads + kvh) * p.head_dim + d, d);
}

const BLOCK: u32 = 256u;
const MAX_VALUE_DIM: u32 = 1024u;
const MAX_QUADS: u32 = MAX_VALUE_DIM / 4u;
const NO_SCORE: f32 = -3.0e38;

var<workgroup> partial: array<f32, 64>;
var<workgroup> probs: array<f32, BLOCK>;
var<workgroup> query: array<vec4<f32>, MAX_QUADS>; // (t, head)'s query, zero-padded
// Value sums as vec4 quads: [group][quad] with groups * quads <= max(64, quads).
var<workgroup> value_sums: array<vec4<f32>, MAX_QUADS>;
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

// scale * query . k at cache positions j, j + 64, j + 128, j + 192 (key rows from
// row_base, in quads), NO_SCORE for those outside [start, keys). The four dot
// products share each query load; a position outside the range reads a row inside
// it (clamped) and is masked after, and an invocation with none inside reads nothing.
fn masked_scores(row_base: u32, j: u32, start: u32, keys: u32) -> vec4<f32> {
    let positions = vec4<u32>(j, j + 64u, j + 128u, j + 192u);
    let inside = (positions >= vec4<u32>(start)) & (positions < vec4<u32>(keys));
    if (!any(inside)) {
        return vec4<f32>(NO_SCORE);
    }
    let quads = row_width() / 4u;
    let rows = vec4<u32>(row_base) + clamp(positions, vec4<u32>(start), vec4<u32>(keys - 1u)) * quads;
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    for (var i = 0u; i < quads; i++) {
        let qv = query[i];
        s0 += qv * key_quad(rows.x + i);
        s1 += qv * key_quad(rows.y + i);
        s2 += qv * key_quad(rows.z + i);
        s3 += qv * key_quad(rows.w + i);
    }
    let s = vec4<f32>(
        (s0.x + s0.y) + (s0.z + s0.w),
        (s1.x + s1.y) + (s1.z + s1.w),
        (s2.x + s2.y) + (s2.z + s2.w),
        (s3.x + s3.y) + (s3.z + s3.w),
    );
    return select(vec4<f32>(NO_SCORE), s * p.scale, inside);
}

// How the value sums are laid out: value quads (value_dim / 4, rounded up) and
// position groups (64 / quads where quads <= 32, else 1), so that groups * quads work
// items keep the 64 invocations busy. Work item w = g * quads + c adds positions
// i = g (mod groups) of each block to quad c.
fn value_quads() -> u32 {
    return (p.value_dim + 3u) / 4u;
}

fn position_groups() -> u32 {
    return max(1u, 64u / value_quads());
}

// Element d of the (token, head)'s value sums: its groups added in order.
fn value_sum(d: u32) -> f32 {
    let quads = value_quads();
    var total = 0.0;
    for (var g = 0u; g < position_groups(); g++) {
        total += value_sums[g * quads + d / 4u][d % 4u];
    }
    return total;
}

// Token t's (slot, position), made workgroup-uniform as the
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
// [start, keys). Leaves the value sums (scaled by exp(-max)) in value_sums, as the
// (position group, quad) work items value_sum() adds up; returns (max, sum of
// exp(score - max)) for every invocation. With no position in range: (NO_SCORE, 0) and zero value sums.
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
    let quads = row_width() / 4u;
    let row_base = (slot * p.kv_heads + kvh) * p.max_ctx * quads;
    let qb = th * p.head_dim;
    for (var i = lid; i < quads; i += 64u) {
        var v = vec4<f32>(0.0);
        for (var c = 0u; c < 4u; c++) {
            if (4u * i + c < p.head_dim) {
                v[c] = q[qb + 4u * i + c];
            }
        }
        query[i] = v;
    }
    let value_quads = value_quads();
    let groups = position_groups();
    let items = groups * value_quads;
    for (var w = lid; w < items; w += 64u) {
        value_sums[w] = vec4<f32>(0.0);
    }
    workgroupBarrier();

    var m = NO_SCORE; // running max (uniform)
    var sum = 0.0; // this invocation's share of the running sum of exp(score - m)
    for (var block = block_begin; block < block_end; block += BLOCK) {
        // Four positions per invocation; those outside [start, keys) score NO_SCORE.
        let s = masked_scores(row_base, block + lid, start, keys);
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
        for (var w = lid; w < items; w += 64u) {
            let g = w / value_quads;
            var acc = value_sums[w] * rescale;
            let base = row_base + block * quads + w % value_quads;
            // Twin loops keep the latent test out of the inner loop (a test per load
            // made attend about 5% slower on lavapipe).
            if (p.latent != 0u) {
                for (var i = first + g; i < end; i += groups) {
                    acc += probs[i] * key_quad(base + i * quads);
                }
            } else {
                for (var i = first + g; i < end; i += groups) {
                    acc += probs[i] * value_quad(base + i * quads);
                }
            }
            value_sums[w] = acc;
        }
        // The next block's probabilities are written after its max reduction's
        // barriers, so every invocation has finished reading these by then.
    }
    partial[lid] = sum;
    // The reduction's barriers also make every work item's value sums visible.
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
            out[th * p.value_dim + d] = value_sum(d) * rescale / total;
        }
        return;
    }
    for (var d = lid; d < p.value_dim; d += 64u) {
        out[th * p.value_dim + d] = value_sum(d) / total;
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
        partials[base + 2u + d] = value_sum(d);
    }
}

// The blocks of BLOCK positions the range [start, keys) covers (from the block of
// start), and how many of them each run takes: ceil(blocks / splits).
fn run_blocks(start: u32, keys: u32) -> vec2<u32> {
    let blocks = (keys - (start - start % BLOCK) + BLOCK - 1u) / BLOCK;
    return vec2<u32>(blocks, (blocks + p.splits - 1u) / p.splits);
}

// Run s's first position and its end (empty for runs past the range).
fn split_run(start: u32, keys: u32, s: u32) -> vec2<u32> {
    let per_run = run_blocks(start, keys).y;
    let begin = start - start % BLOCK + s * per_run * BLOCK;
    return vec2<u32>(begin, min(begin + per_run * BLOCK, keys));
}

// Merges attend_split's partials of each (token, head) into out, one 64-invocation
// workgroup per (t, head): max M over the runs (and the sink), total =
// sum_s (sum of run s) exp(max_s - M) (+ exp(sink - M)), out = sum_s values_s exp(max_s - M)
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
    if (!placed(t)) {
        return;
    }
    let pos = positions[2u * t + 1u];
    let keys = pos + 1u;
    let start = window_start(pos);
    // The runs attend_split wrote: those that start before keys.
    let blocks = run_blocks(start, keys);
    let runs = (blocks.x + blocks.y - 1u) / blocks.y;
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

// ---- Query heads that share a kv head, in one workgroup (grouped-query attention) ----
// attend_grouped / attend_grouped_split: the attention of attend / attend_split for up
// to 4 (token, head) pairs at once that read the same cache rows, as the lanes of
// vec4s, so each key and value load serves all of them (attend loads a kv head's rows
// once per query head and token: 4x the loads for Mixtral, 8x for Qwen3-30B-A3B, 16x
// for DeepSeek-V2-Lite's latent cache, and once per token of a prompt). A chunk holds
// p.group_lanes heads of one kv head (1 to 4, dividing heads / kv_heads) of
// p.token_lanes consecutive tokens (attend_grouped only; lanes = group_lanes *
// token_lanes <= 4): lane l is token t0 + l / group_lanes, head h0 + l % group_lanes.
// Lanes share their rows when their tokens are in one sequence (a prompt chunk); lanes
// of other sequences (a continuous-batching step) are taken in further passes, one
// sequence at a time. Each lane keeps its own window of positions: the blocks run over
// the union of the lanes' ranges, a position outside a lane's range takes exactly
// zero probability in it and a block outside it rescales it by exactly 1 (exp(0) = 1,
// exact on every driver we know; WGSL promises 3 ulp), and 0 * v adds nothing for a
// finite cached value, so a lane's result does not depend on its chunk-mates (a
// non-finite key or value would already have broken the model). Rows up to MAX_GROUPED_DIM elements,
// values up to 4 * MAX_GROUPED_VALUE_QUADS; latent caches too.
// Mapping: one 64-invocation workgroup per (token chunk, head chunk) (attend_grouped_split:
// per (t, head chunk, run), run-minor). Invocation i scores positions i, i + 64,
// i + 128, i + 192 of each block for every lane (per key quad: four key loads, four
// query loads, sixteen vec4 multiply-adds); the value sums are attend's (group, quad)
// work items, invocation i owning items i and i + 64 in registers (one vec4 per lane
// each), each value load and probability load serving every lane. At the end the items
// pass through workgroup memory 64 at a time, their groups added in order. The lanes'
// softmax and reductions are attend's, lane by lane; the outputs and partials are
// written as attend writes them, so attend_merge merges either kernel's runs.

const MAX_GROUPED_DIM: u32 = 576u; // DeepSeek's latent (512) and RoPE key (64)
const MAX_GROUPED_VALUE_QUADS: u32 = 128u; // two work items per invocation
const NO_LANE: u32 = 0xffffffffu;

// The chunk's queries: element d of every lane at grouped_query[d] (zeros past
// head_dim and for lanes not in the pass).
var<workgroup> grouped_query: array<vec4<f32>, MAX_GROUPED_DIM>;
// The block's probabilities, position-major, one lane per (token, head); at the end,
// 64 work items' value sums at a time, [lane][item].
var<workgroup> grouped_probs: array<vec4<f32>, BLOCK>;
var<workgroup> grouped_partial: array<vec4<f32>, 64>;
// Each lane's slot (NO_LANE for a lane past the tokens or outside the cache) and position.
var<workgroup> lane_slots: vec4<u32>;
var<workgroup> lane_positions: vec4<u32>;

// reduce() for every lane at once: grouped_partial[0..64] by max or sum, lane-wise.
fn reduce_lanes(lid: u32, use_max: bool) -> vec4<f32> {
    for (var stride = 32u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            let a = grouped_partial[lid];
            let b = grouped_partial[lid + stride];
            grouped_partial[lid] = select(a + b, max(a, b), use_max);
        }
    }
    workgroupBarrier();
    let r = grouped_partial[0];
    workgroupBarrier();
    return r;
}

// The lanes' tokens and heads: token t0 + l / group_lanes, head h0 + l % group_lanes
// (lanes past group_lanes * token_lanes repeat the last, and are never in a pass).
fn lane_tokens(t0: u32) -> vec4<u32> {
    let l = min(vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.group_lanes * p.token_lanes - 1u));
    return vec4<u32>(t0) + l / p.group_lanes;
}

fn lane_heads(h0: u32) -> vec4<u32> {
    let l = min(vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.group_lanes * p.token_lanes - 1u));
    return vec4<u32>(h0) + l % p.group_lanes;
}

// Each lane's slot and position.
struct LanePlacements {
    slots: vec4<u32>,
    positions: vec4<u32>,
}

// Each lane's (slot, position), made workgroup-uniform; slot NO_LANE for lanes past
// group_lanes * token_lanes, past the step's tokens or outside the cache.
fn lane_placements(lid: u32, t0: u32) -> LanePlacements {
    if (lid == 0u) {
        let tokens = lane_tokens(t0);
        var slots = vec4<u32>(NO_LANE);
        var positions_ = vec4<u32>(0u);
        for (var l = 0u; l < p.group_lanes * p.token_lanes; l++) {
            let t = tokens[l];
            if (t < p.tokens && placed(t)) {
                slots[l] = positions[2u * t];
                positions_[l] = positions[2u * t + 1u];
            }
        }
        lane_slots = slots;
        lane_positions = positions_;
    }
    return LanePlacements(workgroupUniformLoad(&lane_slots), workgroupUniformLoad(&lane_positions));
}

// masked_scores() for every lane: column c holds position j + 64 c's scores, one lane
// per (token, head), NO_SCORE outside lane l's [starts[l], keys[l]). Positions outside
// every lane's range read a row inside [first, last] (clamped) and are masked after.
fn grouped_scores(row_base: u32, j: u32, starts: vec4<u32>, keys: vec4<u32>, first: u32, last: u32) -> mat4x4<f32> {
    let none = vec4<f32>(NO_SCORE);
    let positions = vec4<u32>(j, j + 64u, j + 128u, j + 192u);
    let in0 = lanes_inside(positions.x, starts, keys);
    let in1 = lanes_inside(positions.y, starts, keys);
    let in2 = lanes_inside(positions.z, starts, keys);
    let in3 = lanes_inside(positions.w, starts, keys);
    if (!(any(in0) || any(in1) || any(in2) || any(in3))) {
        return mat4x4<f32>(none, none, none, none);
    }
    let quads = row_width() / 4u;
    let rows = vec4<u32>(row_base) + clamp(positions, vec4<u32>(first), vec4<u32>(last)) * quads;
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    for (var i = 0u; i < quads; i++) {
        let qx = grouped_query[4u * i];
        let qy = grouped_query[4u * i + 1u];
        let qz = grouped_query[4u * i + 2u];
        let qw = grouped_query[4u * i + 3u];
        let k0 = key_quad(rows.x + i);
        s0 += (qx * k0.x + qy * k0.y) + (qz * k0.z + qw * k0.w);
        let k1 = key_quad(rows.y + i);
        s1 += (qx * k1.x + qy * k1.y) + (qz * k1.z + qw * k1.w);
        let k2 = key_quad(rows.z + i);
        s2 += (qx * k2.x + qy * k2.y) + (qz * k2.z + qw * k2.w);
        let k3 = key_quad(rows.w + i);
        s3 += (qx * k3.x + qy * k3.y) + (qz * k3.z + qw * k3.w);
    }
    return mat4x4<f32>(
        select(none, s0 * p.scale, in0),
        select(none, s1 * p.scale, in1),
        select(none, s2 * p.scale, in2),
        select(none, s3 * p.scale, in3),
    );
}

// Which lanes have cache position pos in their range [starts[l], keys[l]).
fn lanes_inside(pos: u32, starts: vec4<u32>, keys: vec4<u32>) -> vec4<bool> {
    return (vec4<u32>(pos) >= starts) & (vec4<u32>(pos) < keys);
}

// Work item w's value sums (column l: lane l's quad), rescaled, plus the block's
// positions i = first + g (mod groups) below end weighted by grouped_probs. Items
// past the last are left as they are.
fn accumulate_item(acc: mat4x4<f32>, w: u32, rescale: vec4<f32>, row_base: u32, block: u32, first: u32, end: u32) -> mat4x4<f32> {
    let value_quads = value_quads();
    let groups = position_groups();
    if (w >= groups * value_quads) {
        return acc;
    }
    var a0 = acc[0] * rescale.x;
    var a1 = acc[1] * rescale.y;
    var a2 = acc[2] * rescale.z;
    var a3 = acc[3] * rescale.w;
    let quads = row_width() / 4u;
    let base = row_base + block * quads + w % value_quads;
    // Twin loops keep the latent test out of the inner loop.
    if (p.latent != 0u) {
        for (var i = first + w / value_quads; i < end; i += groups) {
            let v = key_quad(base + i * quads);
            let pr = grouped_probs[i];
            a0 += pr.x * v;
            a1 += pr.y * v;
            a2 += pr.z * v;
            a3 += pr.w * v;
        }
    } else {
        for (var i = first + w / value_quads; i < end; i += groups) {
            let v = value_quad(base + i * quads);
            let pr = grouped_probs[i];
            a0 += pr.x * v;
            a1 += pr.y * v;
            a2 += pr.z * v;
            a3 += pr.w * v;
        }
    }
    return mat4x4<f32>(a0, a1, a2, a3);
}

// Each lane's softmax state (running max, sum of exp(score - max)) and the work items
// lid and lid + 64 of its value sums.
struct LaneSoftmax {
    m: vec4<f32>,
    sum: vec4<f32>,
    items0: mat4x4<f32>,
    items1: mat4x4<f32>,
}

// attend_blocks() for the lanes in `pass` (tokens `tokens`, heads `heads_`, all in
// cache slot `slot`), each over its own range [starts[l], keys[l]) (empty for lanes
// not in the pass), the blocks running over [block_begin, block_end).
fn attend_grouped_blocks(
    lid: u32,
    tokens: vec4<u32>,
    heads_: vec4<u32>,
    in_pass: vec4<bool>,
    slot: u32,
    starts: vec4<u32>,
    keys: vec4<u32>,
    block_begin: u32,
    block_end: u32,
) -> LaneSoftmax {
    let kvh = heads_.x / (p.heads / p.kv_heads);
    let quads = row_width() / 4u;
    let row_base = (slot * p.kv_heads + kvh) * p.max_ctx * quads;
    workgroupBarrier(); // a previous pass is done with grouped_query
    for (var d = lid; d < row_width(); d += 64u) {
        var v = vec4<f32>(0.0);
        if (d < p.head_dim) {
            for (var l = 0u; l < 4u; l++) {
                if (in_pass[l]) {
                    v[l] = q[(tokens[l] * p.heads + heads_[l]) * p.head_dim + d];
                }
            }
        }
        grouped_query[d] = v;
    }
    workgroupBarrier();

    // The union of the lanes' ranges, for the rows the scores read.
    let first = min(min(starts.x, starts.y), min(starts.z, starts.w));
    let last = max(max(keys.x, keys.y), max(keys.z, keys.w)) - 1u;
    var m = vec4<f32>(NO_SCORE);
    var sum = vec4<f32>(0.0);
    var items0 = mat4x4<f32>();
    var items1 = mat4x4<f32>();
    for (var block = block_begin; block < block_end; block += BLOCK) {
        let s = grouped_scores(row_base, block + lid, starts, keys, first, last);
        grouped_partial[lid] = max(max(s[0], s[1]), max(s[2], s[3]));
        let m_new = max(m, reduce_lanes(lid, true));
        // A lane with no position yet keeps its max at NO_SCORE: its rescale is
        // exactly 1 and its masked positions take exactly 0.
        let rescale = exp(m - m_new);
        let none = vec4<f32>(NO_SCORE);
        let e0 = select(vec4<f32>(0.0), exp(s[0] - m_new), s[0] != none);
        let e1 = select(vec4<f32>(0.0), exp(s[1] - m_new), s[1] != none);
        let e2 = select(vec4<f32>(0.0), exp(s[2] - m_new), s[2] != none);
        let e3 = select(vec4<f32>(0.0), exp(s[3] - m_new), s[3] != none);
        grouped_probs[lid] = e0;
        grouped_probs[lid + 64u] = e1;
        grouped_probs[lid + 128u] = e2;
        grouped_probs[lid + 192u] = e3;
        sum = sum * rescale + ((e0 + e1) + (e2 + e3));
        m = m_new;
        workgroupBarrier();
        let begin = max(first, block) - block;
        let end = min(last + 1u - block, BLOCK);
        items0 = accumulate_item(items0, lid, rescale, row_base, block, begin, end);
        items1 = accumulate_item(items1, lid + 64u, rescale, row_base, block, begin, end);
        // The next block's probabilities are written after its max reduction's
        // barriers, so every invocation has finished reading these by then.
    }
    grouped_partial[lid] = sum;
    return LaneSoftmax(m, reduce_lanes(lid, false), items0, items1);
}

// The chunk's value sums leave through grouped_probs 64 work items at a time: round
// r holds items 64 r .. 64 r + 63, i.e. elements 256 r .. 256 r + 255 (with several
// position groups, value_dim <= 128 and round 0 holds every item).
fn value_rounds() -> u32 {
    return (p.value_dim + 255u) / 256u;
}

// Puts round `round`'s work items of every lane in grouped_probs ([lane][item]),
// after every invocation is done with what it held.
fn stage_round(lid: u32, r: LaneSoftmax, round: u32) {
    workgroupBarrier();
    var items = r.items0;
    if (round == 1u) {
        items = r.items1;
    }
    for (var l = 0u; l < 4u; l++) {
        grouped_probs[64u * l + lid] = items[l];
    }
    workgroupBarrier();
}

// Element d (of round `round`'s) of lane l's value sums: its position groups added in order.
fn grouped_value(l: u32, d: u32, round: u32) -> f32 {
    let quads = value_quads();
    var v = 0.0;
    for (var g = 0u; g < position_groups(); g++) {
        v += grouped_probs[64u * l + g * quads + d / 4u - 64u * round][d % 4u];
    }
    return v;
}

// The lanes of the next pass: those not done whose slot is the first such lane's.
fn next_pass(slots: vec4<u32>, done: vec4<bool>) -> vec4<bool> {
    var slot = NO_LANE;
    for (var l = 0u; l < 4u; l++) {
        if (!done[l] && slot == NO_LANE) {
            slot = slots[l];
        }
    }
    return !done & (slots == vec4<u32>(slot)) & (slots != vec4<u32>(NO_LANE));
}

// Each lane's first position: p_t + 1 - window (window_start, lane-wise); far past the
// cache for lanes not in the pass, so their ranges are empty and leave the union alone.
fn lane_starts(positions_: vec4<u32>, in_pass: vec4<bool>) -> vec4<u32> {
    let keys = positions_ + 1u;
    let windowed = select(vec4<u32>(0u), keys - vec4<u32>(p.window), (vec4<u32>(p.window) < keys) & vec4<bool>(p.window > 0u));
    return select(vec4<u32>(NO_LANE), windowed, in_pass);
}

// attend for a chunk of (token, head) lanes: one workgroup per (token chunk, head
// chunk), head chunks minor; one pass per sequence among the lanes' tokens.
@compute @workgroup_size(64)
fn attend_grouped(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let head_chunks = p.heads / p.group_lanes;
    let tc = linear_workgroup(wid, nwg);
    if (tc >= (p.tokens + p.token_lanes - 1u) / p.token_lanes * head_chunks) {
        return;
    }
    let tokens = lane_tokens(tc / head_chunks * p.token_lanes);
    let heads_ = lane_heads(tc % head_chunks * p.group_lanes);
    let placements = lane_placements(lid, tokens.x);
    var done = placements.slots == vec4<u32>(NO_LANE);
    for (var passes = 0u; passes < 4u && !all(done); passes++) {
        let in_pass = next_pass(placements.slots, done);
        var slot = 0u;
        for (var l = 0u; l < 4u; l++) {
            if (in_pass[l]) {
                slot = placements.slots[l];
            }
        }
        let starts = lane_starts(placements.positions, in_pass);
        let keys = select(vec4<u32>(0u), placements.positions + 1u, in_pass);
        let first = min(min(starts.x, starts.y), min(starts.z, starts.w));
        let end = max(max(keys.x, keys.y), max(keys.z, keys.w));
        let r = attend_grouped_blocks(lid, tokens, heads_, in_pass, slot, starts, keys, first - first % BLOCK, end);
        // out = value sums / total; with sinks each head's sink logit joins its softmax
        // (rescaled to the larger max), as write_output does.
        var factor = 1.0 / r.sum;
        if (p.has_sinks != 0u) {
            var sink = vec4<f32>(0.0);
            for (var l = 0u; l < 4u; l++) {
                sink[l] = sinks[heads_[l]];
            }
            let m_all = max(r.m, sink);
            let rescale = exp(r.m - m_all);
            factor = rescale / (r.sum * rescale + exp(sink - m_all));
        }
        for (var round = 0u; round < value_rounds(); round++) {
            stage_round(lid, r, round);
            for (var l = 0u; l < 4u; l++) {
                if (in_pass[l]) {
                    let th = tokens[l] * p.heads + heads_[l];
                    for (var d = 256u * round + lid; d < min(256u * (round + 1u), p.value_dim); d += 64u) {
                        out[th * p.value_dim + d] = grouped_value(l, d, round) * factor[l];
                    }
                }
            }
        }
        done = done | in_pass;
    }
}

// attend_split for a chunk of heads of one token (token_lanes 1): one workgroup per
// (t, head chunk, run), writing each head's partials where attend_split would.
@compute @workgroup_size(64)
fn attend_grouped_split(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let head_chunks = p.heads / p.group_lanes;
    let tcs = linear_workgroup(wid, nwg);
    if (tcs >= p.tokens * head_chunks * p.splits) {
        return;
    }
    let tc = tcs / p.splits;
    let tokens = lane_tokens(tc / head_chunks);
    let heads_ = lane_heads(tc % head_chunks * p.group_lanes);
    let placements = lane_placements(lid, tokens.x);
    if (placements.slots.x == NO_LANE) {
        return;
    }
    let pos = placements.positions.x;
    let keys = pos + 1u;
    let start = window_start(pos);
    let s = tcs % p.splits;
    let run = split_run(start, keys, s);
    if (run.x >= run.y) {
        return;
    }
    let in_pass = placements.slots != vec4<u32>(NO_LANE);
    let r = attend_grouped_blocks(
        lid,
        tokens,
        heads_,
        in_pass,
        placements.slots.x,
        select(vec4<u32>(NO_LANE), vec4<u32>(start), in_pass),
        select(vec4<u32>(0u), vec4<u32>(keys), in_pass),
        run.x,
        run.y,
    );
    for (var round = 0u; round < value_rounds(); round++) {
        stage_round(lid, r, round);
        for (var l = 0u; l < p.group_lanes; l++) {
            let at = ((tokens.x * p.heads + heads_[l]) * p.splits + s) * (p.value_dim + 2u);
            if (lid == 0u && round == 0u) {
                partials[at] = r.m[l];
                partials[at + 1u] = r.sum[l];
            }
            for (var d = 256u * round + lid; d < min(256u * (round + 1u), p.value_dim); d += 64u) {
                partials[at + 2u + d] = grouped_value(l, d, round);
            }
        }
    }
}

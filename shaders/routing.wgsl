// Gating: router logits, expert selection, and both fused into one dispatch for decode.
// router_logits: logits[t, r] = sum_i x[t, i] * w[r, i] (+ router_bias[r]), accumulated
//   in f32 in index order, weights read in runs of RUN (8 where d is a multiple of 8,
//   else 1). One invocation per (t, r), 64 per workgroup. Also used with E = 1 for the
//   shared expert's sigmoid gate.
// route: per token, scores from router logits (softmax or sigmoid), top-k experts with
//   a deterministic order (higher key first, lower expert index on ties), optional
//   group-limited selection, then the k routing weights. Unselectable slots (NaN keys)
//   get SENTINEL and weight 0. One invocation per token, 64 per workgroup; O(k * E) work
//   per token, no per-expert private arrays, so E is unbounded.
// route_fused (decode): one workgroup per token; invocation i writes logits i, i + 64,
//   ... (router_logits' sums, bit for bit), then after a storage barrier invocation 0
//   selects as route does. One dispatch instead of two or three.
// Layout: x [T, d] f32; w [E, d] weights (WEIGHT_DTYPE); router_bias [E] f32 (read when
// has_router_bias); logits [T, E] f32; bias [E] f32 (selection key only, read when
// has_bias); ids [T, k] u32; weights [T, k] f32.
//! weights: w

struct RoutingParams {
    tokens: u32,
    experts: u32,
    top_k: u32,
    scoring: u32,       // 0 = softmax, 1 = sigmoid
    order: u32,         // 0 = score all then top-k, 1 = top-k on logits then softmax over the k
    renormalize: u32,   // order 0: divide the k weights by their sum
    has_bias: u32,      // add bias[e] to the selection key (not to the weight)
    n_group: u32,       // > 1: group-limited selection
    topk_group: u32,
    group_score: u32,   // 0 = max key in group, 1 = sum of the group's top two keys
    dim: u32,           // d, the router's input width
    has_router_bias: u32, // add router_bias[e] to the logits
    scaling: f32,
    _pad2: f32,
    _pad3: f32,
    _pad4: f32,
}

@group(0) @binding(0) var<uniform> p: RoutingParams;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> weights: array<f32>;
@group(0) @binding(5) var<storage, read> x: array<f32>;
@group(0) @binding(6) var<storage, read> w: array<u32>;
@group(0) @binding(7) var<storage, read> router_bias: array<f32>;

override RUN: u32 = 1u;

const MAX_GROUPS: u32 = 64u;

var<private> row_base: u32;
var<private> row_max: f32;
var<private> row_sum: f32;

// The routing score of expert e: softmax probability, sigmoid, or (order 1) the logit.
fn score(e: u32) -> f32 {
    let l = logits[row_base + e];
    if (p.scoring == 1u) {
        return 1.0 / (1.0 + exp(-l));
    }
    if (p.order == 1u) {
        return l;
    }
    return exp(l - row_max) / row_sum;
}

// The selection key. Without bias or groups it is the logit itself: every scoring is
// monotonic in it, and comparing logits is exact.
fn key(e: u32) -> f32 {
    if (p.has_bias == 0u && p.n_group <= 1u) {
        return logits[row_base + e];
    }
    var k = score(e);
    if (p.has_bias == 1u) {
        k += bias[e];
    }
    return k;
}

// Strict selection order: a comes before b.
fn before(ka: f32, a: u32, kb: f32, b: u32) -> bool {
    return ka > kb || (ka == kb && a < b);
}

// Router logit r of token t (the bias added last).
fn router_logit(t: u32, r: u32) -> f32 {
    let xb = t * p.dim;
    let wb = r * p.dim;
    var acc = 0.0;
    if (RUN == 1u) {
        for (var i = 0u; i < p.dim; i++) {
            acc += x[xb + i] * w_at(wb + i);
        }
    } else {
        for (var i = 0u; i < p.dim; i += 8u) {
            let v = w_at8(wb + i);
            // In index order, as the RUN = 1 loop.
            let at = xb + i;
            acc += x[at] * v.lo.x;
            acc += x[at + 1u] * v.lo.y;
            acc += x[at + 2u] * v.lo.z;
            acc += x[at + 3u] * v.lo.w;
            acc += x[at + 4u] * v.hi.x;
            acc += x[at + 5u] * v.hi.y;
            acc += x[at + 6u] * v.hi.z;
            acc += x[at + 7u] * v.hi.w;
        }
    }
    if (p.has_router_bias == 1u) {
        acc += router_bias[r];
    }
    return acc;
}

@compute @workgroup_size(64)
fn router_logits(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_workgroup(wid, nwg) * 64u + lid;
    if (idx < p.tokens * p.experts) {
        logits[idx] = router_logit(idx / p.experts, idx % p.experts);
    }
}

@compute @workgroup_size(64)
fn route(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = linear_workgroup(wid, nwg) * 64u + lid;
    if (t < p.tokens) {
        select_experts(t);
    }
}

@compute @workgroup_size(64)
fn route_fused(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = linear_workgroup(wid, nwg);
    if (t >= p.tokens) {
        return;
    }
    for (var r = lid; r < p.experts; r += 64u) {
        logits[t * p.experts + r] = router_logit(t, r);
    }
    storageBarrier();
    if (lid == 0u) {
        select_experts(t);
    }
}

// Selects token t's experts from its logits and writes their ids and weights.
fn select_experts(t: u32) {
    let n = p.experts;
    row_base = t * n;
    row_max = logits[row_base];
    for (var e = 1u; e < n; e++) {
        row_max = max(row_max, logits[row_base + e]);
    }
    row_sum = 0.0;
    for (var e = 0u; e < n; e++) {
        row_sum += exp(logits[row_base + e] - row_max);
    }

    // Group-limited selection: keep the topk_group best groups.
    var group_allowed: array<bool, MAX_GROUPS>;
    let grouped = p.n_group > 1u;
    let group_size = n / max(p.n_group, 1u);
    if (grouped) {
        var group_keys: array<f32, MAX_GROUPS>;
        for (var g = 0u; g < p.n_group; g++) {
            var best1 = key(g * group_size);
            var best2 = -3.0e38;
            for (var i = 1u; i < group_size; i++) {
                let k = key(g * group_size + i);
                if (k > best1) {
                    best2 = best1;
                    best1 = k;
                } else if (k > best2) {
                    best2 = k;
                }
            }
            group_keys[g] = select(best1, best1 + best2, p.group_score == 1u);
        }
        var prev_g = SENTINEL;
        var prev_k = 0.0;
        for (var j = 0u; j < p.topk_group; j++) {
            var best_g = SENTINEL;
            var best_k = 0.0;
            for (var g = 0u; g < p.n_group; g++) {
                let k = group_keys[g];
                if (prev_g != SENTINEL && !before(prev_k, prev_g, k, g)) {
                    continue;
                }
                if (best_g == SENTINEL || before(k, g, best_k, best_g)) {
                    best_g = g;
                    best_k = k;
                }
            }
            if (best_g == SENTINEL) {
                break;
            }
            group_allowed[best_g] = true;
            prev_g = best_g;
            prev_k = best_k;
        }
    }

    // Top-k: slot j takes the best expert that comes after slot j-1's expert.
    let out = t * p.top_k;
    var prev_e = SENTINEL;
    var prev_k = 0.0;
    for (var j = 0u; j < p.top_k; j++) {
        var best_e = SENTINEL;
        var best_k = 0.0;
        if (j == 0u || prev_e != SENTINEL) {
            for (var e = 0u; e < n; e++) {
                if (grouped && !group_allowed[e / group_size]) {
                    continue;
                }
                let k = key(e);
                if (prev_e != SENTINEL && !before(prev_k, prev_e, k, e)) {
                    continue;
                }
                if (best_e == SENTINEL || before(k, e, best_k, best_e)) {
                    best_e = e;
                    best_k = k;
                }
            }
        }
        ids[out + j] = best_e;
        prev_e = best_e;
        prev_k = best_k;
    }

    // Weights of the chosen experts.
    if (p.order == 1u) {
        var top = -3.0e38;
        for (var j = 0u; j < p.top_k; j++) {
            let e = ids[out + j];
            if (e != SENTINEL) {
                top = max(top, logits[row_base + e]);
            }
        }
        var sum = 0.0;
        for (var j = 0u; j < p.top_k; j++) {
            let e = ids[out + j];
            var v = 0.0;
            if (e != SENTINEL) {
                v = exp(logits[row_base + e] - top);
            }
            weights[out + j] = v;
            sum += v;
        }
        for (var j = 0u; j < p.top_k; j++) {
            weights[out + j] = weights[out + j] / sum * p.scaling;
        }
    } else {
        var sum = 0.0;
        for (var j = 0u; j < p.top_k; j++) {
            let e = ids[out + j];
            var v = 0.0;
            if (e != SENTINEL) {
                v = score(e);
            }
            weights[out + j] = v;
            sum += v;
        }
        for (var j = 0u; j < p.top_k; j++) {
            var v = weights[out + j];
            if (p.renormalize == 1u) {
                v = v / sum;
            }
            weights[out + j] = v * p.scaling;
        }
    }
}

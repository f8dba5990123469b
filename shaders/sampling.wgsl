// Choosing tokens from logits, one row at a time: `argmax` (greedy) and `sample`
// (temperature, top-k, top-p and a draw). Layout: logits [rows, len] f32; result [rows]
// u32.

struct RowParams {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: RowParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;

var<workgroup> best_value: array<f32, 256>;
var<workgroup> best_index: array<u32, 256>;

// (va, ia) wins over (vb, ib); NaN never wins.
fn wins(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    return ib == SENTINEL || va > vb || (va == vb && ia < ib);
}

// Greedy: result[r] = argmax_i logits[r, i] (lowest index among equal maxima).
// Mapping: one 256-invocation workgroup per row; strided scans, then a fixed-order tree
// reduction of (value, index) pairs.
@compute @workgroup_size(256)
fn argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;
    let base = row * p.len;
    var v = 0.0;
    var idx = SENTINEL;
    for (var i = lid; i < p.len; i += 256u) {
        let x = logits[base + i];
        if (x == x && wins(x, i, v, idx)) {
            v = x;
            idx = i;
        }
    }
    best_value[lid] = v;
    best_index[lid] = idx;
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            let ov = best_value[lid + stride];
            let oi = best_index[lid + stride];
            if (oi != SENTINEL && wins(ov, oi, best_value[lid], best_index[lid])) {
                best_value[lid] = ov;
                best_index[lid] = oi;
            }
        }
    }
    if (lid == 0u) {
        result[row] = best_index[0];
    }
}

// Sampling: result[r] = a token drawn from row r's logits under settings[r]:
// weights w = exp((l - max) / temperature) over the finite logits; A = the top_k most
// likely (0 = all; larger logit first, lower index first among equal ones); B = the
// smallest run of A, most likely first, whose weight reaches top_p of A's; then the
// token of B (walked in index order) whose weight interval holds uniform * weight(B).
// Temperature 0 (or not a number) is greedy. details[r] = (token, |A|, |B|, weight(B)
// as f32 bits). No sorting: A's and B's edges are found as cuts in the order of the
// logits' keys (a radix select of the k-th key over 8-bit digits for top-k; a 9-way
// search of the key for top-p), and equal logits at a cut are taken lowest index
// first. Every sum has a fixed order (lanes' chunks in index order, then a fixed tree
// or the lanes in order), so a row gives the same token every run.
// Mapping: one 256-invocation workgroup per row; lane l owns the l-th contiguous chunk
// of the row, so index order is lane order, then order within a lane.

struct RowSampling {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    uniform: f32,
}

@group(0) @binding(3) var<storage, read> settings: array<RowSampling>;
@group(0) @binding(4) var<storage, read_write> details: array<u32>;

const LANES: u32 = 256u;
const SEARCH_WAYS: u32 = 8u;

var<workgroup> row_settings: RowSampling;
var<workgroup> lane_words: array<u32, 256>;
var<workgroup> lane_counts: array<u32, 256>;
var<workgroup> lane_masses: array<array<f32, 256>, 8>;
var<workgroup> digit_counts: array<atomic<u32>, 256>;
// What one lane decided, for every lane to read (through workgroupUniformLoad).
var<workgroup> decided: vec4<u32>;

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// A key that orders f32 values as unsigned integers (-0 just below +0).
fn order_key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b >> 31u) == 1u);
}

fn key_value(key: u32) -> f32 {
    return bitcast<f32>(select(~key, key & 0x7fffffffu, (key >> 31u) == 1u));
}

// A's or B's edge: keys above `key` are kept, and of those equal to it the first
// `quota` in index order.
struct Cut {
    key: u32,
    quota: u32,
}

fn keeps(cut: Cut, key: u32, tie_rank: u32) -> bool {
    return key > cut.key || (key == cut.key && tie_rank < cut.quota);
}

// Each lane's `value` summed over the lanes before it (x) and over all lanes (y).
fn lane_prefix(lid: u32, value: u32) -> vec2<u32> {
    workgroupBarrier();
    lane_counts[lid] = value;
    for (var offset = 1u; offset < LANES; offset *= 2u) {
        workgroupBarrier();
        var add = 0u;
        if (lid >= offset) {
            add = lane_counts[lid - offset];
        }
        workgroupBarrier();
        lane_counts[lid] += add;
    }
    workgroupBarrier();
    return vec2<u32>(lane_counts[lid] - value, lane_counts[LANES - 1u]);
}

// Sums lane_masses[j][*] over the lanes for every j, in a fixed tree, into
// lane_masses[j][0].
fn sum_lane_masses(lid: u32) {
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            for (var j = 0u; j < SEARCH_WAYS; j++) {
                lane_masses[j][lid] += lane_masses[j][lid + stride];
            }
        }
    }
    workgroupBarrier();
}

// How many logits of the row before this lane's chunk have key `key`.
fn ties_before(lid: u32, base: u32, begin: u32, end: u32, key: u32) -> u32 {
    var ties = 0u;
    for (var i = begin; i < end; i++) {
        let x = logits[base + i];
        ties += u32(is_finite(x) && order_key(x) == key);
    }
    return lane_prefix(lid, ties).x;
}

struct Kept {
    mass: f32,
    count: u32,
}

// The weight and number of the logits of this lane's chunk that `cut` keeps,
// `tie_base` being the logits equal to its key before the chunk.
fn kept_in_chunk(base: u32, begin: u32, end: u32, cut: Cut, tie_base: u32, top_logit: f32, temperature: f32) -> Kept {
    var mass = 0.0;
    var kept = 0u;
    var rank = tie_base;
    for (var i = begin; i < end; i++) {
        let x = logits[base + i];
        let key = order_key(x);
        if (is_finite(x)) {
            if (keeps(cut, key, rank)) {
                mass += exp((x - top_logit) / temperature);
                kept += 1u;
            }
            rank += u32(key == cut.key);
        }
    }
    return Kept(mass, kept);
}

@compute @workgroup_size(256)
fn sample(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;
    let base = row * p.len;
    if (lid == 0u) {
        row_settings = settings[row];
    }
    let s = workgroupUniformLoad(&row_settings);
    var temperature = s.temperature;
    var top_k = s.top_k;
    if (!(temperature > 0.0)) {
        temperature = 1.0;
        top_k = 1u;
    }
    let chunk = (p.len + LANES - 1u) / LANES;
    let begin = min(lid * chunk, p.len);
    let end = min(begin + chunk, p.len);

    // The largest key and the number of finite logits.
    var top = 0u;
    var finite = 0u;
    for (var i = begin; i < end; i++) {
        let x = logits[base + i];
        if (is_finite(x)) {
            top = max(top, order_key(x));
            finite += 1u;
        }
    }
    lane_words[lid] = top;
    lane_counts[lid] = finite;
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            lane_words[lid] = max(lane_words[lid], lane_words[lid + stride]);
            lane_counts[lid] += lane_counts[lid + stride];
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        decided = vec4<u32>(lane_words[0], lane_counts[0], 0u, 0u);
    }
    let found = workgroupUniformLoad(&decided);
    let top_key = found.x;
    let finite_total = found.y;
    if (finite_total == 0u) {
        if (lid == 0u) {
            result[row] = 0u;
            details[row * 4u] = 0u;
            details[row * 4u + 1u] = 0u;
            details[row * 4u + 2u] = 0u;
            details[row * 4u + 3u] = 0u;
        }
        return;
    }
    let top_logit = key_value(top_key);

    // Top-k: the k-th key, one 8-bit digit at a time (most significant first), counting
    // the keys that share the digits found so far. Lane l counts digit 255 - l, so the
    // lanes before it hold the larger digits.
    var cut = Cut(0u, 0xffffffffu);
    var kept_top_k = finite_total;
    // Each lane's count of logits equal to the cut key before its chunk.
    var tie_base = 0u;
    if (top_k > 0u && top_k < finite_total) {
        var prefix = 0u;
        var need = top_k;
        for (var round = 0u; round < 4u; round++) {
            let shift = 24u - 8u * round;
            let high = select(0xffffffffu << (shift + 8u), 0u, round == 0u);
            atomicStore(&digit_counts[lid], 0u);
            workgroupBarrier();
            for (var i = begin; i < end; i++) {
                let x = logits[base + i];
                let key = order_key(x);
                if (is_finite(x) && (key & high) == prefix) {
                    atomicAdd(&digit_counts[(key >> shift) & 255u], 1u);
                }
            }
            workgroupBarrier();
            let count = atomicLoad(&digit_counts[255u - lid]);
            let larger = lane_prefix(lid, count).x;
            if (larger < need && larger + count >= need) {
                decided = vec4<u32>(255u - lid, need - larger, 0u, 0u);
            }
            let digit = workgroupUniformLoad(&decided);
            prefix |= digit.x << shift;
            need = digit.y;
        }
        cut = Cut(prefix, need);
        kept_top_k = top_k;
        tie_base = ties_before(lid, base, begin, end, cut.key);
    }

    // Top-p: the largest key P whose kept logits at or above it weigh at least
    // top_p * weight(A), narrowed 9 ways a pass; then as many logits equal to P as
    // reach that weight (they weigh the same).
    if (s.top_p < 1.0 && kept_top_k > 1u) {
        let mass = kept_in_chunk(base, begin, end, cut, tie_base, top_logit, temperature).mass;
        for (var j = 0u; j < SEARCH_WAYS; j++) {
            lane_masses[j][lid] = select(0.0, mass, j == 0u);
        }
        sum_lane_masses(lid);
        if (lid == 0u) {
            decided = vec4<u32>(bitcast<u32>(s.top_p * lane_masses[0][0]), 0u, 0u, 0u);
        }
        let goal = bitcast<f32>(workgroupUniformLoad(&decided).x);
        // f(x) = weight of the kept logits with key >= x; f(lo) >= goal, and the
        // answer is in [lo, hi]. Keys above the cut are all kept.
        var lo = cut.key;
        var hi = top_key;
        // f(hi + 1): the weight of the logits above the answer's range.
        var above = 0.0;
        var masses: array<f32, 8>;
        loop {
            if (lo >= hi) {
                break;
            }
            let step = max((hi - lo) / (SEARCH_WAYS + 1u), 1u);
            // Zeroed by stores each pass: Chromium's WebGPU (on SwiftShader) kept the
            // last pass's sums in an array declared, so zeroed, inside the loop.
            for (var j = 0u; j < SEARCH_WAYS; j++) {
                masses[j] = 0.0;
            }
            for (var i = begin; i < end; i++) {
                let x = logits[base + i];
                let key = order_key(x);
                if (is_finite(x) && key > lo) {
                    let w = exp((x - top_logit) / temperature);
                    for (var j = 0u; j < SEARCH_WAYS; j++) {
                        if (key >= min(lo + step * (j + 1u), hi)) {
                            masses[j] += w;
                        }
                    }
                }
            }
            for (var j = 0u; j < SEARCH_WAYS; j++) {
                lane_masses[j][lid] = masses[j];
            }
            sum_lane_masses(lid);
            if (lid == 0u) {
                // The last threshold reaching the goal is the new lo; the first one
                // short of it, less one, the new hi (its weight: the new `above`).
                var new_lo = lo;
                var new_hi = hi;
                var new_above = above;
                for (var j = 0u; j < SEARCH_WAYS; j++) {
                    let threshold = min(lo + step * (j + 1u), hi);
                    if (lane_masses[j][0] >= goal) {
                        new_lo = threshold;
                    } else if (new_hi == hi && threshold > new_lo) {
                        new_hi = threshold - 1u;
                        new_above = lane_masses[j][0];
                    }
                }
                decided = vec4<u32>(new_lo, new_hi, bitcast<u32>(new_above), 0u);
            }
            let narrowed = workgroupUniformLoad(&decided);
            lo = narrowed.x;
            hi = narrowed.y;
            above = bitcast<f32>(narrowed.z);
        }
        // P = lo: as many logits equal to it as reach the goal beyond `above` (no more
        // than A keeps when P is A's edge; a quota past their number keeps them all).
        if (lid == 0u) {
            let tie_weight = exp((key_value(lo) - top_logit) / temperature);
            let wanted = clamp(ceil((goal - above) / tie_weight), 1.0, 4294967040.0);
            decided = vec4<u32>(lo, u32(wanted), 0u, 0u);
        }
        let edge = workgroupUniformLoad(&decided);
        if (edge.x != cut.key) {
            tie_base = ties_before(lid, base, begin, end, edge.x);
            cut = Cut(edge.x, edge.y);
        } else {
            cut = Cut(edge.x, min(edge.y, cut.quota));
        }
    }

    // The draw: each lane's weight of B; lane 0 finds the lane whose interval holds
    // uniform * weight(B) (or, past the end by rounding, the last lane of any weight),
    // and that lane walks its chunk.
    let kept = kept_in_chunk(base, begin, end, cut, tie_base, top_logit, temperature);
    workgroupBarrier();
    lane_masses[0][lid] = kept.mass;
    lane_counts[lid] = kept.count;
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0.0;
        var kept_total = 0u;
        for (var l = 0u; l < LANES; l++) {
            total += lane_masses[0][l];
            kept_total += lane_counts[l];
        }
        var left = s.uniform * total;
        var lane = LANES;
        var last = 0u;
        for (var l = 0u; l < LANES; l++) {
            let m = lane_masses[0][l];
            if (m > 0.0) {
                last = l;
                if (lane == LANES) {
                    if (left < m) {
                        lane = l;
                    } else {
                        left -= m;
                    }
                }
            }
        }
        if (lane == LANES) {
            // Past every lane by rounding: the last kept token of any weight (no
            // weight passes 1, so the walk never stops before the end).
            lane = last;
            left = 2.0;
        }
        decided = vec4<u32>(lane, bitcast<u32>(left), kept_total, bitcast<u32>(total));
        details[row * 4u + 1u] = kept_top_k;
        details[row * 4u + 2u] = kept_total;
        details[row * 4u + 3u] = bitcast<u32>(total);
    }
    let draw = workgroupUniformLoad(&decided);
    if (lid == draw.x) {
        var left = bitcast<f32>(draw.y);
        var token = SENTINEL;
        var last = begin;
        var rank = tie_base;
        for (var i = begin; i < end; i++) {
            let x = logits[base + i];
            let key = order_key(x);
            if (is_finite(x)) {
                if (keeps(cut, key, rank)) {
                    let w = exp((x - top_logit) / temperature);
                    if (left < w) {
                        token = i;
                        break;
                    }
                    left -= w;
                    if (w > 0.0) {
                        last = i;
                    }
                }
                rank += u32(key == cut.key);
            }
        }
        if (token == SENTINEL) {
            token = last;
        }
        result[row] = token;
        details[row * 4u] = token;
    }
}

// Greedy sampling: result[r] = argmax_i logits[r, i] (lowest index among equal maxima).
// Layout: logits [rows, len] f32; result [rows] u32.
// Mapping: one 256-invocation workgroup per row; strided scans, then a fixed-order tree
// reduction of (value, index) pairs.

struct ArgmaxParams {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: ArgmaxParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;

var<workgroup> best_value: array<f32, 256>;
var<workgroup> best_index: array<u32, 256>;

// (va, ia) wins over (vb, ib); NaN never wins.
fn wins(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    return ib == SENTINEL || va > vb || (va == vb && ia < ib);
}

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

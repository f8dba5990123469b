// Capacity limit (Switch/GShard): each expert keeps at most `capacity` assignments,
// those with the highest routing weight (ties: lower assignment index kept). Dropped
// assignments become SENTINEL in routed_ids and are counted per expert.
// Layout: ids, weights [N = T * k]; routed_ids [N]; dropped [E] (zeroed by the host).
// Mapping: one invocation per assignment, 64 per workgroup; O(N) scan each, so
// O(N^2) in all: meant for the modest N of training-style capacity routing.

struct CapacityParams {
    assignments: u32,
    capacity: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: CapacityParams;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read_write> routed_ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> dropped: array<atomic<u32>>;

@compute @workgroup_size(64)
fn apply_capacity(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let a = linear_workgroup(wid, nwg) * 64u + lid;
    if (a >= p.assignments) {
        return;
    }
    let e = ids[a];
    if (e == SENTINEL) {
        routed_ids[a] = SENTINEL;
        return;
    }
    let w = weights[a];
    var rank = 0u;
    for (var b = 0u; b < p.assignments && rank < p.capacity; b++) {
        if (ids[b] == e) {
            let wb = weights[b];
            if (wb > w || (wb == w && b < a)) {
                rank++;
            }
        }
    }
    if (rank >= p.capacity) {
        routed_ids[a] = SENTINEL;
        atomicAdd(&dropped[e], 1u);
    } else {
        routed_ids[a] = e;
    }
}

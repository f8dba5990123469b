// The split GEMV's reduction with subgroup operations (adapters with the SUBGROUP
// feature): composed into expert_gemv.wgsl at its `//! part: gemv_reduce` line.

// The ids of an invocation the reduction needs.
struct Lanes {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
}

// Subgroups of a 64-invocation workgroup: subgroups have at least 4 invocations
// (wgpu's MINIMUM_SUBGROUP_MIN_SIZE).
const MAX_SUBGROUPS: u32 = 16u;
// Per-subgroup sums [MAX_SUBGROUPS][SLOT_STRIDE].
var<workgroup> subgroup_partial: array<f32, 528>; // MAX_SUBGROUPS * SLOT_STRIDE

// Sums each slot s < `slots` over the WG invocations' partials (partial[i * SLOT_STRIDE
// + s] of invocation i) into partial[s] (slots <= WG): subgroupAdd within each subgroup
// (reading the invocation's own partials, so no barrier first), then, after one
// barrier, the subgroups' sums in subgroup order. Same order for every slot, so a
// row's sum still does not depend on the rows and tokens beside it.
fn reduce_partials(lanes: Lanes, slots: u32) {
    for (var s = 0u; s < slots; s++) {
        let sum = subgroupAdd(partial[lanes.lid * SLOT_STRIDE + s]);
        if (lanes.lane == 0u) {
            subgroup_partial[lanes.subgroup * SLOT_STRIDE + s] = sum;
        }
    }
    workgroupBarrier();
    var sum = 0.0;
    if (lanes.lid < slots) {
        for (var g = 0u; g < min(lanes.subgroups, MAX_SUBGROUPS); g++) {
            sum += subgroup_partial[g * SLOT_STRIDE + lanes.lid];
        }
        // Every read of `partial` above came before the barrier: no second one needed.
        partial[lanes.lid] = sum;
    }
    workgroupBarrier();
}

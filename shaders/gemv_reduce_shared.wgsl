// The split GEMV's reduction through shared memory alone (adapters without subgroups,
// e.g. every browser through wgpu): composed into expert_gemv.wgsl at its
// `//! part: gemv_reduce` line.

// The ids of an invocation the reduction needs.
struct Lanes {
    @builtin(local_invocation_index) lid: u32,
}

// Sums each slot s < `slots` over the WG invocations' partials (partial[i * SLOT_STRIDE
// + s] of invocation i), in invocation order, into partial[s] (slots <= WG). One
// barrier before the sums instead of a tree's six, which dominate on CPU adapters.
fn reduce_partials(lanes: Lanes, slots: u32) {
    let lid = lanes.lid;
    workgroupBarrier();
    var sum = 0.0;
    if (lid < slots) {
        for (var i = 0u; i < WG; i++) {
            sum += partial[i * SLOT_STRIDE + lid];
        }
    }
    workgroupBarrier();
    if (lid < slots) {
        partial[lid] = sum;
    }
    workgroupBarrier();
}

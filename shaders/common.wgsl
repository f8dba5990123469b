// Helpers the host prepends to every kernel file of shaders/ (see src/gpu/kernel.rs).

// Weight storage: weights are bound as array<u32> words; WEIGHT_DTYPE says how to decode.
//   0 = f32 (one value per word), 1 = f16, 2 = bf16 (two values per word, element 0 in
//   the low 16 bits). Half types need no shader-f16 feature this way.
override WEIGHT_DTYPE: u32 = 0u;

// "No expert / no row": padded or dropped entries of index buffers.
const SENTINEL: u32 = 0xffffffffu;

// Index of the word holding weight element i.
fn weight_word(i: u32) -> u32 {
    if (WEIGHT_DTYPE == 0u) {
        return i;
    }
    return i >> 1u;
}

// Value of weight element i, given the word that holds it.
fn decode_weight(word: u32, i: u32) -> f32 {
    if (WEIGHT_DTYPE == 1u) {
        return unpack2x16float(word)[i & 1u];
    }
    if (WEIGHT_DTYPE == 2u) {
        let bits = select(word & 0xffffu, word >> 16u, (i & 1u) == 1u);
        return bitcast<f32>(bits << 16u);
    }
    return bitcast<f32>(word);
}

// Linear workgroup index of a grid split over x and y (x <= 65535).
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

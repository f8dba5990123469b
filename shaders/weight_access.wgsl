// Weight decoding, instantiated by the host once per weight array a kernel binds: a
// kernel file that says `//! weights: w0, w1` gets `fn w0_at(i: u32) -> f32` and
// `fn w1_at(i: u32) -> f32` (this text with WEIGHTS replaced by each name), so every
// kernel — GEMV, grouped matmul, embedding, router — decodes formats the same way.
// Weights are bound as array<u32> words; WEIGHT_DTYPE (common.wgsl) picks the format:
//   0 f32: one value per word.
//   1 f16, 2 bf16: two values per word, element 0 in the low 16 bits.
//   3 q8_0: blocks of 32 elements in 34 bytes (f16 scale d, then 32 x i8 q): q * d.
//   4 q4_0: blocks of 32 elements in 18 bytes (f16 scale d, then 16 bytes: element j
//     in the low nibble of byte j, element j + 16 in the high nibble): (q - 8) * d.
// Block formats are read in place as u32 words (blocks are 2 bytes off word alignment
// every other block; the scale never straddles a word because blocks start on even
// bytes). None of this needs shader-f16.
fn WEIGHTS_at(i: u32) -> f32 {
    switch WEIGHT_DTYPE {
        case 1u: {
            return unpack2x16float(WEIGHTS[i >> 1u])[i & 1u];
        }
        case 2u: {
            let word = WEIGHTS[i >> 1u];
            return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
        }
        case 3u: {
            let block = (i >> 5u) * 34u;
            let d = unpack2x16float(WEIGHTS[block >> 2u])[(block >> 1u) & 1u];
            let at = block + 2u + (i & 31u);
            let q = (WEIGHTS[at >> 2u] >> ((at & 3u) * 8u)) & 0xffu;
            return f32(bitcast<i32>(q << 24u) >> 24u) * d;
        }
        case 4u: {
            let block = (i >> 5u) * 18u;
            let d = unpack2x16float(WEIGHTS[block >> 2u])[(block >> 1u) & 1u];
            let j = i & 31u;
            let at = block + 2u + (j & 15u);
            let byte = (WEIGHTS[at >> 2u] >> ((at & 3u) * 8u)) & 0xffu;
            let q = select(byte & 0xfu, byte >> 4u, j >= 16u);
            return (f32(q) - 8.0) * d;
        }
        default: {
            return bitcast<f32>(WEIGHTS[i]);
        }
    }
}

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
//   5 q4_k, 6 q5_k: superblocks of 256 in 144 / 176 bytes (f16 d, f16 dmin, 12 bytes
//     of packed 6-bit scales and mins of 8 sub-blocks of 32, [q5_k: 32 bytes of fifth
//     bits], 128 bytes of nibbles, sub-block 2g in the low and 2g + 1 in the high
//     nibbles of bytes 32g..32g+32): d * scale * q - dmin * min.
//   7 q6_k: superblocks of 256 in 210 bytes (128 bytes of low nibbles, 64 of 2-bit
//     highs, 16 i8 scales of 16-element groups, f16 d): d * scale * (q - 32).
//   8 mxfp4: blocks of 32 in 17 bytes (e8m0 scale byte, 16 bytes of e2m1 nibbles as
//     in q4_0): 2^(e - 128) * doubled e2m1 value.
//   9 q4_1, 10 q5_0, 11 q5_1: blocks of 32 in 20 / 22 / 24 bytes (f16 d, [f16 m],
//     [u32 of fifth bits, bit j for element j], 16 bytes of nibbles as in q4_0):
//     d * q + m, or d * (q - 16) for q5_0.
// Block formats are read in place as u32 words (a block may start at any byte; f16
// scales sit at even offsets, so they never straddle a word). None of this needs
// shader-f16. `WEIGHTS_at8(i)` decodes the run of 8 elements at i (a multiple of 8):
// the same values as eight `WEIGHTS_at`, with each scale read once.
fn WEIGHTS_byte(at: u32) -> u32 {
    return (WEIGHTS[at >> 2u] >> ((at & 3u) * 8u)) & 0xffu;
}

// The f16 at even byte offset `at`.
fn WEIGHTS_half(at: u32) -> f32 {
    return unpack2x16float(WEIGHTS[at >> 2u])[(at >> 1u) & 1u];
}

// The 4 bytes at byte offset `at` (any alignment), the byte at `at` in the low 8 bits.
// Branch-free (lanes of one SIMD batch may differ in alignment): it always reads the
// next word too (robust access keeps a read past the end harmless; the value is unused).
fn WEIGHTS_bytes4(at: u32) -> u32 {
    let word = at >> 2u;
    let shift = (at & 3u) * 8u;
    let low = WEIGHTS[word];
    let joined = (low >> shift) | (WEIGHTS[word + 1u] << ((32u - shift) & 31u));
    return select(joined, low, shift == 0u);
}

// The 8 bytes at byte offset `at` (any alignment), as two words: three word reads (the
// third may lie past the buffer's end when `at` is word-aligned; robust access keeps
// that read harmless, and its value is unused).
fn WEIGHTS_bytes8(at: u32) -> vec2<u32> {
    let word = at >> 2u;
    let shift = (at & 3u) * 8u;
    let a = WEIGHTS[word];
    let b = WEIGHTS[word + 1u];
    let c = WEIGHTS[word + 2u];
    let back = (32u - shift) & 31u;
    let joined = vec2<u32>((a >> shift) | (b << back), (b >> shift) | (c << back));
    return select(joined, vec2<u32>(a, b), shift == 0u);
}

// The 8 bytes at byte offset `at`, a multiple of 4: two word reads.
fn WEIGHTS_words2(at: u32) -> vec2<u32> {
    let word = at >> 2u;
    return vec2<u32>(WEIGHTS[word], WEIGHTS[word + 1u]);
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..8) of the superblock at byte
// `block` (a multiple of 16), from its 12 packed bytes read as three words: sub-blocks
// 0..3 take the low 6 bits of bytes j and j + 4, sub-blocks 4..7 the nibbles of byte
// j + 4 with the top 2 bits of bytes j - 4 and j. Branch-free (lanes may differ in j).
fn WEIGHTS_k_scale_min(block: u32, j: u32) -> vec2<u32> {
    // Local names must not be weight arrays' names (this text is instantiated per array).
    let word = (block + 4u) >> 2u;
    let bytes0 = WEIGHTS[word];
    let bytes4 = WEIGHTS[word + 1u];
    let bytes8 = WEIGHTS[word + 2u];
    let high = j >= 4u;
    let shift = (j & 3u) * 8u;
    let a = (select(bytes0, bytes4, high) >> shift) & 0xffu; // byte j
    let b = (select(bytes4, bytes8, high) >> shift) & 0xffu; // byte j + 4
    let c = (bytes0 >> shift) & 0xffu; // byte j - 4 (high sub-blocks)
    let sc = select(a & 63u, (b & 15u) | ((c >> 6u) << 4u), high);
    let m = select(b & 63u, (b >> 4u) | ((a >> 6u) << 4u), high);
    return vec2<u32>(sc, m);
}

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
            let q = WEIGHTS_byte(block + 2u + (i & 31u));
            return f32(bitcast<i32>(q << 24u) >> 24u) * WEIGHTS_half(block);
        }
        case 4u: {
            let block = (i >> 5u) * 18u;
            let j = i & 31u;
            let byte = WEIGHTS_byte(block + 2u + (j & 15u));
            let q = select(byte & 0xfu, byte >> 4u, j >= 16u);
            return (f32(q) - 8.0) * WEIGHTS_half(block);
        }
        case 5u, 6u: {
            let five = WEIGHT_DTYPE == 6u;
            let block = (i >> 8u) * select(144u, 176u, five);
            let idx = i & 255u;
            let j = idx >> 5u;
            let l = idx & 31u;
            let scale_min = WEIGHTS_k_scale_min(block, j);
            let sc = scale_min.x;
            let m = scale_min.y;
            let qs = block + select(16u, 48u, five);
            let byte = WEIGHTS_byte(qs + (j >> 1u) * 32u + l);
            var q = select(byte & 15u, byte >> 4u, (j & 1u) == 1u);
            if (five) {
                q |= ((WEIGHTS_byte(block + 16u + l) >> j) & 1u) << 4u;
            }
            let scale = WEIGHTS_half(block) * f32(sc);
            let min = WEIGHTS_half(block + 2u) * f32(m);
            return scale * f32(q) - min;
        }
        case 7u: {
            let block = (i >> 8u) * 210u;
            let idx = i & 255u;
            let h = idx >> 7u;
            let r = idx & 127u;
            let low = (WEIGHTS_byte(block + h * 64u + (r & 63u)) >> (4u * (r >> 6u))) & 15u;
            let high = (WEIGHTS_byte(block + 128u + h * 32u + (r & 31u)) >> (2u * (r >> 5u))) & 3u;
            let q = i32(low | (high << 4u)) - 32;
            let sc = bitcast<i32>(WEIGHTS_byte(block + 192u + (idx >> 4u)) << 24u) >> 24u;
            return WEIGHTS_half(block + 208u) * f32(sc) * f32(q);
        }
        case 9u, 10u, 11u: {
            let has_min = WEIGHT_DTYPE != 10u;
            let five = WEIGHT_DTYPE != 9u;
            let size = select(select(24u, 22u, WEIGHT_DTYPE == 10u), 20u, WEIGHT_DTYPE == 9u);
            let block = (i >> 5u) * size;
            let j = i & 31u;
            var at = block + select(2u, 4u, has_min);
            var high = 0u;
            if (five) {
                let qh = WEIGHTS_byte(at) | (WEIGHTS_byte(at + 1u) << 8u) | (WEIGHTS_byte(at + 2u) << 16u) | (WEIGHTS_byte(at + 3u) << 24u);
                high = ((qh >> j) & 1u) << 4u;
                at += 4u;
            }
            let byte = WEIGHTS_byte(at + (j & 15u));
            let q = select(byte & 15u, byte >> 4u, j >= 16u) | high;
            let d = WEIGHTS_half(block);
            if (WEIGHT_DTYPE == 10u) {
                return d * f32(i32(q) - 16);
            }
            return d * f32(q) + WEIGHTS_half(block + 2u);
        }
        case 8u: {
            let block = (i >> 5u) * 17u;
            let e = WEIGHTS_byte(block);
            let d = bitcast<f32>(select((e - 1u) << 23u, 0x00200000u << e, e < 2u));
            let j = i & 31u;
            let byte = WEIGHTS_byte(block + 1u + (j & 15u));
            let q = select(byte & 15u, byte >> 4u, j >= 16u);
            // The doubled e2m1 values, index 8 a positive zero (as ggml's table).
            var values = array<f32, 16>(0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 0.0, -1.0, -2.0, -3.0, -4.0, -6.0, -8.0, -12.0);
            return d * values[q];
        }
        default: {
            return bitcast<f32>(WEIGHTS[i]);
        }
    }
}

// Runs of 8 and of 32. A run decoder is split in two: `WEIGHTS_scales(i)` reads the
// scales of the 32 elements from i & ~31 (one block, or one sub-block of a superblock,
// in every block format), and `WEIGHTS_body8(i, scales)` decodes the 8 elements at i
// (a multiple of 8) with them. `WEIGHTS_at8(i)` is both: the same values as eight
// `WEIGHTS_at`; a kernel walking a row in runs of 32 (K a multiple of 32) reads the
// scales once for four bodies. All of it is vector code without loops or local arrays:
// a JIT that neither unrolls loops nor keeps arrays in registers (SwiftShader's
// Subzero, the browser's fallback adapter) ran the looped form 3x slower (measured).
fn WEIGHTS_scales(i: u32) -> RunScales {
    switch WEIGHT_DTYPE {
        case 3u: {
            return RunScales(WEIGHTS_half((i >> 5u) * 34u), 0.0, 0u);
        }
        case 4u: {
            return RunScales(WEIGHTS_half((i >> 5u) * 18u), 0.0, 0u);
        }
        case 5u, 6u: {
            let block = (i >> 8u) * select(144u, 176u, WEIGHT_DTYPE == 6u);
            let scale_min = WEIGHTS_k_scale_min(block, (i & 255u) >> 5u);
            let d = unpack2x16float(WEIGHTS[block >> 2u]);
            return RunScales(d.x * f32(scale_min.x), d.y * f32(scale_min.y), 0u);
        }
        case 7u: {
            // The two 16-element groups' scales, each times d.
            let block = (i >> 8u) * 210u;
            let group = (i & 224u) >> 4u;
            let d = WEIGHTS_half(block + 208u);
            let sc0 = bitcast<i32>(WEIGHTS_byte(block + 192u + group) << 24u) >> 24u;
            let sc1 = bitcast<i32>(WEIGHTS_byte(block + 193u + group) << 24u) >> 24u;
            return RunScales(d * f32(sc0), d * f32(sc1), 0u);
        }
        case 8u: {
            let e = WEIGHTS_byte((i >> 5u) * 17u);
            return RunScales(bitcast<f32>(select((e - 1u) << 23u, 0x00200000u << e, e < 2u)), 0.0, 0u);
        }
        case 9u, 10u, 11u: {
            let block = (i >> 5u) * q_legacy_block_bytes();
            var m = 0.0;
            if (WEIGHT_DTYPE != 10u) {
                m = WEIGHTS_half(block + 2u);
            }
            var qh = 0u;
            if (WEIGHT_DTYPE != 9u) {
                qh = WEIGHTS_bytes4(block + select(2u, 4u, WEIGHT_DTYPE == 11u));
            }
            return RunScales(WEIGHTS_half(block), m, qh);
        }
        default: {
            return RunScales(0.0, 0.0, 0u);
        }
    }
}

fn WEIGHTS_body8(i: u32, s: RunScales) -> Run8 {
    switch WEIGHT_DTYPE {
        case 1u: {
            let word = i >> 1u;
            return Run8(vec4<f32>(unpack2x16float(WEIGHTS[word]), unpack2x16float(WEIGHTS[word + 1u])),
                vec4<f32>(unpack2x16float(WEIGHTS[word + 2u]), unpack2x16float(WEIGHTS[word + 3u])));
        }
        case 2u: {
            let word = i >> 1u;
            let a = vec4<u32>(WEIGHTS[word], WEIGHTS[word], WEIGHTS[word + 1u], WEIGHTS[word + 1u]);
            let b = vec4<u32>(WEIGHTS[word + 2u], WEIGHTS[word + 2u], WEIGHTS[word + 3u], WEIGHTS[word + 3u]);
            return Run8(bitcast<vec4<f32>>(bf16_pairs(a)), bitcast<vec4<f32>>(bf16_pairs(b)));
        }
        case 3u: {
            let bytes = WEIGHTS_bytes8((i >> 5u) * 34u + 2u + (i & 31u));
            return Run8(vec4<f32>(signed_bytes(bytes.x)) * s.a, vec4<f32>(signed_bytes(bytes.y)) * s.a);
        }
        case 4u: {
            let first = i & 31u;
            let bytes = WEIGHTS_bytes8((i >> 5u) * 18u + 2u + (first & 15u));
            let shift = select(0u, 4u, first >= 16u);
            return Run8((vec4<f32>(nibbles(bytes.x, shift)) - 8.0) * s.a, (vec4<f32>(nibbles(bytes.y, shift)) - 8.0) * s.a);
        }
        case 5u, 6u: {
            let five = WEIGHT_DTYPE == 6u;
            let block = (i >> 8u) * select(144u, 176u, five);
            let idx = i & 255u;
            let j = idx >> 5u;
            let first = idx & 31u;
            // Superblocks of 144 / 176 bytes and runs of 8 keep these reads word-aligned.
            let bytes = WEIGHTS_words2(block + select(16u, 48u, five) + (j >> 1u) * 32u + first);
            let shift = select(0u, 4u, (j & 1u) == 1u);
            var lo = nibbles(bytes.x, shift);
            var hi = nibbles(bytes.y, shift);
            if (five) {
                let highs = WEIGHTS_words2(block + 16u + first);
                lo |= byte_bits(highs.x, j, 1u) << vec4<u32>(4u);
                hi |= byte_bits(highs.y, j, 1u) << vec4<u32>(4u);
            }
            return Run8(s.a * vec4<f32>(lo) - s.b, s.a * vec4<f32>(hi) - s.b);
        }
        case 7u: {
            let block = (i >> 8u) * 210u;
            let idx = i & 255u;
            let h = idx >> 7u;
            let r = idx & 127u;
            let lows = WEIGHTS_bytes8(block + h * 64u + (r & 63u));
            let low_shift = 4u * (r >> 6u);
            let highs = WEIGHTS_bytes8(block + 128u + h * 32u + (r & 31u));
            let high_shift = 2u * (r >> 5u);
            let ds = select(s.a, s.b, (idx & 16u) != 0u);
            let lo = vec4<i32>(nibbles(lows.x, low_shift) | (byte_bits(highs.x, high_shift, 3u) << vec4<u32>(4u))) - 32;
            let hi = vec4<i32>(nibbles(lows.y, low_shift) | (byte_bits(highs.y, high_shift, 3u) << vec4<u32>(4u))) - 32;
            return Run8(ds * vec4<f32>(lo), ds * vec4<f32>(hi));
        }
        case 8u: {
            let first = i & 31u;
            let bytes = WEIGHTS_bytes8((i >> 5u) * 17u + 1u + (first & 15u));
            let shift = select(0u, 4u, first >= 16u);
            return Run8(s.a * doubled_e2m1(nibbles(bytes.x, shift)), s.a * doubled_e2m1(nibbles(bytes.y, shift)));
        }
        case 9u, 10u, 11u: {
            let first = i & 31u;
            let quants = (i >> 5u) * q_legacy_block_bytes() + select(select(4u, 6u, WEIGHT_DTYPE == 10u), 8u, WEIGHT_DTYPE == 11u);
            var bytes: vec2<u32>;
            if (WEIGHT_DTYPE == 10u) {
                bytes = WEIGHTS_bytes8(quants + (first & 15u));
            } else {
                // Blocks of 20 / 24 bytes: word-aligned quants.
                bytes = WEIGHTS_words2(quants + (first & 15u));
            }
            let shift = select(0u, 4u, first >= 16u);
            var lo = nibbles(bytes.x, shift);
            var hi = nibbles(bytes.y, shift);
            if (WEIGHT_DTYPE != 9u) {
                let qh = vec4<u32>(s.bits);
                lo |= ((qh >> (vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u)) << vec4<u32>(4u);
                hi |= ((qh >> (vec4<u32>(first) + vec4<u32>(4u, 5u, 6u, 7u))) & vec4<u32>(1u)) << vec4<u32>(4u);
            }
            if (WEIGHT_DTYPE == 10u) {
                return Run8(s.a * vec4<f32>(vec4<i32>(lo) - 16), s.a * vec4<f32>(vec4<i32>(hi) - 16));
            }
            return Run8(s.a * vec4<f32>(lo) + s.b, s.a * vec4<f32>(hi) + s.b);
        }
        default: {
            return Run8(bitcast<vec4<f32>>(vec4<u32>(WEIGHTS[i], WEIGHTS[i + 1u], WEIGHTS[i + 2u], WEIGHTS[i + 3u])),
                bitcast<vec4<f32>>(vec4<u32>(WEIGHTS[i + 4u], WEIGHTS[i + 5u], WEIGHTS[i + 6u], WEIGHTS[i + 7u])));
        }
    }
}

// Elements i..i+7, i a multiple of 8 (so the run lies in one block of every format).
fn WEIGHTS_at8(i: u32) -> Run8 {
    return WEIGHTS_body8(i, WEIGHTS_scales(i));
}

// Elements i..i+31, i a multiple of 32 in a block format (one block or sub-block): the
// scales read once for the four runs of 8.
fn WEIGHTS_at32(i: u32) -> Run32 {
    let s = WEIGHTS_scales(i);
    return Run32(WEIGHTS_body8(i, s), WEIGHTS_body8(i + 8u, s), WEIGHTS_body8(i + 16u, s), WEIGHTS_body8(i + 24u, s));
}

// The kernel's step of RUN (1 or 8) weights at i as a run: RUN = 1 gives element i
// alone, the rest zero (every file that names weight arrays sets RUN).
fn WEIGHTS_run8(i: u32) -> Run8 {
    if (RUN == 1u) {
        return Run8(vec4<f32>(WEIGHTS_at(i), 0.0, 0.0, 0.0), vec4<f32>(0.0));
    }
    return WEIGHTS_at8(i);
}

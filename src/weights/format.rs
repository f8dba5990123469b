//! Storage formats of weight matrices, and their CPU references: how many elements
//! a block holds and how many bytes it takes, how values are encoded (quantized) and
//! decoded, and which kernel variant reads them. Element formats (f32, f16, bf16) have
//! blocks of one element; ggml's block formats keep 32 elements with an f16 scale:
//! Q8_0 (34 bytes: scale, 32 x i8) and Q4_0 (18 bytes: scale, 16 bytes of nibbles,
//! element j in the low nibble of byte j, element j + 16 in its high nibble). Encoding
//! follows ggml's reference quantizers (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`)
//! bit for bit; decoding matches `gguf.quants.dequantize`. The K-quants hold 256
//! elements in superblocks: Q4_K (144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit scales
//! and mins for 8 sub-blocks of 32, 128 bytes of nibbles), Q5_K (176: the same plus 32
//! bytes of fifth bits), Q6_K (210: 128 bytes of low nibbles, 64 of high 2-bit pairs,
//! 16 i8 scales of 16-element groups, f16 d); MXFP4 (17 bytes per 32: an e8m0 scale
//! byte, 16 bytes of e2m1 nibbles). Q4_K is encoded by a port of ggml's
//! `quantize_row_q4_K_ref` (weighted min/scale search per sub-block, then 6-bit
//! scales); Q5_K and Q6_K only decode (they come from GGUF files).

use crate::error::{Error, Result};
use crate::gpu::DType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
    Mxfp4,
}

/// Elements per block of the ggml block formats.
pub const QK: usize = 32;
/// Elements per superblock of the K-quants.
pub const QK_K: usize = 256;
/// MXFP4's e2m1 values, doubled (ggml's `kvalues_mxfp4`).
const MXFP4_VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

impl WeightFormat {
    pub const ALL: [WeightFormat; 12] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::BF16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q5_0,
        WeightFormat::Q5_1,
        WeightFormat::Q4K,
        WeightFormat::Q5K,
        WeightFormat::Q6K,
        WeightFormat::Mxfp4,
    ];

    /// Elements per block.
    pub fn block_elements(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => 1,
            WeightFormat::Q8_0
            | WeightFormat::Q4_0
            | WeightFormat::Q4_1
            | WeightFormat::Q5_0
            | WeightFormat::Q5_1
            | WeightFormat::Mxfp4 => QK,
            WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::BF16 => 2,
            WeightFormat::Q8_0 => 2 + QK,
            WeightFormat::Q4_0 => 2 + QK / 2,
            WeightFormat::Q4_1 => 4 + QK / 2,
            WeightFormat::Q5_0 => 6 + QK / 2,
            WeightFormat::Q5_1 => 8 + QK / 2,
            WeightFormat::Q4K => 144,
            WeightFormat::Q5K => 176,
            WeightFormat::Q6K => 210,
            WeightFormat::Mxfp4 => 17,
        }
    }

    /// Whether [`WeightFormat::encode_into`] can produce this format.
    pub fn can_encode(self) -> bool {
        !matches!(
            self,
            WeightFormat::Q5K | WeightFormat::Q6K | WeightFormat::Q4_1 | WeightFormat::Q5_0 | WeightFormat::Q5_1
        )
    }

    /// Whether values are quantized in blocks with a scale.
    pub fn is_quantized(self) -> bool {
        self.block_elements() > 1
    }

    /// The smallest element count of at least `elements`, in whole blocks, whose bytes
    /// are a whole number of 32-bit words (so the next run starts word-aligned).
    pub fn word_aligned_elements(self, elements: usize) -> usize {
        let mut n = elements.next_multiple_of(self.block_elements());
        while !(n / self.block_elements() * self.block_bytes()).is_multiple_of(4) {
            n += self.block_elements();
        }
        n
    }

    /// Bytes that `elements` elements take (a whole number of blocks).
    pub fn bytes_for(self, elements: usize) -> Result<usize> {
        if !elements.is_multiple_of(self.block_elements()) {
            return Err(Error::Config(format!(
                "{elements} elements are not a whole number of {self:?} blocks of {}",
                self.block_elements()
            )));
        }
        Ok(elements / self.block_elements() * self.block_bytes())
    }

    /// The kernel variant that decodes this format: the `WEIGHT_DTYPE` override of
    /// shaders/common.wgsl.
    pub fn kernel_code(self) -> u32 {
        match self {
            WeightFormat::F32 => 0,
            WeightFormat::F16 => 1,
            WeightFormat::BF16 => 2,
            WeightFormat::Q8_0 => 3,
            WeightFormat::Q4_0 => 4,
            WeightFormat::Q4K => 5,
            WeightFormat::Q5K => 6,
            WeightFormat::Q6K => 7,
            WeightFormat::Mxfp4 => 8,
            WeightFormat::Q4_1 => 9,
            WeightFormat::Q5_0 => 10,
            WeightFormat::Q5_1 => 11,
        }
    }

    /// The format of a safetensors / torch dtype name (`F32`, `float16`, `bfloat16`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Some(WeightFormat::F32),
            "f16" | "float16" | "half" => Some(WeightFormat::F16),
            "bf16" | "bfloat16" => Some(WeightFormat::BF16),
            "q8_0" => Some(WeightFormat::Q8_0),
            "q4_0" => Some(WeightFormat::Q4_0),
            "q4_1" => Some(WeightFormat::Q4_1),
            "q5_0" => Some(WeightFormat::Q5_0),
            "q5_1" => Some(WeightFormat::Q5_1),
            "q4_k" => Some(WeightFormat::Q4K),
            "q5_k" => Some(WeightFormat::Q5K),
            "q6_k" => Some(WeightFormat::Q6K),
            "mxfp4" => Some(WeightFormat::Mxfp4),
            _ => None,
        }
    }

    /// The tensor element type of the same layout (element formats only).
    pub fn dtype(self) -> Option<DType> {
        match self {
            WeightFormat::F32 => Some(DType::F32),
            WeightFormat::F16 => Some(DType::F16),
            WeightFormat::BF16 => Some(DType::BF16),
            _ => None,
        }
    }

    /// The weight format of a float tensor type (u32 is none).
    pub fn of_dtype(dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 => Ok(WeightFormat::F32),
            DType::F16 => Ok(WeightFormat::F16),
            DType::BF16 => Ok(WeightFormat::BF16),
            DType::U32 => Err(Error::Config("u32 is not a weight format".into())),
        }
    }

    /// CPU reference decoder: the f32 values of `bytes` (whole blocks).
    pub fn dequantize(self, bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::with_capacity(bytes.len() / self.block_bytes() * self.block_elements());
        self.dequantize_into(bytes, &mut out);
        out
    }

    /// Appends the f32 values of `bytes` to `out`.
    pub fn dequantize_into(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            WeightFormat::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            WeightFormat::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            WeightFormat::BF16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            WeightFormat::Q8_0 => {
                for block in bytes.chunks_exact(self.block_bytes()) {
                    let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
                }
            }
            WeightFormat::Q4_0 => {
                for block in bytes.chunks_exact(self.block_bytes()) {
                    let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    let qs = &block[2..];
                    out.extend(qs.iter().map(|&q| ((q & 0x0f) as i32 - 8) as f32 * d));
                    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
                }
            }
            WeightFormat::Q4_1 | WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
                // (f16 d, [f16 m], [u32 fifth bits], 16 bytes of nibbles as in Q4_0)
                let (has_min, five) = match self {
                    WeightFormat::Q4_1 => (true, false),
                    WeightFormat::Q5_0 => (false, true),
                    _ => (true, true),
                };
                for block in bytes.chunks_exact(self.block_bytes()) {
                    let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    let mut at = 2;
                    let m = if has_min {
                        at += 2;
                        half::f16::from_le_bytes([block[2], block[3]]).to_f32()
                    } else {
                        0.0
                    };
                    let qh = if five {
                        at += 4;
                        u32::from_le_bytes([block[at - 4], block[at - 3], block[at - 2], block[at - 1]])
                    } else {
                        0
                    };
                    let qs = &block[at..];
                    for j in 0..QK {
                        let low = if j < 16 { qs[j] & 0x0f } else { qs[j - 16] >> 4 };
                        let q = low as u32 | ((qh >> j) & 1) << 4;
                        out.push(match self {
                            WeightFormat::Q5_0 => d * (q as i32 - 16) as f32,
                            _ => d * q as f32 + m,
                        });
                    }
                }
            }
            WeightFormat::Q4K | WeightFormat::Q5K => {
                let five = self == WeightFormat::Q5K;
                for block in bytes.chunks_exact(self.block_bytes()) {
                    let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    let dmin = half::f16::from_le_bytes([block[2], block[3]]).to_f32();
                    let scales = &block[4..16];
                    let (qh, qs) = if five {
                        (&block[16..48], &block[48..])
                    } else {
                        (&block[..0], &block[16..])
                    };
                    for j in 0..8 {
                        let (sc, m) = k_scale_min(scales, j);
                        let (scale, min) = (d * sc as f32, dmin * m as f32);
                        for l in 0..32 {
                            let byte = qs[(j / 2) * 32 + l];
                            let mut q = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                            if five {
                                q |= ((qh[l] >> j) & 1) << 4;
                            }
                            out.push(scale * q as f32 - min);
                        }
                    }
                }
            }
            WeightFormat::Q6K => {
                for block in bytes.chunks_exact(self.block_bytes()) {
                    let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
                    let d = half::f16::from_le_bytes([block[208], block[209]]).to_f32();
                    for idx in 0..QK_K {
                        let (half_block, i) = (idx / 128, idx % 128);
                        let low = (ql[half_block * 64 + i % 64] >> (4 * (i / 64))) & 0x0f;
                        let high = (qh[half_block * 32 + i % 32] >> (2 * (i / 32))) & 0x03;
                        let q = (low | high << 4) as i32 - 32;
                        out.push(d * scales[idx / 16] as i8 as f32 * q as f32);
                    }
                }
            }
            WeightFormat::Mxfp4 => {
                for block in bytes.chunks_exact(self.block_bytes()) {
                    let d = e8m0_half(block[0]);
                    let qs = &block[1..];
                    out.extend(qs.iter().map(|&q| d * MXFP4_VALUES[(q & 0x0f) as usize] as f32));
                    out.extend(qs.iter().map(|&q| d * MXFP4_VALUES[(q >> 4) as usize] as f32));
                }
            }
        }
    }

    /// Encodes f32 values (element formats: round to nearest even; block formats:
    /// ggml's reference quantizers, whole blocks only), appending to `out`.
    pub fn encode_into(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            WeightFormat::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            WeightFormat::F16 => out.extend(values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes())),
            WeightFormat::BF16 => out.extend(values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())),
            WeightFormat::Q8_0 => {
                debug_assert!(values.len().is_multiple_of(QK));
                for block in values.chunks_exact(QK) {
                    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(half::f16::from_f32(d).to_le_bytes());
                    // roundf: halves away from zero, like Rust's round.
                    out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
                }
            }
            WeightFormat::Q4_0 => {
                debug_assert!(values.len().is_multiple_of(QK));
                for block in values.chunks_exact(QK) {
                    // The value of largest magnitude (the first of equals), sign kept.
                    let (mut amax, mut max) = (0.0f32, 0.0f32);
                    for &v in block {
                        if amax < v.abs() {
                            amax = v.abs();
                            max = v;
                        }
                    }
                    let d = max / -8.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(half::f16::from_f32(d).to_le_bytes());
                    let q = |v: f32| ((v * id + 8.5) as i8).clamp(0, 15) as u8;
                    out.extend((0..QK / 2).map(|j| q(block[j]) | q(block[j + QK / 2]) << 4));
                }
            }
            WeightFormat::Mxfp4 => {
                debug_assert!(values.len().is_multiple_of(QK));
                for block in values.chunks_exact(QK) {
                    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let e = if amax > 0.0 {
                        (amax.log2().floor() - 2.0 + 127.0) as u8
                    } else {
                        0
                    };
                    let d = e8m0_half(e);
                    // The nearest doubled e2m1 value (the first of equals).
                    let q = |v: f32| {
                        (0..16u8)
                            .min_by(|&a, &b| {
                                let ea = (d * MXFP4_VALUES[a as usize] as f32 - v).abs();
                                let eb = (d * MXFP4_VALUES[b as usize] as f32 - v).abs();
                                ea.total_cmp(&eb)
                            })
                            .unwrap_or(0)
                    };
                    out.push(e);
                    out.extend((0..QK / 2).map(|j| q(block[j]) | q(block[j + QK / 2]) << 4));
                }
            }
            WeightFormat::Q4K => {
                debug_assert!(values.len().is_multiple_of(QK_K));
                for block in values.chunks_exact(QK_K) {
                    quantize_q4_k(block, out);
                }
            }
            WeightFormat::Q5K | WeightFormat::Q6K | WeightFormat::Q4_1 | WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
                debug_assert!(values.is_empty(), "no encoder for {self}");
            }
        }
    }

    /// `values` as the GPU sees them once stored in this format (encoded, decoded).
    pub fn round_trip_all(self, values: &[f32]) -> Vec<f32> {
        let mut bytes = Vec::new();
        self.encode_into(values, &mut bytes);
        self.dequantize(&bytes)
    }

    /// Re-encodes `bytes` of format `from` as this format, appending to `out`.
    pub fn convert_into(self, from: WeightFormat, bytes: &[u8], out: &mut Vec<u8>) {
        if from == self {
            out.extend_from_slice(bytes);
            return;
        }
        // Callers hand over bounded pieces (the loader's staging size).
        let values = from.dequantize(bytes);
        self.encode_into(&values, out);
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::BF16 => "bf16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4_0 => "q4_0",
            WeightFormat::Q4_1 => "q4_1",
            WeightFormat::Q5_0 => "q5_0",
            WeightFormat::Q5_1 => "q5_1",
            WeightFormat::Q4K => "q4_k",
            WeightFormat::Q5K => "q5_k",
            WeightFormat::Q6K => "q6_k",
            WeightFormat::Mxfp4 => "mxfp4",
        })
    }
}

/// The scale and min of sub-block `j` (0..8) from a K-quant's 12 packed scale bytes.
fn k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// ggml's `ggml_e8m0_to_fp32_half`: 2^(e - 128) as f32 bits.
fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e - 1) as u32) << 23
    };
    f32::from_bits(bits)
}

/// ggml's `nearest_int`: round to nearest, ties to even, through the f32 mantissa.
fn nearest_int(v: f32) -> i32 {
    ((v + 12_582_912.0f32).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's `make_qkx2_quants` for one sub-block (squared error): levels `l` in
/// 0..=nmax with `x ~ scale * l - min`; returns (scale, min).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|v| *v = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, lf) = (weights[i], q as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `quantize_row_q4_K_ref` for one superblock of 256 values.
fn quantize_q4_k(x: &[f32], out: &mut Vec<u8>) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let sub = &x[32 * j..32 * (j + 1)];
        let sum_x2 = sub.iter().fold(0.0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: Vec<f32> = sub.iter().map(|v| av_x + v.abs()).collect();
        let (scale, min) = make_qkx2_quants(15, sub, &weights, &mut levels[32 * j..32 * (j + 1)], -1.0, 0.1, 20);
        scales[j] = scale;
        mins[j] = min;
        max_scale = max_scale.max(scale);
        max_min = max_min.max(min);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = half::f16::from_f32(max_scale / 63.0);
    let dmin = half::f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = k_scale_min(&packed, j);
        let dj = d.to_f32() * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 0..32 {
            levels[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, 15) as u8;
        }
    }
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    out.extend(packed);
    for j in (0..QK_K).step_by(64) {
        out.extend((0..32).map(|l| levels[j + l] | (levels[j + l + 32] << 4)));
    }
}

//! Storage formats of weight matrices, and their CPU references: how many elements
//! a block holds and how many bytes it takes, how values are encoded (quantized) and
//! decoded, and which kernel variant reads them. Element formats (f32, f16, bf16) have
//! blocks of one element; ggml's block formats keep 32 elements with an f16 scale:
//! Q8_0 (34 bytes: scale, 32 x i8) and Q4_0 (18 bytes: scale, 16 bytes of nibbles,
//! element j in the low nibble of byte j, element j + 16 in its high nibble). Encoding
//! follows ggml's reference quantizers (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`)
//! bit for bit; decoding matches `gguf.quants.dequantize`.

use crate::error::{Error, Result};
use crate::gpu::DType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
}

/// Elements per block of the ggml block formats.
pub const QK: usize = 32;

impl WeightFormat {
    pub const ALL: [WeightFormat; 5] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::BF16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
    ];

    /// Elements per block.
    pub fn block_elements(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => 1,
            WeightFormat::Q8_0 | WeightFormat::Q4_0 => QK,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::BF16 => 2,
            WeightFormat::Q8_0 => 2 + QK,
            WeightFormat::Q4_0 => 2 + QK / 2,
        }
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
            _ => None,
        }
    }

    /// The tensor element type of the same layout (element formats only).
    pub fn dtype(self) -> Option<DType> {
        match self {
            WeightFormat::F32 => Some(DType::F32),
            WeightFormat::F16 => Some(DType::F16),
            WeightFormat::BF16 => Some(DType::BF16),
            WeightFormat::Q8_0 | WeightFormat::Q4_0 => None,
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
        })
    }
}

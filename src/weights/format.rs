//! Storage formats of weight matrices, and their CPU references: how many elements
//! a block holds and how many bytes it takes, how values are encoded and decoded, and
//! which kernel variant reads them. Today's formats are element formats (a block of
//! one element); block formats (Q8_0, Q4_K, MXFP4: blocks of 32 or 256 elements with
//! their scales) slot in as further variants with their own block sizes and decoders.

use crate::error::{Error, Result};
use crate::gpu::DType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 3] = [WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16];

    /// Elements per block.
    pub fn block_elements(self) -> usize {
        1
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::BF16 => 2,
        }
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
        }
    }

    /// The format of a safetensors / torch dtype name (`F32`, `float16`, `bfloat16`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Some(WeightFormat::F32),
            "f16" | "float16" | "half" => Some(WeightFormat::F16),
            "bf16" | "bfloat16" => Some(WeightFormat::BF16),
            _ => None,
        }
    }

    /// The tensor element type of the same layout (element formats only).
    pub fn dtype(self) -> DType {
        match self {
            WeightFormat::F32 => DType::F32,
            WeightFormat::F16 => DType::F16,
            WeightFormat::BF16 => DType::BF16,
        }
    }

    /// The weight format of a float tensor type.
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
        }
    }

    /// Encodes f32 values (round to nearest even), appending to `out`.
    pub fn encode_into(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            WeightFormat::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            WeightFormat::F16 => out.extend(values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes())),
            WeightFormat::BF16 => out.extend(values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())),
        }
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

    /// The value an f32 becomes after encoding in this format (the CPU references use
    /// it to round weights as the GPU stores them).
    pub fn round_trip(self, v: f32) -> f32 {
        self.dtype().round_trip(v)
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::BF16 => "bf16",
        })
    }
}

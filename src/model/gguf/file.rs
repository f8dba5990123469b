//! Parsing the head of a GGUF file.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::weights::WeightFormat;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::Uint(v) => Some(*v),
            MetaValue::Int(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetaValue::Float(v) => Some(*v),
            MetaValue::Uint(v) => Some(*v as f64),
            MetaValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
}

/// One tensor as GGUF describes it.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (innermost) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Absolute byte offset in the file.
    pub start: u64,
    pub len: u64,
}

/// The parsed head of one GGUF file.
#[derive(Clone, Debug)]
pub struct GgufFile {
    pub name: String,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<GgufTensor>,
    pub data_start: u64,
    pub file_len: u64,
}

/// The name and (for types webmoe reads) the weight format of a ggml type.
pub(crate) fn ggml_type(t: u32) -> (&'static str, Option<WeightFormat>) {
    match t {
        0 => ("F32", Some(WeightFormat::F32)),
        1 => ("F16", Some(WeightFormat::F16)),
        2 => ("Q4_0", Some(WeightFormat::Q4_0)),
        3 => ("Q4_1", Some(WeightFormat::Q4_1)),
        6 => ("Q5_0", Some(WeightFormat::Q5_0)),
        7 => ("Q5_1", Some(WeightFormat::Q5_1)),
        8 => ("Q8_0", Some(WeightFormat::Q8_0)),
        10 => ("Q2_K", None),
        11 => ("Q3_K", None),
        12 => ("Q4_K", Some(WeightFormat::Q4K)),
        13 => ("Q5_K", Some(WeightFormat::Q5K)),
        14 => ("Q6_K", Some(WeightFormat::Q6K)),
        15 => ("Q8_K", None),
        16..=23 | 29 => ("IQ*", None),
        24 => ("I8", None),
        25 => ("I16", None),
        26 => ("I32", None),
        27 => ("I64", None),
        28 => ("F64", None),
        30 => ("BF16", Some(WeightFormat::BF16)),
        39 => ("MXFP4", Some(WeightFormat::Mxfp4)),
        _ => ("unknown", None),
    }
}

/// A bounds-checked reader over the file's first bytes.
struct Reader<'a> {
    file: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn bad(&self, m: impl std::fmt::Display) -> Error {
        Error::Config(format!(
            "{}: not a valid GGUF file: {m} (at byte {})",
            self.file, self.at
        ))
    }

    fn take(&mut self, n: u64) -> Result<&[u8]> {
        let end = (self.at as u64)
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len() as u64)
            .ok_or_else(|| self.bad(format!("{n} more bytes needed; the file is truncated")))?;
        let out = &self.bytes[self.at..end as usize];
        self.at = end as usize;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad("a string is not UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<MetaValue> {
        let take_n = |r: &mut Self, n: u64| -> Result<[u8; 8]> {
            let mut b = [0u8; 8];
            b[..n as usize].copy_from_slice(r.take(n)?);
            Ok(b)
        };
        Ok(match ty {
            0 => MetaValue::Uint(take_n(self, 1)?[0] as u64),
            1 => MetaValue::Int(take_n(self, 1)?[0] as i8 as i64),
            2 => MetaValue::Uint(u16::from_le_bytes(take_n(self, 2)?[..2].try_into().unwrap_or_default()) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(take_n(self, 2)?[..2].try_into().unwrap_or_default()) as i64),
            4 => MetaValue::Uint(self.u32()? as u64),
            5 => MetaValue::Int(self.u32()? as i32 as i64),
            6 => MetaValue::Float(f32::from_bits(self.u32()?) as f64),
            7 => MetaValue::Bool(take_n(self, 1)?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.bad("arrays nested too deeply"));
                }
                let inner = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte: a count past the file is corrupt.
                if n > (self.bytes.len() - self.at) as u64 {
                    return Err(self.bad(format!("an array of {n} elements is longer than the file")));
                }
                (0..n)
                    .map(|_| self.value(inner, depth + 1))
                    .collect::<Result<Vec<_>>>()
                    .map(MetaValue::Array)?
            }
            10 => MetaValue::Uint(self.u64()?),
            11 => MetaValue::Int(self.u64()? as i64),
            12 => MetaValue::Float(f64::from_bits(self.u64()?)),
            other => return Err(self.bad(format!("unknown metadata value type {other}"))),
        })
    }
}

/// Parses the head of a GGUF file: `bytes` holds at least its metadata and tensor
/// infos (the whole file natively); `file_len` is the file's size.
pub fn parse_gguf(file: &str, bytes: &[u8], file_len: u64) -> Result<GgufFile> {
    let mut r = Reader { file, bytes, at: 0 };
    if r.take(4)? != MAGIC {
        return Err(r.bad("the magic number is not GGUF"));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Error::Unsupported(format!(
            "{file}: GGUF version {version} (webmoe reads versions 2 and 3)"
        )));
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    if n_tensors > file_len / 8 || n_kv > file_len / 8 {
        return Err(r.bad(format!(
            "{n_tensors} tensors and {n_kv} metadata entries do not fit the file"
        )));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => v
            .as_u64()
            .filter(|a| *a > 0 && a.is_power_of_two())
            .ok_or_else(|| r.bad(format!("general.alignment {v:?} is not a power of two")))?,
    };
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > 4 {
            return Err(r.bad(format!("tensor `{name}` has {n_dims} dimensions")));
        }
        let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
        let ty = r.u32()?;
        let offset = r.u64()?;
        infos.push((name, dims, ty, offset));
    }
    // Files without tensors (vocabulary-only files) may end before the padding.
    let data_start = (r.at as u64).next_multiple_of(alignment);
    let data_len = match file_len.checked_sub(data_start) {
        Some(len) => len,
        None if infos.is_empty() => 0,
        None => return Err(r.bad("the file ends before its tensor data")),
    };
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, dims, ty, offset) in infos {
        let (type_name, format) = ggml_type(ty);
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| r.bad(format!("tensor `{name}`: dimensions {dims:?} overflow")))?;
        // Unsupported types get their size from the name table where possible; they
        // are refused only when the model needs them.
        let len = match format {
            Some(f) => {
                if dims[0] % f.block_elements() as u64 != 0 {
                    return Err(r.bad(format!(
                        "tensor `{name}`: rows of {} elements are not whole {type_name} blocks",
                        dims[0]
                    )));
                }
                elements / f.block_elements() as u64 * f.block_bytes() as u64
            }
            None => 0,
        };
        if offset % alignment != 0 {
            return Err(r.bad(format!(
                "tensor `{name}`: offset {offset} is not aligned to {alignment}"
            )));
        }
        if offset.checked_add(len).is_none_or(|end| end > data_len) {
            return Err(r.bad(format!(
                "tensor `{name}`: bytes {offset}..{} fall outside the {data_len} data bytes (truncated file?)",
                offset.saturating_add(len)
            )));
        }
        tensors.push(GgufTensor {
            name,
            dims,
            ggml_type: ty,
            start: data_start + offset,
            len,
        });
    }
    Ok(GgufFile {
        name: file.to_string(),
        version,
        metadata,
        tensors,
        data_start,
        file_len,
    })
}

//! Safetensors checkpoints: headers parsed and checked on their own (so the browser
//! can plan a load from a file's first bytes, before the rest streams in), and a
//! [`TensorStore`] over whole files (memory-mapped natively, or bytes in memory), with
//! `model.safetensors.index.json` for sharded checkpoints. Every failure names the
//! file and tensor.
//!
//! The header is parsed here rather than with the `safetensors` crate because its
//! reader needs the whole file in memory, which a streaming browser load never has.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::weights::WeightFormat;

/// Headers longer than this are refused (real ones are well under a megabyte per
/// thousand tensors).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// One tensor of a shard.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// The safetensors dtype name (`BF16`, `F32`, `I64`, ...).
    pub dtype: String,
    /// The weight format, for the float types webmoe reads.
    pub format: Option<WeightFormat>,
    pub shape: Vec<usize>,
    /// Absolute byte offset in the file.
    pub start: u64,
    pub len: u64,
}

/// The parsed header of one safetensors file.
#[derive(Clone, Debug)]
pub struct ShardHeader {
    pub name: String,
    /// Where tensor data begins (8 + header length).
    pub data_start: u64,
    pub file_len: u64,
    pub tensors: Vec<TensorInfo>,
}

fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// Length of the prefix holding the header (8 + n), from a file's first 8 bytes.
pub fn header_prefix_len(file: &str, first: &[u8]) -> Result<u64> {
    let bad = |m: String| Error::Config(format!("{file}: not a valid safetensors file: {m}"));
    let first: [u8; 8] = first
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(first);
    if n > MAX_HEADER_BYTES {
        return Err(bad(format!("header length {n} is implausible")));
    }
    Ok(8 + n)
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Parses and checks the header of `file` (`prefix` holds at least its first
/// [`header_prefix_len`] bytes; `file_len` is the file's size): offsets inside the
/// file, sizes that match shape x dtype without overflow, no overlaps.
pub fn parse_header(file: &str, prefix: &[u8], file_len: u64) -> Result<ShardHeader> {
    let bad = |m: String| Error::Config(format!("{file}: not a valid safetensors file: {m}"));
    let data_start = header_prefix_len(file, prefix)?;
    if data_start > file_len {
        return Err(bad(format!(
            "the header needs {data_start} bytes but the file has {file_len} (truncated?)"
        )));
    }
    let text = prefix
        .get(8..data_start as usize)
        .ok_or_else(|| bad("the header is cut short".into()))?;
    let map: HashMap<String, serde_json::Value> =
        serde_json::from_slice(text).map_err(|e| bad(format!("the header is not JSON: {e}")))?;
    let data_len = file_len - data_start;
    let mut tensors = Vec::with_capacity(map.len());
    for (name, value) in map {
        if name == "__metadata__" {
            continue;
        }
        let raw: RawTensor =
            serde_json::from_value(value).map_err(|e| bad(format!("tensor `{name}`: malformed entry: {e}")))?;
        let (begin, end) = raw.data_offsets;
        let elem =
            dtype_bytes(&raw.dtype).ok_or_else(|| bad(format!("tensor `{name}`: unknown dtype {}", raw.dtype)))?;
        let expected = raw
            .shape
            .iter()
            .try_fold(elem, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {:?} overflows", raw.shape)))?;
        if begin > end || end > data_len {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] fall outside the {data_len} data bytes (truncated file?)"
            )));
        }
        if end - begin != expected {
            return Err(bad(format!(
                "tensor `{name}`: {} bytes for shape {:?} of {} (expected {expected})",
                end - begin,
                raw.shape,
                raw.dtype
            )));
        }
        tensors.push(TensorInfo {
            format: WeightFormat::from_name(&raw.dtype),
            name,
            dtype: raw.dtype,
            shape: raw.shape,
            start: data_start + begin,
            len: end - begin,
        });
    }
    tensors.sort_by_key(|t| t.start);
    for pair in tensors.windows(2) {
        if pair[0].start + pair[0].len > pair[1].start {
            return Err(bad(format!(
                "tensors `{}` and `{}` overlap",
                pair[0].name, pair[1].name
            )));
        }
    }
    Ok(ShardHeader {
        name: file.to_string(),
        data_start,
        file_len,
        tensors,
    })
}

/// The headers of all shards of a checkpoint, with a name index.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    pub shards: Vec<ShardHeader>,
    index: HashMap<String, (usize, usize)>,
}

impl Checkpoint {
    pub fn new(shards: Vec<ShardHeader>) -> Self {
        let mut index = HashMap::new();
        for (s, shard) in shards.iter().enumerate() {
            for (t, tensor) in shard.tensors.iter().enumerate() {
                index.insert(tensor.name.clone(), (s, t));
            }
        }
        Self { shards, index }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(|s| s.as_str()).collect();
        names.sort();
        names
    }

    /// The tensor and the index of its shard.
    pub fn tensor(&self, name: &str) -> Result<(usize, &TensorInfo)> {
        let (s, t) = self.index.get(name).ok_or_else(|| {
            let files: Vec<&str> = self.shards.iter().map(|f| f.name.as_str()).collect();
            Error::Config(format!("tensor `{name}` is missing from {}", files.join(", ")))
        })?;
        Ok((*s, &self.shards[*s].tensors[*t]))
    }

    /// The tensor, checked to have shape `expected`.
    fn shaped(&self, name: &str, expected: &[usize]) -> Result<(usize, &TensorInfo)> {
        let (shard, info) = self.tensor(name)?;
        if info.shape != expected {
            return Err(Error::Shape {
                what: format!("tensor `{name}` in {}", self.shards[shard].name),
                expected: expected.to_vec(),
                actual: info.shape.clone(),
            });
        }
        Ok((shard, info))
    }

    /// The tensor, checked to have shape `expected` and safetensors dtype `dtype`
    /// (raw bytes such as MXFP4 blocks and scales, stored as U8).
    pub fn expect_raw(&self, name: &str, expected: &[usize], dtype: &str) -> Result<(usize, &TensorInfo)> {
        let (shard, info) = self.shaped(name, expected)?;
        let file = &self.shards[shard].name;
        if info.dtype != dtype {
            return Err(Error::Unsupported(format!(
                "{file}: tensor `{name}` has dtype {}; expected {dtype}",
                info.dtype
            )));
        }
        Ok((shard, info))
    }

    /// The tensor, checked to have shape `expected` and a float dtype webmoe reads.
    pub fn expect(&self, name: &str, expected: &[usize]) -> Result<(usize, &TensorInfo, WeightFormat)> {
        let (shard, info) = self.shaped(name, expected)?;
        let file = &self.shards[shard].name;
        let format = info.format.ok_or_else(|| {
            let known: Vec<String> = WeightFormat::ALL.iter().map(|f| f.to_string()).collect();
            Error::Unsupported(format!(
                "{file}: tensor `{name}` has dtype {}; webmoe reads {}",
                info.dtype,
                known.join(", ")
            ))
        })?;
        Ok((shard, info, format))
    }

    /// The format most of the checkpoint's float bytes are in (the default GPU storage).
    pub fn main_format(&self) -> Option<WeightFormat> {
        let mut bytes: HashMap<WeightFormat, u64> = HashMap::new();
        for t in self.shards.iter().flat_map(|s| &s.tensors) {
            if let Some(f) = t.format {
                *bytes.entry(f).or_default() += t.len;
            }
        }
        bytes
            .into_iter()
            .max_by_key(|(f, b)| (*b, f.block_bytes()))
            .map(|(f, _)| f)
    }
}

/// The bytes of one shard.
pub enum ShardBytes {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
    Static(&'static [u8]),
}

impl ShardBytes {
    pub fn bytes(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            ShardBytes::Mapped(m) => m,
            ShardBytes::Owned(v) => v,
            ShardBytes::Static(s) => s,
        }
    }
}

/// All tensors of a checkpoint whose files are at hand (mapped or in memory).
pub struct TensorStore {
    pub checkpoint: Checkpoint,
    files: Vec<ShardBytes>,
}

impl TensorStore {
    /// Builds a store from named file contents (any number of shards).
    pub fn from_bytes(files: Vec<(String, Vec<u8>)>) -> Result<Self> {
        Self::build(files.into_iter().map(|(n, b)| (n, ShardBytes::Owned(b))).collect())
    }

    /// A store over files whose headers are already parsed (GGUF).
    pub fn from_parts(checkpoint: Checkpoint, files: Vec<ShardBytes>) -> Self {
        Self { checkpoint, files }
    }

    /// Builds a store from named files of any backing.
    pub fn build(files: Vec<(String, ShardBytes)>) -> Result<Self> {
        let mut headers = Vec::with_capacity(files.len());
        let mut backing = Vec::with_capacity(files.len());
        for (name, data) in files {
            let bytes = data.bytes();
            headers.push(parse_header(&name, bytes, bytes.len() as u64)?);
            backing.push(data);
        }
        Ok(Self {
            checkpoint: Checkpoint::new(headers),
            files: backing,
        })
    }

    /// Opens `dir/model.safetensors`, or the shards listed in
    /// `dir/model.safetensors.index.json`, memory-mapped (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(index_path.display(), e))?;
            let mut shards = shard_names(&text, &index_path.display().to_string())?;
            shards.sort();
            shards.dedup();
            shards
        } else {
            let mut found: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(format!("model directory {}", dir.display()), e))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            found.sort();
            found
        };
        if names.is_empty() {
            return Err(Error::Config(format!("no .safetensors files in {}", dir.display())));
        }
        let files = names
            .iter()
            .map(|n| {
                let path = dir.join(n);
                let file = std::fs::File::open(&path).map_err(|e| Error::io(path.display(), e))?;
                // SAFETY: the mapping is read-only; a checkpoint modified while it is
                // being loaded is outside what webmoe guards against.
                let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path.display(), e))?;
                Ok((path.display().to_string(), ShardBytes::Mapped(map)))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::build(files)
    }

    pub fn names(&self) -> Vec<&str> {
        self.checkpoint.names()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.checkpoint.contains(name)
    }

    /// The bytes of shard `shard`.
    pub fn shard_bytes(&self, shard: usize) -> &[u8] {
        self.files[shard].bytes()
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.checkpoint.tensor(name)?.1.shape.clone())
    }

    /// The tensor as f32 on the host, checked against `expected` shape (the CPU
    /// reference decoder and tools; the GPU load streams bytes instead).
    pub fn get_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let (shard, info, format) = self.checkpoint.expect(name, expected)?;
        let bytes = &self.shard_bytes(shard)[info.start as usize..(info.start + info.len) as usize];
        Ok(format.dequantize(bytes))
    }
}

/// Shard file names from a model.safetensors.index.json text.
pub fn shard_names(index_json: &str, source: &str) -> Result<Vec<String>> {
    let value: serde_json::Value =
        serde_json::from_str(index_json).map_err(|e| Error::Config(format!("{source}: invalid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Config(format!("{source}: missing `weight_map`")))?;
    map.values()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Config(format!("{source}: `weight_map` values must be file names")))
        })
        .collect()
}

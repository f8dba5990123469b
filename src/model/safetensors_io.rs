//! Reading tensors from one or more safetensors files: memory-mapped natively
//! ([`TensorStore::open_dir`]), or bytes handed over by the browser or an embedding
//! program ([`TensorStore::from_bytes`]). `model.safetensors.index.json` (its
//! `weight_map`) lists the shards of a sharded checkpoint.
//!
//! Every header is parsed and validated once, when the store is built, by
//! `safetensors::SafeTensors::read_metadata` (what `SafeTensors::deserialize` runs):
//! it checks the length prefix against the file size, the header JSON, that the
//! tensors' `data_offsets` are contiguous, agree with shape x dtype, and end exactly at
//! the end of the file. Its errors come back as [`Error::Checkpoint`] naming the file.
//! Tensor lookups then only slice the validated data (with checked bounds).
//!
//! Errors: a missing tensor is [`Error::MissingTensor`] (naming the tensor and the
//! files searched), a wrong shape [`Error::Shape`] (tensor, file, expected and actual
//! shape), an unreadable dtype [`Error::TensorDtype`].

use std::collections::HashMap;

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::error::{Error, Result};

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The single file of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Length of the little-endian u64 header-size prefix.
const PREFIX: usize = 8;

enum Backing {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

struct StoreFile {
    /// As given (in-memory) or the full path (directory), for messages.
    name: String,
    data: Backing,
    /// Byte offset of the tensor data (prefix + header).
    data_start: usize,
    metadata: Metadata,
}

impl StoreFile {
    fn new(name: String, data: Backing) -> Result<Self> {
        let bytes: &[u8] = match &data {
            #[cfg(not(target_arch = "wasm32"))]
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        };
        let (header_len, metadata) =
            SafeTensors::read_metadata(bytes).map_err(|e| invalid_file(&name, bytes.len(), &e))?;
        let data_start = header_len.checked_add(PREFIX).ok_or_else(|| Error::Checkpoint {
            file: name.clone(),
            reason: "header length overflows".into(),
        })?;
        Ok(Self {
            name,
            data,
            data_start,
            metadata,
        })
    }

    fn bytes(&self) -> &[u8] {
        match &self.data {
            #[cfg(not(target_arch = "wasm32"))]
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }

    /// The raw bytes of one tensor (bounds checked, though the header was validated).
    fn tensor_bytes(&self, name: &str, info: &TensorInfo) -> Result<&[u8]> {
        let (start, end) = info.data_offsets;
        let range = self
            .data_start
            .checked_add(start)
            .zip(self.data_start.checked_add(end));
        range
            .and_then(|(s, e)| self.bytes().get(s..e))
            .ok_or_else(|| Error::Checkpoint {
                file: self.name.clone(),
                reason: format!(
                    "data_offsets [{start}, {end}] of tensor `{name}` lie outside the file ({} bytes)",
                    self.bytes().len()
                ),
            })
    }
}

/// Wraps a safetensors parse error with the file name and a hint at the likely cause.
fn invalid_file(name: &str, len: usize, e: &SafeTensorError) -> Error {
    let hint = match e {
        SafeTensorError::HeaderTooSmall => " (the file is shorter than the 8-byte length prefix)",
        SafeTensorError::InvalidHeaderLength => {
            " (the header length prefix points past the end of the file: truncated, or not a safetensors file)"
        }
        SafeTensorError::HeaderTooLarge => " (a header over 100 MB: not a safetensors file)",
        SafeTensorError::MetadataIncompleteBuffer => {
            " (the tensors' data_offsets do not end at the end of the file: truncated file, or offsets past its end)"
        }
        SafeTensorError::InvalidOffset(_) | SafeTensorError::TensorInvalidInfo => {
            " (the header's data_offsets are inconsistent with the tensors' shapes and dtypes)"
        }
        _ => "",
    };
    Error::Checkpoint {
        file: name.to_string(),
        reason: format!("not a valid safetensors file ({len} bytes): {e}{hint}"),
    }
}

/// The tensors of a checkpoint (one or more safetensors files), by name.
pub struct TensorStore {
    files: Vec<StoreFile>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
    /// (index.json name, tensor -> shard file name) of a sharded checkpoint.
    weight_map: Option<(String, HashMap<String, String>)>,
}

/// The last path component of `name` (shard names in index.json are bare file names).
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

impl TensorStore {
    /// Builds a store from named file contents: safetensors files (any number of
    /// shards) and optionally a `*.index.json` (the weight_map of a sharded checkpoint),
    /// which then must list only shards given here.
    pub fn from_bytes(files: Vec<(String, Vec<u8>)>) -> Result<Self> {
        let mut shards = Vec::new();
        let mut weight_map = None;
        for (name, bytes) in files {
            if name.ends_with(".json") {
                let text = String::from_utf8(bytes).map_err(|e| Error::Checkpoint {
                    file: name.clone(),
                    reason: format!("not UTF-8 text: {e}"),
                })?;
                if weight_map.is_some() {
                    return Err(Error::Checkpoint {
                        file: name,
                        reason: "a second index file; give one model.safetensors.index.json".into(),
                    });
                }
                let map = parse_weight_map(&text, &name)?;
                weight_map = Some((name, map));
            } else {
                shards.push(StoreFile::new(name, Backing::Owned(bytes))?);
            }
        }
        if let Some((index_name, map)) = &weight_map {
            for shard in map.values() {
                if !shards.iter().any(|f| base_name(&f.name) == shard) {
                    return Err(Error::Checkpoint {
                        file: index_name.clone(),
                        reason: format!("lists shard `{shard}`, which is not among the files given"),
                    });
                }
            }
        }
        Self::build(shards, weight_map)
    }

    /// Opens the checkpoint in `dir` (native), memory-mapped, as transformers does:
    /// `model.safetensors` if present, else the shards listed in
    /// `model.safetensors.index.json`, else every `*.safetensors` file in the directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<Self> {
        let io_error = |path: &std::path::Path, what: &str, e: std::io::Error| Error::Checkpoint {
            file: path.display().to_string(),
            reason: format!("cannot {what}: {e}"),
        };
        if !dir.is_dir() {
            return Err(Error::Checkpoint {
                file: dir.display().to_string(),
                reason: "not a directory (expected a model directory with config.json and *.safetensors)".into(),
            });
        }
        let index_path = dir.join(INDEX_FILE);
        let mut weight_map = None;
        let names: Vec<String> = if dir.join(SINGLE_FILE).is_file() {
            vec![SINGLE_FILE.to_string()]
        } else if index_path.is_file() {
            let source = index_path.display().to_string();
            let text = std::fs::read_to_string(&index_path).map_err(|e| io_error(&index_path, "read it", e))?;
            let map = parse_weight_map(&text, &source)?;
            let mut shards: Vec<String> = map.values().cloned().collect();
            shards.sort();
            shards.dedup();
            for shard in &shards {
                if !dir.join(shard).is_file() {
                    return Err(Error::Checkpoint {
                        file: source,
                        reason: format!("lists shard `{shard}`, which is not in {}", dir.display()),
                    });
                }
            }
            weight_map = Some((source, map));
            shards
        } else {
            let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, "list it", e))?;
            let mut found: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            found.sort();
            found
        };
        if names.is_empty() {
            return Err(Error::Checkpoint {
                file: dir.display().to_string(),
                reason: format!("no {SINGLE_FILE}, {INDEX_FILE} or other *.safetensors file"),
            });
        }
        let files = names
            .iter()
            .map(|n| {
                let path = dir.join(n);
                let file = std::fs::File::open(&path).map_err(|e| io_error(&path, "open it", e))?;
                // SAFETY: the mapping is read-only and every access is bounds-checked
                // against its length; a checkpoint truncated by another process while
                // it is being loaded is outside what webmoe guards against.
                let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_error(&path, "map it", e))?;
                StoreFile::new(path.display().to_string(), Backing::Mapped(map))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::build(files, weight_map)
    }

    fn build(files: Vec<StoreFile>, weight_map: Option<(String, HashMap<String, String>)>) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::Checkpoint {
                file: "(no files)".into(),
                reason: "no safetensors files were given".into(),
            });
        }
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.metadata.tensors().into_keys() {
                if let Some(&j) = index.get(&name) {
                    // In two shards: the index file decides, else the checkpoint is ambiguous.
                    let listed = weight_map.as_ref().and_then(|(_, m)| m.get(&name));
                    match listed {
                        Some(shard) if base_name(&file.name) == shard => {
                            index.insert(name, i);
                        }
                        Some(shard) if base_name(&files[j].name) == shard => {}
                        _ => {
                            return Err(Error::Checkpoint {
                                file: file.name.clone(),
                                reason: format!(
                                    "tensor `{name}` is also in {}; a tensor must be in one file",
                                    files[j].name
                                ),
                            })
                        }
                    }
                } else {
                    index.insert(name, i);
                }
            }
        }
        Ok(Self {
            files,
            index,
            weight_map,
        })
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(|s| s.as_str()).collect();
        names.sort_unstable();
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The files of the store, as named in messages.
    pub fn file_names(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.name.as_str()).collect()
    }

    fn missing(&self, name: &str) -> Error {
        let mut searched = self.file_names().join(", ");
        if let Some((index_name, map)) = &self.weight_map {
            match map.get(name) {
                Some(shard) => searched.push_str(&format!(" ({index_name} maps it to {shard}, which lacks it)")),
                None => searched.push_str(&format!(" (nor listed in {index_name})")),
            }
        }
        Error::MissingTensor {
            name: name.to_string(),
            searched,
        }
    }

    fn locate(&self, name: &str) -> Result<(&StoreFile, &TensorInfo)> {
        let found = self
            .index
            .get(name)
            .and_then(|&i| self.files.get(i))
            .and_then(|f| f.metadata.info(name).map(|info| (f, info)));
        found.ok_or_else(|| self.missing(name))
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.locate(name)?.1.shape.clone())
    }

    pub fn dtype(&self, name: &str) -> Result<Dtype> {
        Ok(self.locate(name)?.1.dtype)
    }

    /// The tensor as f32 (converted from F16 or BF16), checked against `expected` shape.
    pub fn get_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let (file, info) = self.locate(name)?;
        let size = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(Error::TensorDtype {
                    name: name.to_string(),
                    file: file.name.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        if info.shape != expected {
            return Err(Error::Shape {
                what: format!("tensor `{name}` in {}", file.name),
                expected: expected.to_vec(),
                actual: info.shape.clone(),
            });
        }
        let data = file.tensor_bytes(name, info)?;
        let elements: usize = expected.iter().product();
        if data.len() != elements * size {
            return Err(Error::Checkpoint {
                file: file.name.clone(),
                reason: format!(
                    "tensor `{name}` has {} data bytes, not {elements} x {size}",
                    data.len()
                ),
            });
        }
        let values = match info.dtype {
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        };
        Ok(values)
    }
}

/// The `weight_map` (tensor -> shard file) of a model.safetensors.index.json text;
/// `source` names the file in errors. Shard names must be plain file names.
fn parse_weight_map(index_json: &str, source: &str) -> Result<HashMap<String, String>> {
    let bad = |reason: String| Error::Checkpoint {
        file: source.to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(index_json).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("missing the `weight_map` object".into()))?;
    if map.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    map.iter()
        .map(|(tensor, file)| {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("`weight_map` entry of `{tensor}` is not a file name")))?;
            if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
                return Err(bad(format!(
                    "`weight_map` entry of `{tensor}` is `{file}`, not a plain file name"
                )));
            }
            Ok((tensor.clone(), file.to_string()))
        })
        .collect()
}

/// Shard file names (sorted, without duplicates) from a model.safetensors.index.json
/// text; `source` names the file in errors.
pub fn shard_names(index_json: &str, source: &str) -> Result<Vec<String>> {
    let mut shards: Vec<String> = parse_weight_map(index_json, source)?.into_values().collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

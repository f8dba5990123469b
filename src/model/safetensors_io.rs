//! Reading tensors from one or more safetensors files (memory-mapped natively, or
//! bytes handed over by the browser), with `model.safetensors.index.json` for
//! sharded checkpoints. Every failure names the file and tensor.

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

enum Backing {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

struct StoreFile {
    name: String,
    data: Backing,
}

impl StoreFile {
    fn bytes(&self) -> &[u8] {
        match &self.data {
            #[cfg(not(target_arch = "wasm32"))]
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }

    fn parse(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(self.bytes())
            .map_err(|e| Error::Config(format!("{}: not a valid safetensors file: {e}", self.name)))
    }
}

/// All tensors of a checkpoint, by name.
pub struct TensorStore {
    files: Vec<StoreFile>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
}

impl TensorStore {
    /// Builds a store from named file contents (any number of shards).
    pub fn from_bytes(files: Vec<(String, Vec<u8>)>) -> Result<Self> {
        Self::build(
            files
                .into_iter()
                .map(|(name, bytes)| StoreFile {
                    name,
                    data: Backing::Owned(bytes),
                })
                .collect(),
        )
    }

    /// Opens `dir/model.safetensors`, or the shards listed in
    /// `dir/model.safetensors.index.json`, memory-mapped (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| Error::Config(format!("cannot read {}: {e}", index_path.display())))?;
            let mut shards = shard_names(&text, &index_path.display().to_string())?;
            shards.sort();
            shards.dedup();
            shards
        } else {
            let mut found: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| Error::Config(format!("cannot read model directory {}: {e}", dir.display())))?
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
                let file = std::fs::File::open(&path)
                    .map_err(|e| Error::Config(format!("cannot open {}: {e}", path.display())))?;
                // SAFETY: the mapping is read-only; a checkpoint modified while it is
                // being loaded is outside what webmoe guards against.
                let map = unsafe { memmap2::Mmap::map(&file) }
                    .map_err(|e| Error::Config(format!("cannot map {}: {e}", path.display())))?;
                Ok(StoreFile {
                    name: path.display().to_string(),
                    data: Backing::Mapped(map),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::build(files)
    }

    fn build(files: Vec<StoreFile>) -> Result<Self> {
        let mut index = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.parse()?.names() {
                index.insert(name.to_string(), i);
            }
        }
        Ok(Self { files, index })
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(|s| s.as_str()).collect();
        names.sort();
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn file_of(&self, name: &str) -> Result<&StoreFile> {
        let i = self.index.get(name).ok_or_else(|| {
            let files: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
            Error::Config(format!("tensor `{name}` is missing from {}", files.join(", ")))
        })?;
        Ok(&self.files[*i])
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let file = self.file_of(name)?;
        let view = file
            .parse()?
            .tensor(name)
            .map_err(|e| Error::Config(format!("{}: tensor `{name}`: {e}", file.name)))?;
        Ok(view.shape().to_vec())
    }

    /// The tensor as f32 (converted from f16 or bf16), checked against `expected` shape.
    pub fn get_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let file = self.file_of(name)?;
        let tensors = file.parse()?;
        let view = tensors
            .tensor(name)
            .map_err(|e| Error::Config(format!("{}: tensor `{name}`: {e}", file.name)))?;
        if view.shape() != expected {
            return Err(Error::Shape {
                what: format!("tensor `{name}` in {}", file.name),
                expected: expected.to_vec(),
                actual: view.shape().to_vec(),
            });
        }
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::Config(format!(
                    "{}: tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16",
                    file.name
                )))
            }
        };
        Ok(values)
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

//! GGUF files (versions 2 and 3, llama.cpp's format): header, metadata, tensor infos
//! and alignment, parsed from the file's first bytes and checked like safetensors
//! headers (every size bounded by the file, offsets aligned and inside the data, sizes
//! from the ggml type without overflow; unknown or unsupported types named with their
//! tensor). [`gguf_checkpoint`] turns one or more split files into the engine's
//! config, a checkpoint under the names the decoder reads (stacked expert tensors
//! become per-expert views of the same bytes, so nothing is copied) and a tokenizer
//! built from `tokenizer.ggml.*`.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::config::{Family, ModelConfig, QkNorm};
use crate::model::names::{self, ExpertTensors};
use crate::model::safetensors_io::{ShardHeader, TensorInfo};
use crate::model::tokenizer::Tokenizer;
use crate::moe::{MoeConfig, SharedExpertConfig};
use crate::ops::routing::{RoutingConfig, TopKOrder};
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
    fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::Uint(v) => Some(*v),
            MetaValue::Int(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
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
fn ggml_type(t: u32) -> (&'static str, Option<WeightFormat>) {
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

/// The engine's view of GGUF files: config, checkpoint shards under decoder names, tokenizer.
pub struct GgufModel {
    pub config: ModelConfig,
    pub shards: Vec<ShardHeader>,
    pub tokenizer: Option<Tokenizer>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// Why there is no tokenizer, when the file has one webmoe cannot build.
    pub tokenizer_error: Option<String>,
}

/// Maps split GGUF files (`-00001-of-0000N`, in order) to a config, a checkpoint and a tokenizer.
pub fn gguf_checkpoint(files: &[GgufFile]) -> Result<GgufModel> {
    let first = files
        .first()
        .ok_or_else(|| Error::Config("no GGUF file given".into()))?;
    let meta = &first.metadata;
    let source = &first.name;
    let config = config_of(files, meta, source)?;
    let mut shards = Vec::with_capacity(files.len());
    for file in files {
        let mut tensors = Vec::new();
        for t in &file.tensors {
            tensors.extend(decoder_tensors(t, &config)?);
        }
        tensors.sort_by_key(|t: &TensorInfo| (t.start, t.name.clone()));
        shards.push(ShardHeader {
            name: file.name.clone(),
            data_start: file.data_start,
            file_len: file.file_len,
            tensors,
        });
    }
    // A tokenizer webmoe cannot build leaves the model usable with token ids.
    let (tokenizer, tokenizer_error) = match tokenizer_of(meta, source) {
        Ok(t) => (t, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let chat_template = match meta.get("tokenizer.chat_template") {
        Some(MetaValue::Str(t)) => Some(t.clone()),
        _ => None,
    };
    Ok(GgufModel {
        config,
        shards,
        tokenizer,
        chat_template,
        tokenizer_error,
    })
}

fn info(name: String, t: &GgufTensor, shape: Vec<usize>, start: u64, len: u64) -> TensorInfo {
    let (type_name, format) = ggml_type(t.ggml_type);
    TensorInfo {
        name,
        dtype: type_name.to_string(),
        format,
        shape,
        start,
        len,
    }
}

/// The decoder's tensors held by GGUF tensor `t` (stacked experts give one view per
/// expert); tensors the decoder does not read map to nothing.
fn decoder_tensors(t: &GgufTensor, c: &ModelConfig) -> Result<Vec<TensorInfo>> {
    let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
    let whole = |name: &str| Ok(vec![info(name.to_string(), t, shape.clone(), t.start, t.len)]);
    match t.name.as_str() {
        "token_embd.weight" => return whole(names::EMBED_TOKENS),
        "output.weight" => return whole(names::LM_HEAD),
        "output_norm.weight" => return whole(names::FINAL_NORM),
        _ => {}
    }
    let Some(rest) = t.name.strip_prefix("blk.") else {
        return Ok(Vec::new());
    };
    let Some((layer, key)) = rest.split_once('.') else {
        return Ok(Vec::new());
    };
    let Ok(i) = layer.parse::<usize>() else {
        return Ok(Vec::new());
    };
    let p = names::layer(i);
    let moe = names::moe(c.family, i, true);
    let name = match key {
        "attn_norm.weight" => format!("{p}.input_layernorm.weight"),
        "ffn_norm.weight" => format!("{p}.post_attention_layernorm.weight"),
        "attn_q.weight" => format!("{p}.self_attn.q_proj.weight"),
        "attn_k.weight" => format!("{p}.self_attn.k_proj.weight"),
        "attn_v.weight" => format!("{p}.self_attn.v_proj.weight"),
        "attn_output.weight" => format!("{p}.self_attn.o_proj.weight"),
        "attn_q.bias" => format!("{p}.self_attn.q_proj.bias"),
        "attn_k.bias" => format!("{p}.self_attn.k_proj.bias"),
        "attn_v.bias" => format!("{p}.self_attn.v_proj.bias"),
        "attn_q_norm.weight" => format!("{p}.self_attn.q_norm.weight"),
        "attn_k_norm.weight" => format!("{p}.self_attn.k_norm.weight"),
        "ffn_gate.weight" => format!("{p}.mlp.gate_proj.weight"),
        "ffn_up.weight" => format!("{p}.mlp.up_proj.weight"),
        "ffn_down.weight" => format!("{p}.mlp.down_proj.weight"),
        "ffn_gate_inp.weight" => moe.router.clone(),
        "ffn_gate_shexp.weight" => moe.shared_gate.clone(),
        "ffn_up_shexp.weight" => moe.shared_up.clone(),
        "ffn_down_shexp.weight" => moe.shared_down.clone(),
        "ffn_gate_inp_shexp.weight" => {
            // [d] in GGUF, [1, d] in Hugging Face checkpoints.
            return Ok(vec![info(
                moe.shared_expert_gate.clone(),
                t,
                vec![1, shape[0]],
                t.start,
                t.len,
            )]);
        }
        "ffn_gate_exps.weight" | "ffn_up_exps.weight" | "ffn_down_exps.weight" => {
            let ExpertTensors::PerExpert { prefix, gate, up, down } = &moe.experts else {
                return Ok(Vec::new());
            };
            let suffix = match key {
                "ffn_gate_exps.weight" => gate,
                "ffn_up_exps.weight" => up,
                _ => down,
            };
            if shape.len() != 3 || shape[0] == 0 {
                return Err(Error::Shape {
                    what: format!("GGUF tensor `{}` (experts, out, in)", t.name),
                    expected: vec![c.moe.num_experts(), 0, 0],
                    actual: shape,
                });
            }
            let per_expert = t.len / shape[0] as u64;
            return Ok((0..shape[0])
                .map(|e| {
                    let name = ExpertTensors::expert(prefix, e, suffix);
                    info(
                        name,
                        t,
                        shape[1..].to_vec(),
                        t.start + e as u64 * per_expert,
                        per_expert,
                    )
                })
                .collect());
        }
        _ => return Ok(Vec::new()),
    };
    whole(&name)
}

/// Metadata lookups naming the key and file in errors.
struct Meta<'a> {
    meta: &'a BTreeMap<String, MetaValue>,
    arch: &'a str,
    source: &'a str,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta.get(&format!("{}.{key}", self.arch))
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| {
                Error::Config(format!(
                    "{}: metadata `{}.{key}` is not an unsigned integer",
                    self.source, self.arch
                ))
            }),
        }
    }

    fn need(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| {
            Error::Config(format!(
                "{}: missing required metadata `{}.{key}`",
                self.source, self.arch
            ))
        })
    }

    fn f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
    }
}

fn config_of(files: &[GgufFile], meta: &BTreeMap<String, MetaValue>, source: &str) -> Result<ModelConfig> {
    let arch = match meta.get("general.architecture") {
        Some(MetaValue::Str(a)) => a.as_str(),
        _ => return Err(Error::Config(format!("{source}: missing `general.architecture`"))),
    };
    let m = Meta { meta, arch, source };
    let family = match arch {
        "llama" if m.usize("expert_count")?.unwrap_or(0) > 0 => Family::Mixtral,
        "qwen2moe" => Family::Qwen2Moe,
        "qwen3moe" => Family::Qwen3Moe,
        "olmoe" => Family::Olmoe,
        "granitemoe" => Family::GraniteMoe,
        other => {
            return Err(Error::Unsupported(format!(
                "{source}: GGUF architecture `{other}` (webmoe reads llama with experts (Mixtral), qwen2moe, qwen3moe, olmoe and granitemoe)"
            )))
        }
    };
    let tensor = |name: &str| files.iter().flat_map(|f| &f.tensors).find(|t| t.name == name);
    let hidden_size = m.need("embedding_length")?;
    let num_heads = m.need("attention.head_count")?;
    let num_kv_heads = m.usize("attention.head_count_kv")?.unwrap_or(num_heads);
    let num_layers = m.need("block_count")?;
    let head_dim = m
        .usize("attention.key_length")?
        .unwrap_or(hidden_size / num_heads.max(1));
    let vocab_size = match m.usize("vocab_size")? {
        Some(v) => v,
        None => tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| Error::Config(format!("{source}: no vocab_size and no token_embd.weight")))?
            as usize,
    };
    let experts = m.need("expert_count")?;
    let top_k = m.need("expert_used_count")?;
    let expert_ffn = match m.usize("expert_feed_forward_length")? {
        Some(f) => f,
        None => m.need("feed_forward_length")?,
    };
    let dense_ffn = m.usize("feed_forward_length")?.unwrap_or(0);
    let rotary_dim = m.usize("rope.dimension_count")?.unwrap_or(head_dim);
    // Norm of the top-k weights: llama.cpp's `expert_weights_norm`, else the family's practice.
    let renormalize = match m.get("expert_weights_norm") {
        Some(MetaValue::Bool(b)) => *b,
        _ => family == Family::Qwen3Moe,
    };
    let mut routing = RoutingConfig::softmax_top_k(experts, top_k, renormalize);
    if matches!(family, Family::Mixtral | Family::GraniteMoe) {
        routing.order = TopKOrder::TopKThenSoftmax;
    }
    let shared_expert = match m.usize("expert_shared_feed_forward_length")? {
        Some(ffn) if ffn > 0 => Some(SharedExpertConfig {
            ffn,
            gated: tensor("blk.0.ffn_gate_inp_shexp.weight").is_some()
                || files
                    .iter()
                    .flat_map(|f| &f.tensors)
                    .any(|t| t.name.ends_with("ffn_gate_inp_shexp.weight")),
        }),
        _ => None,
    };
    let mut moe = MoeConfig::new(hidden_size, expert_ffn, experts, top_k);
    moe.routing = routing;
    moe.shared_expert = shared_expert;
    moe.validate().map_err(|e| Error::Config(format!("{source}: {e}")))?;
    // A layer is sparse when it has a router.
    let sparse_layers = (0..num_layers)
        .map(|i| tensor(&format!("blk.{i}.ffn_gate_inp.weight")).is_some())
        .collect();
    let has = |key: &str| files.iter().flat_map(|f| &f.tensors).any(|t| t.name.ends_with(key));
    let qk_norm = if !has("attn_q_norm.weight") {
        QkNorm::None
    } else if tensor("blk.0.attn_q_norm.weight").is_some_and(|t| t.dims[0] as usize == head_dim)
        && family == Family::Qwen3Moe
    {
        QkNorm::PerHead
    } else {
        QkNorm::Full
    };
    let granite = family == Family::GraniteMoe;
    let eos = |key: &str| meta.get(key).and_then(MetaValue::as_u64).map(|v| v as u32);
    Ok(ModelConfig {
        family,
        architecture: format!("{arch} (GGUF)"),
        vocab_size,
        hidden_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings: m.need("context_length")?,
        rms_norm_eps: m.f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6) as f32,
        rope_theta: m.f64("rope.freq_base").unwrap_or(10000.0) as f32,
        rotary_dim,
        // llama.cpp's converter permutes q/k rows of llama-style models for its
        // interleaved RoPE; the decoder then rotates interleaved pairs too.
        rope_interleaved: matches!(family, Family::Mixtral | Family::GraniteMoe),
        tie_word_embeddings: tensor("output.weight").is_none(),
        attention_bias: has("attn_q.bias"),
        qk_norm,
        clip_qkv: m.f64("attention.clamp_kqv").map(|v| v as f32),
        moe,
        dense_ffn,
        sparse_layers,
        embedding_multiplier: if granite {
            m.f64("embedding_scale").unwrap_or(1.0) as f32
        } else {
            1.0
        },
        residual_multiplier: if granite {
            m.f64("residual_scale").unwrap_or(1.0) as f32
        } else {
            1.0
        },
        attention_scale: match (granite, m.f64("attention.scale")) {
            (true, Some(s)) => s as f32,
            _ => 1.0 / (head_dim as f32).sqrt(),
        },
        logits_scaling: if granite {
            m.f64("logit_scale").unwrap_or(1.0) as f32
        } else {
            1.0
        },
        bos_token_id: eos("tokenizer.ggml.bos_token_id"),
        eos_token_ids: eos("tokenizer.ggml.eos_token_id").into_iter().collect(),
        torch_dtype: None,
        per_expert_names: true,
    })
}

/// A `tokenizers` tokenizer from `tokenizer.ggml.*` (byte-level BPE, llama.cpp's
/// "gpt2" model with the GPT-2 pre-tokenizer); `None` when the file has none.
pub fn tokenizer_of(meta: &BTreeMap<String, MetaValue>, source: &str) -> Result<Option<Tokenizer>> {
    let Some(MetaValue::Str(model)) = meta.get("tokenizer.ggml.model") else {
        return Ok(None);
    };
    let strings = |key: &str| -> Vec<String> {
        match meta.get(key) {
            Some(MetaValue::Array(v)) => v
                .iter()
                .filter_map(|x| match x {
                    MetaValue::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens");
    let types: Vec<i64> = match meta.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(v)) => v.iter().map(|x| x.as_f64().unwrap_or(1.0) as i64).collect(),
        _ => Vec::new(),
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i.into())).collect();
    let (normalizer, pre_tokenizer, decoder, bpe) = match model.as_str() {
        "gpt2" => {
            let (pre_tokenizer, ignore_merges) = bpe_pre_tokenizer(meta, source)?;
            let bpe = serde_json::json!({"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": ignore_merges, "vocab": vocab,
                "merges": strings("tokenizer.ggml.merges")});
            let decoder = serde_json::json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (serde_json::Value::Null, pre_tokenizer, decoder, bpe)
        }
        "llama" => {
            // SentencePiece BPE as transformers' LlamaTokenizerFast has it: a space
            // prefix, spaces as U+2581, byte fallback, and merges derived from the
            // pieces' scores (transformers' SentencePieceExtractor).
            let scores: Vec<f64> = match meta.get("tokenizer.ggml.scores") {
                Some(MetaValue::Array(v)) => v.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect(),
                _ => vec![0.0; tokens.len()],
            };
            let unk = meta
                .get("tokenizer.ggml.unknown_token_id")
                .and_then(MetaValue::as_u64)
                .and_then(|id| tokens.get(id as usize).cloned());
            let bpe = serde_json::json!({"type": "BPE", "dropout": null, "unk_token": unk,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab,
                "merges": sentencepiece_merges(&tokens, &scores, &types)});
            let add_space = !matches!(meta.get("tokenizer.ggml.add_space_prefix"), Some(MetaValue::Bool(false)));
            let mut normalizers = Vec::new();
            if add_space {
                normalizers.push(serde_json::json!({"type": "Prepend", "prepend": "\u{2581}"}));
            }
            normalizers.push(serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
            let mut decoders = vec![
                serde_json::json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                serde_json::json!({"type": "ByteFallback"}),
                serde_json::json!({"type": "Fuse"}),
            ];
            if add_space {
                decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                serde_json::json!({"type": "Sequence", "normalizers": normalizers}),
                serde_json::Value::Null,
                serde_json::json!({"type": "Sequence", "decoders": decoders}),
                bpe,
            )
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{source}: tokenizer.ggml.model `{other}` (webmoe builds `gpt2` byte-level BPE and `llama` SentencePiece tokenizers); give --prompt-ids instead"
            )))
        }
    };
    // Control (3) and user-defined (4) tokens are special, as transformers has them.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": types.get(i) == Some(&3)})
        })
        .collect();
    let add_bos = matches!(meta.get("tokenizer.ggml.add_bos_token"), Some(MetaValue::Bool(true)));
    let bos = meta
        .get("tokenizer.ggml.bos_token_id")
        .and_then(MetaValue::as_u64)
        .and_then(|id| tokens.get(id as usize).map(|t| (id, t.clone())));
    let post_processor = match (add_bos, bos) {
        (true, Some((id, token))) => serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {token.clone(): {"id": token, "ids": [id], "tokens": [token]}}
        }),
        _ => serde_json::Value::Null,
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": bpe
    });
    Tokenizer::from_bytes(json.to_string().as_bytes(), &format!("{source} (tokenizer.ggml.*)")).map(Some)
}

/// The pre-tokenizer of a byte-level BPE GGUF tokenizer by llama.cpp's
/// `tokenizer.ggml.pre` name (as those models' Hugging Face tokenizers split text), and
/// whether words found whole in the vocabulary skip the merges (Llama 3).
fn bpe_pre_tokenizer(meta: &BTreeMap<String, MetaValue>, source: &str) -> Result<(serde_json::Value, bool)> {
    let pre = match meta.get("tokenizer.ggml.pre") {
        Some(MetaValue::Str(p)) => p.as_str(),
        _ => "default",
    };
    // llama.cpp's pre-tokenizer names, as the Hugging Face tokenizers of those models
    // split text before byte-level BPE.
    let split = |regex: &str| {
        serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
        ]})
    };
    Ok(match pre {
        // GPT-2's regex (OLMoE's GPT-NeoX tokenizer uses it too).
        "default" | "gpt-2" | "gpt2" | "olmo" => (
            serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            false,
        ),
        // Qwen2 / Qwen3: one digit per piece.
        "qwen2" => (split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), false),
        // Llama 3: up to three digits per piece.
        "llama-bpe" | "llama3" => (split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), true),
        other => {
            return Err(Error::Unsupported(format!(
                "{source}: tokenizer.ggml.pre `{other}` (webmoe knows default/gpt-2, olmo, qwen2 and llama-bpe); give --prompt-ids instead"
            )))
        }
    })
}

/// BPE merges of a SentencePiece vocabulary, as transformers' `SentencePieceExtractor`
/// derives them: every split of a piece into two pieces of the vocabulary, ordered by
/// the merged piece's score (highest first), the splits of one piece by their ids.
fn sentencepiece_merges(tokens: &[String], scores: &[f64], types: &[i64]) -> Vec<String> {
    let index: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f64, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        // Unknown (2), control (3) and byte (6) tokens are never the result of a merge.
        if matches!(types.get(id), Some(2) | Some(3) | Some(6)) {
            continue;
        }
        let mut local: Vec<(usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| Some((*index.get(&piece[..at])?, *index.get(&piece[at..])?)))
            .collect();
        local.sort();
        let score = scores.get(id).copied().unwrap_or(0.0);
        merges.extend(local.into_iter().map(|(l, r)| (score, l, r)));
    }
    // Stable: equal scores keep the vocabulary order.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges
        .into_iter()
        .map(|(_, l, r)| format!("{} {}", tokens[l], tokens[r]))
        .collect()
}

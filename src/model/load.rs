//! Loading a model onto the GPU. The checkpoint's headers plan the model (every buffer
//! allocated, every tensor checked); then its bytes stream tensor by tensor straight
//! into the GPU buffers in the stored format (converted only when a storage format is
//! forced), in bounded pieces: natively from a memory map, in the browser from `fetch`
//! streams ([`StreamingLoad`]). No host copy of the model is made.

use crate::error::{Error, Result};
use crate::gpu::{DType, GpuContext};
use crate::model::config::ModelConfig;
use crate::model::model::{Model, StorageFormats};
use crate::model::safetensors_io::{Checkpoint, ShardHeader, TensorStore};
use crate::model::tokenizer::Tokenizer;
use crate::ops::attention::check_cache_dtype;
use crate::util::Clock;
use crate::weights::upload::{Placements, PIECE_BYTES};
use crate::weights::{Uploader, WeightFormat};

/// Largest context allocated when the caller names none.
pub const DEFAULT_MAX_CONTEXT: usize = 4096;

#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Positions the model serves (default: max_position_embeddings, or for dynamic
    /// NTK that times the factor; at most 4096).
    pub max_context: Option<usize>,
    /// GPU storage of weight matrices (default: each tensor's own dtype).
    pub weight_format: Option<WeightFormat>,
    /// Quantize projections at load (Q8_0, Q4_0 or MXFP4; see [`StorageFormats`]).
    pub quantize: Option<WeightFormat>,
    /// Element type of the sessions' KV caches: f32 or f16 (default
    /// [`DEFAULT_KV_CACHE`]).
    pub kv_cache: Option<DType>,
}

/// The KV caches' element type unless the options say otherwise: f16, half the
/// memory of f32 and half the bytes each decode step reads. The kernels compute in
/// f32 either way; over the test families' fixtures f16 caches move the logits by at
/// most 6.1e-4 relative to transformers and keep every greedy token.
pub const DEFAULT_KV_CACHE: DType = DType::F16;

/// How a load went.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadStats {
    /// Checkpoint bytes read.
    pub bytes: u64,
    pub seconds: f64,
}

impl LoadStats {
    pub fn gb_per_second(&self) -> f64 {
        self.bytes as f64 / 1e9 / self.seconds.max(1e-9)
    }
}

pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
    /// The model's Jinja chat template (tokenizer_config.json's `chat_template`, or
    /// GGUF's `tokenizer.chat_template`), kept for chat front ends.
    pub chat_template: Option<String>,
    /// Why `tokenizer` is `None`, when the files have a tokenizer webmoe cannot build.
    pub tokenizer_error: Option<String>,
    pub stats: LoadStats,
}

impl LoadedModel {
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| match &self.tokenizer_error {
            Some(why) => Error::Unsupported(format!("{why}; give token ids instead")),
            None => Error::Config("the model has no tokenizer (tokenizer.json); give token ids instead".into()),
        })
    }
}

/// A load in progress: the model planned, its bytes arriving shard by shard in file
/// order (any piece sizes).
pub struct StreamingLoad {
    model: Model,
    placements: Placements,
    tokenizer: Option<Tokenizer>,
    clock: Clock,
}

impl StreamingLoad {
    /// Plans the model of `config` from the shards' headers.
    pub fn new(
        ctx: &GpuContext,
        config: ModelConfig,
        shards: Vec<ShardHeader>,
        tokenizer: Option<Tokenizer>,
        options: LoadOptions,
    ) -> Result<Self> {
        let clock = Clock::start();
        let checkpoint = Checkpoint::new(shards);
        let context = options
            .max_context
            .unwrap_or(config.context_limit().min(DEFAULT_MAX_CONTEXT));
        if let Some(q) = options.quantize.filter(|q| !q.is_quantized() || !q.can_encode()) {
            return Err(Error::Unsupported(format!(
                "quantizing to {q} at load: the formats webmoe quantizes to are q8_0, q4_0 and mxfp4"
            )));
        }
        if let Some(f) = options.weight_format.filter(|f| f.is_quantized()) {
            return Err(Error::Config(format!(
                "--dtype {f}: expected f32, f16 or bf16 (use --quantize for {f})"
            )));
        }
        let formats = StorageFormats {
            convert: options.weight_format,
            quantize: options.quantize,
        };
        let kv_cache = options.kv_cache.unwrap_or(DEFAULT_KV_CACHE);
        check_cache_dtype(kv_cache)?;
        let (mut model, placements) = Model::plan(ctx, config, &checkpoint, formats, context)?;
        model.kv_cache = kv_cache;
        Ok(Self {
            model,
            placements: Placements::new(checkpoint.shards.len(), placements),
            tokenizer,
            clock,
        })
    }

    /// Bytes of the checkpoint the model needs, and how many have arrived.
    pub fn progress(&self) -> (u64, u64) {
        (self.placements.fed_bytes(), self.placements.total_bytes())
    }

    /// The byte ranges of shard `shard` the model reads, in file order.
    pub fn ranges(&self, shard: usize) -> Vec<std::ops::Range<u64>> {
        self.placements.ranges(shard)
    }

    /// Takes `data`, bytes of shard `shard` from file offset `offset`.
    pub fn feed(&mut self, uploader: &mut Uploader, shard: usize, offset: u64, data: &[u8]) -> Result<()> {
        self.placements.feed(uploader, shard, offset, data)
    }

    /// The loaded model, once every tensor has arrived.
    pub fn finish(self, ctx: &GpuContext) -> Result<LoadedModel> {
        self.placements.check_complete()?;
        ctx.check_healthy()?;
        Ok(LoadedModel {
            stats: LoadStats {
                bytes: self.placements.total_bytes(),
                seconds: self.clock.seconds(),
            },
            model: self.model,
            tokenizer: self.tokenizer,
            chat_template: None,
            tokenizer_error: None,
        })
    }
}

/// Loads a model whose files are at hand (mapped or in memory), calling
/// `progress(bytes done, bytes total)` as it goes.
pub fn load_model(
    ctx: &GpuContext,
    config: ModelConfig,
    store: &TensorStore,
    tokenizer: Option<Tokenizer>,
    options: LoadOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<LoadedModel> {
    let mut load = StreamingLoad::new(ctx, config, store.checkpoint.shards.clone(), tokenizer, options)?;
    let mut uploader = Uploader::new(ctx);
    for shard in 0..store.checkpoint.shards.len() {
        let bytes = store.shard_bytes(shard);
        for range in load.ranges(shard) {
            let mut offset = range.start;
            while offset < range.end {
                let end = (offset + PIECE_BYTES as u64).min(range.end);
                load.feed(&mut uploader, shard, offset, &bytes[offset as usize..end as usize])?;
                offset = end;
                let (done, total) = load.progress();
                progress(done, total);
            }
        }
    }
    uploader.finish();
    load.finish(ctx)
}

/// [`load_model`] inside GPU error scopes, with a progress bar in bytes on stderr
/// (drawn only when it is a terminal), and the chat template set (native).
#[cfg(not(target_arch = "wasm32"))]
fn load_with_progress(
    ctx: &GpuContext,
    config: ModelConfig,
    store: &TensorStore,
    tokenizer: Option<Tokenizer>,
    chat_template: Option<String>,
    options: LoadOptions,
) -> Result<LoadedModel> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("loading {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let loaded = ctx.scoped_blocking("loading the model", || {
        load_model(ctx, config, store, tokenizer, options, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
    });
    bar.finish_and_clear();
    loaded.map(|l| LoadedModel { chat_template, ..l })
}

/// Loads `dir` (config.json, safetensors, optional tokenizer.json) (native), with a
/// progress bar in bytes.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_model_dir(ctx: &GpuContext, dir: &std::path::Path, options: LoadOptions) -> Result<LoadedModel> {
    let config = ModelConfig::from_dir(dir)?;
    let store = TensorStore::open_dir(dir)?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.exists() {
        let bytes = std::fs::read(&tokenizer_path).map_err(|e| Error::io(tokenizer_path.display(), e))?;
        Some(Tokenizer::from_bytes(&bytes, &tokenizer_path.display().to_string())?)
    } else {
        None
    };
    let chat_template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v.get("chat_template")?.as_str().map(str::to_string));
    load_with_progress(ctx, config, &store, tokenizer, chat_template, options)
}

/// The files of a split GGUF model: `name-00001-of-00003.gguf` and its siblings, or
/// just `path` when it is not split.
#[cfg(not(target_arch = "wasm32"))]
pub fn gguf_split_files(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // ...-00001-of-00003.gguf
    let split = name
        .strip_suffix(".gguf")
        .and_then(|stem| stem.rsplit_once("-of-"))
        .and_then(|(head, total)| {
            let (base, index) = head.rsplit_once('-')?;
            let n: usize = total.parse().ok()?;
            (index.len() == total.len() && index.parse::<usize>().ok()? >= 1)
                .then(|| (base.to_string(), total.len(), n))
        });
    match split {
        None => vec![path.to_path_buf()],
        Some((base, width, n)) => (1..=n)
            .map(|i| path.with_file_name(format!("{base}-{i:0width$}-of-{n:0width$}.gguf")))
            .collect(),
    }
}

/// Loads a GGUF model (one file, or the first of a split set) (native).
#[cfg(not(target_arch = "wasm32"))]
pub fn load_gguf(ctx: &GpuContext, path: &std::path::Path, options: LoadOptions) -> Result<LoadedModel> {
    use crate::model::gguf::{gguf_checkpoint, parse_gguf};
    use crate::model::safetensors_io::{Checkpoint, ShardBytes};
    let mut parsed = Vec::new();
    let mut bytes = Vec::new();
    for file in gguf_split_files(path) {
        let handle = std::fs::File::open(&file).map_err(|e| Error::io(file.display(), e))?;
        // SAFETY: read-only mapping; a file changed while loading is outside what webmoe guards against.
        let map = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| Error::io(file.display(), e))?;
        parsed.push(parse_gguf(&file.display().to_string(), &map, map.len() as u64)?);
        bytes.push(ShardBytes::Mapped(map));
    }
    let model = gguf_checkpoint(&parsed)?;
    let (chat_template, tokenizer_error) = (model.chat_template, model.tokenizer_error);
    let store = TensorStore::from_parts(Checkpoint::new(model.shards), bytes);
    let loaded = load_with_progress(ctx, model.config, &store, model.tokenizer, chat_template, options)?;
    Ok(LoadedModel {
        tokenizer_error,
        ..loaded
    })
}

/// Loads `path`: a Hugging Face model directory or a `.gguf` file (native).
#[cfg(not(target_arch = "wasm32"))]
pub fn load_model_path(ctx: &GpuContext, path: &std::path::Path, options: LoadOptions) -> Result<LoadedModel> {
    if path.extension().is_some_and(|e| e == "gguf") {
        load_gguf(ctx, path, options)
    } else {
        load_model_dir(ctx, path, options)
    }
}

/// The files of a model directory, already in memory (the embedded model, tests).
pub struct ModelFiles {
    pub config_json: String,
    /// (file name, contents) of each safetensors shard.
    pub safetensors: Vec<(String, crate::model::safetensors_io::ShardBytes)>,
    pub tokenizer_json: Option<Vec<u8>>,
}

/// Loads a model from in-memory files.
pub fn load_model_files(ctx: &GpuContext, files: ModelFiles, options: LoadOptions) -> Result<LoadedModel> {
    let config = ModelConfig::from_json(&files.config_json, "config.json")?;
    let store = TensorStore::build(files.safetensors)?;
    let tokenizer = match &files.tokenizer_json {
        Some(bytes) => Some(Tokenizer::from_bytes(bytes, "tokenizer.json")?),
        None => None,
    };
    load_model(ctx, config, &store, tokenizer, options, &mut |_, _| {})
}

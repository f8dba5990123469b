//! Loading a model directory (or the same files as bytes) onto the GPU.

use crate::error::{Error, Result};
use crate::gpu::{DType, GpuContext};
use crate::model::config::ModelConfig;
use crate::model::safetensors_io::TensorStore;
use crate::model::tokenizer::Tokenizer;
use crate::model::transformer::Transformer;
use crate::model::weights::ModelWeights;

/// Largest KV cache allocated when the caller names none.
pub const DEFAULT_MAX_CONTEXT: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// KV-cache positions (default: max_position_embeddings, at most 4096).
    pub max_context: Option<usize>,
    pub weight_dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_context: None,
            weight_dtype: DType::F32,
        }
    }
}

pub struct LoadedModel {
    pub model: Transformer,
    pub tokenizer: Option<Tokenizer>,
}

impl LoadedModel {
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::Config("the model has no tokenizer.json; give token ids instead".into()))
    }
}

/// Builds the model from a parsed config and its tensors.
pub fn load_model(
    ctx: &GpuContext,
    mut config: ModelConfig,
    store: &TensorStore,
    tokenizer: Option<Tokenizer>,
    options: LoadOptions,
) -> Result<LoadedModel> {
    config.moe.weight_dtype = options.weight_dtype;
    #[cfg(not(target_arch = "wasm32"))]
    let weights = {
        // Drawn on stderr only when it is a terminal.
        let bar = indicatif::ProgressBar::new(config.num_layers as u64).with_style(
            indicatif::ProgressStyle::with_template("loading {bar:30} {pos}/{len} layers ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let weights = ModelWeights::load_with_progress(&config, store, &mut |done| bar.set_position(done as u64));
        bar.finish_and_clear();
        weights?
    };
    #[cfg(target_arch = "wasm32")]
    let weights = ModelWeights::load(&config, store)?;
    let context = options
        .max_context
        .unwrap_or(config.max_position_embeddings.min(DEFAULT_MAX_CONTEXT));
    let model = Transformer::new(ctx, config, &weights, context)?;
    Ok(LoadedModel { model, tokenizer })
}

/// Loads `dir` (config.json, safetensors, optional tokenizer.json) (native).
#[cfg(not(target_arch = "wasm32"))]
pub fn load_model_dir(ctx: &GpuContext, dir: &std::path::Path, options: LoadOptions) -> Result<LoadedModel> {
    let config = ModelConfig::from_dir(dir)?;
    let store = TensorStore::open_dir(dir)?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.exists() {
        let bytes = std::fs::read(&tokenizer_path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", tokenizer_path.display())))?;
        Some(Tokenizer::from_bytes(&bytes, &tokenizer_path.display().to_string())?)
    } else {
        None
    };
    load_model(ctx, config, &store, tokenizer, options)
}

/// The files of a model directory, already in memory (the browser, the embedded model).
pub struct ModelFiles {
    pub config_json: String,
    /// (file name, contents) of each safetensors shard.
    pub safetensors: Vec<(String, Vec<u8>)>,
    pub tokenizer_json: Option<Vec<u8>>,
}

/// Loads a model from in-memory files.
pub fn load_model_files(ctx: &GpuContext, files: ModelFiles, options: LoadOptions) -> Result<LoadedModel> {
    let config = ModelConfig::from_json(&files.config_json, "config.json")?;
    let store = TensorStore::from_bytes(files.safetensors)?;
    let tokenizer = match &files.tokenizer_json {
        Some(bytes) => Some(Tokenizer::from_bytes(bytes, "tokenizer.json")?),
        None => None,
    };
    load_model(ctx, config, &store, tokenizer, options)
}

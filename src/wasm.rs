//! The browser API (wasm-bindgen, ES module): an engine on `navigator.gpu` that
//! loads a model from in-memory files, generates with a per-token callback carrying
//! per-layer routing counts, can be cancelled, reports adapter info and speeds, and
//! runs the kernel self-test against the CPU references.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wasm_bindgen::prelude::*;

use crate::chat::ChatTemplate;
use crate::gpu::context::{describe_adapter, ContextOptions, KernelTarget};
use crate::gpu::GpuContext;
use crate::model::config::ModelConfig;
use crate::model::generate::{generate, SamplingParams};
use crate::model::load::{LoadOptions, LoadedModel, StreamingLoad};
use crate::model::safetensors_io::{header_prefix_len, parse_header};
use crate::model::session::Session;
use crate::model::tokenizer::{TextStream, Tokenizer};
use crate::openai::{response_id, Api, ApiError, ChatRequest, CompletionRequest, Reply, Settings};
use crate::weights::Uploader;

struct State {
    ctx: GpuContext,
    model: RefCell<Option<Rc<LoadedModel>>>,
    /// A load in progress (between beginLoad and finishLoad).
    loading: RefCell<Option<StreamingLoad>>,
    cancelled: Cell<bool>,
}

#[wasm_bindgen]
pub struct Engine {
    state: Rc<State>,
}

fn js_error(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen]
impl Engine {
    /// Creates an engine on the browser's WebGPU adapter. `kernels` ("gpu" or "cpu";
    /// default: by the adapter, "cpu" for a CPU driver such as SwiftShader) picks the
    /// kernel target, as `WEBMOE_KERNELS` does natively.
    pub async fn create(kernels: Option<String>) -> Result<Engine, JsError> {
        console_error_panic_hook();
        let kernel_target = match kernels.as_deref() {
            None | Some("") => None,
            Some(name) => Some(
                KernelTarget::parse(name)
                    .ok_or_else(|| JsError::new(&format!("kernels must be \"gpu\" or \"cpu\", not {name:?}")))?,
            ),
        };
        let options = ContextOptions {
            kernel_target,
            ..ContextOptions::default()
        };
        let ctx = GpuContext::new(options).await.map_err(js_error)?;
        Ok(Engine {
            state: Rc::new(State {
                ctx,
                model: RefCell::new(None),
                loading: RefCell::new(None),
                cancelled: Cell::new(false),
            }),
        })
    }

    /// Adapter, features and the limits that matter, as JSON.
    #[wasm_bindgen(js_name = adapterInfo)]
    pub fn adapter_info(&self) -> String {
        let ctx = &self.state.ctx;
        let info = &ctx.adapter_info;
        serde_json::json!({
            "description": describe_adapter(info),
            "name": info.name,
            "vendor": info.vendor,
            "backend": format!("{:?}", info.backend),
            "device_type": format!("{:?}", info.device_type),
            "driver": info.driver,
            "features": format!("{:?}", ctx.features),
            "max_storage_buffer_binding_size": ctx.limits.max_storage_buffer_binding_size,
            "max_buffer_size": ctx.limits.max_buffer_size,
            "max_compute_invocations_per_workgroup": ctx.limits.max_compute_invocations_per_workgroup,
            "kernel_target": format!("{:?}", ctx.kernel_target),
        })
        .to_string()
    }

    /// Bytes at the start of a safetensors file that hold its header, from the file's
    /// first 8 bytes.
    #[wasm_bindgen(js_name = headerLength)]
    pub fn header_length(first: &[u8]) -> Result<f64, JsError> {
        header_prefix_len("safetensors file", first)
            .map(|n| n as f64)
            .map_err(js_error)
    }

    /// Starts a streaming load: config.json text, tokenizer.json bytes, and per shard its
    /// name, size in bytes (0 if unknown) and header (at least `headerLength` bytes).
    /// Allocates the model's GPU buffers and returns JSON
    /// `{"total_bytes": n, "shards": [{"name", "ranges": [[start, end], ...]}]}`: the
    /// byte ranges of each shard to feed, in order.
    #[wasm_bindgen(js_name = beginLoad)]
    pub fn begin_load(
        &self,
        config_json: String,
        tokenizer_json: Option<Vec<u8>>,
        shard_names: Vec<String>,
        shard_sizes: Vec<f64>,
        headers: js_sys::Array,
    ) -> Result<String, JsError> {
        *self.state.model.borrow_mut() = None;
        *self.state.loading.borrow_mut() = None;
        let config = ModelConfig::from_json(&config_json, "config.json").map_err(js_error)?;
        let tokenizer = match &tokenizer_json {
            Some(bytes) => Some(Tokenizer::from_bytes(bytes, "tokenizer.json").map_err(js_error)?),
            None => None,
        };
        let mut parsed = Vec::with_capacity(shard_names.len());
        for (i, name) in shard_names.iter().enumerate() {
            let prefix = js_sys::Uint8Array::new(&headers.get(i as u32)).to_vec();
            let size = shard_sizes.get(i).copied().unwrap_or(0.0);
            let size = if size > 0.0 { size as u64 } else { u64::MAX };
            parsed.push(parse_header(name, &prefix, size).map_err(js_error)?);
        }
        self.start(config, parsed, tokenizer, &shard_names)
    }

    /// Starts a streaming load of GGUF files: per file its name, size in bytes (0 if
    /// unknown) and a prefix holding its metadata and tensor infos. When a prefix is too
    /// short the error says "more bytes needed": call again with a longer one. Returns
    /// the same plan as `beginLoad`; then feed every file from offset 0 (header bytes
    /// are skipped).
    #[wasm_bindgen(js_name = beginLoadGguf)]
    pub fn begin_load_gguf(
        &self,
        names: Vec<String>,
        sizes: Vec<f64>,
        prefixes: js_sys::Array,
    ) -> Result<String, JsError> {
        *self.state.model.borrow_mut() = None;
        *self.state.loading.borrow_mut() = None;
        let mut parsed = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let prefix = js_sys::Uint8Array::new(&prefixes.get(i as u32)).to_vec();
            let size = sizes.get(i).copied().unwrap_or(0.0);
            let size = if size > 0.0 { size as u64 } else { u64::MAX };
            parsed.push(crate::model::gguf::parse_gguf(name, &prefix, size).map_err(js_error)?);
        }
        let model = crate::model::gguf::gguf_checkpoint(&parsed).map_err(js_error)?;
        self.start(model.config, model.shards, model.tokenizer, &names)
    }

    fn start(
        &self,
        config: ModelConfig,
        shards: Vec<crate::model::safetensors_io::ShardHeader>,
        tokenizer: Option<Tokenizer>,
        names: &[String],
    ) -> Result<String, JsError> {
        let load =
            StreamingLoad::new(&self.state.ctx, config, shards, tokenizer, LoadOptions::default()).map_err(js_error)?;
        let shards: Vec<serde_json::Value> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let ranges: Vec<[u64; 2]> = load.ranges(i).iter().map(|r| [r.start, r.end]).collect();
                serde_json::json!({ "name": name, "ranges": ranges })
            })
            .collect();
        let summary = serde_json::json!({ "total_bytes": load.progress().1, "shards": shards }).to_string();
        *self.state.loading.borrow_mut() = Some(load);
        Ok(summary)
    }

    /// Writes `bytes`, the contents of shard `shard` from file offset `offset`, into the
    /// model's GPU buffers (pieces of any size, in file order). Returns the bytes the
    /// load has taken so far.
    pub fn feed(&self, shard: u32, offset: f64, bytes: &[u8]) -> Result<f64, JsError> {
        let mut loading = self.state.loading.borrow_mut();
        let load = loading
            .as_mut()
            .ok_or_else(|| JsError::new("feed called without beginLoad"))?;
        let mut uploader = Uploader::new(&self.state.ctx);
        load.feed(&mut uploader, shard as usize, offset as u64, bytes)
            .map_err(js_error)?;
        Ok(load.progress().0 as f64)
    }

    /// Ends a streaming load (every byte must have arrived); returns the model summary.
    #[wasm_bindgen(js_name = finishLoad)]
    pub fn finish_load(&self) -> Result<String, JsError> {
        let load = self
            .state
            .loading
            .borrow_mut()
            .take()
            .ok_or_else(|| JsError::new("finishLoad called without beginLoad"))?;
        let loaded = load.finish(&self.state.ctx).map_err(js_error)?;
        let c = &loaded.model.config;
        let summary = serde_json::json!({
            "architecture": c.architecture,
            "layers": c.num_layers,
            "moe_layers": loaded.model.moe_layers(),
            "experts": c.moe.num_experts(),
            "top_k": c.moe.top_k(),
            "hidden_size": c.hidden_size,
            "vocab_size": c.vocab_size,
            "context": loaded.model.max_context,
            "weight_bytes": loaded.model.weight_bytes(),
            "kv_bytes_per_position": loaded.model.kv_bytes_per_position(),
            "load_seconds": loaded.stats.seconds,
        })
        .to_string();
        *self.state.model.borrow_mut() = Some(Rc::new(loaded));
        Ok(summary)
    }

    /// Compiles the kernels of a generation with a few throwaway steps (model::warm_up),
    /// so the first generation runs at the model's speed. Resolves to the seconds it
    /// took.
    #[wasm_bindgen(js_name = warmUp)]
    pub fn warm_up(&self) -> Result<js_sys::Promise, JsError> {
        let model = self.model()?;
        let state = self.state.clone();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let seconds = crate::model::warm_up::warm_up(&state.ctx, &model.model)
                .await
                .map_err(|e| JsValue::from(JsError::new(&e.to_string())))?;
            Ok(JsValue::from(seconds))
        }))
    }

    /// Token ids of `text` with the loaded model's tokenizer.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsError> {
        let model = self.model()?;
        model.tokenizer().and_then(|t| t.encode(text)).map_err(js_error)
    }

    fn model(&self) -> Result<Rc<LoadedModel>, JsError> {
        self.state
            .model
            .borrow()
            .clone()
            .ok_or_else(|| JsError::new("no model is loaded"))
    }

    /// Generates after `prompt_ids`. `on_token(id, text, routing, layers, experts)` is
    /// called per token (`routing`: Uint32Array of tokens per expert per MoE layer in
    /// the forward that produced it); returning false stops. Resolves to a JSON report.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        prompt_ids: Vec<u32>,
        max_tokens: u32,
        temperature: f32,
        top_k: u32,
        top_p: f32,
        seed: u32,
        on_token: js_sys::Function,
    ) -> Result<js_sys::Promise, JsError> {
        let model = self.model()?;
        let state = self.state.clone();
        state.cancelled.set(false);
        let sampling = SamplingParams {
            temperature,
            top_k: top_k as usize,
            top_p,
            seed: seed as u64,
        };
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let config = &model.model.config;
            let layers = config.sparse_layers.iter().filter(|s| **s).count() as u32;
            let experts = config.moe.num_experts() as u32;
            let stop = config.eos_token_ids.clone();
            let mut stream = TextStream::default();
            let mut session = Session::new(&state.ctx, &model.model, None)
                .map_err(|e| JsValue::from(JsError::new(&e.to_string())))?;
            let result = generate(
                &state.ctx,
                &model.model,
                &mut session,
                &prompt_ids,
                max_tokens as usize,
                sampling,
                &stop,
                |id, routing| {
                    let text = model
                        .tokenizer
                        .as_ref()
                        .and_then(|t| stream.push(t, id).ok())
                        .unwrap_or_default();
                    let counts = js_sys::Uint32Array::from(routing);
                    let args = js_sys::Array::of5(
                        &id.into(),
                        &text.into(),
                        &counts.into(),
                        &layers.into(),
                        &experts.into(),
                    );
                    let go_on = on_token
                        .apply(&JsValue::NULL, &args)
                        .map(|v| v.as_bool() != Some(false))
                        .unwrap_or(false);
                    go_on && !state.cancelled.get()
                },
            )
            .await
            .map_err(|e| JsValue::from(JsError::new(&e.to_string())))?;
            let report = serde_json::json!({
                "prompt_ids": result.prompt_ids,
                "generated_ids": result.generated_ids,
                "prefill_tokens_per_second": result.prefill_tokens_per_second(),
                "decode_tokens_per_second": result.decode_tokens_per_second(),
                "cancelled": state.cancelled.get(),
            });
            Ok(JsValue::from(report.to_string()))
        }))
    }

    /// An OpenAI-style request, answered in OpenAI's shapes (the same code as
    /// `webmoe serve`): `endpoint` is "chat/completions" or "completions", `request`
    /// its JSON body. Chats use the model's chat template, else `fallback_template`.
    /// Streamed requests call `on_chunk(json)` per chunk and resolve to "" at the end;
    /// others resolve to the response JSON. Errors reject with OpenAI's error JSON
    /// (`{"error": {...}, "status": N}`).
    #[wasm_bindgen(js_name = openaiRequest)]
    pub fn openai_request(
        &self,
        endpoint: String,
        request: String,
        fallback_template: Option<String>,
        on_chunk: js_sys::Function,
    ) -> Result<js_sys::Promise, JsError> {
        let model = self.model()?;
        let state = self.state.clone();
        state.cancelled.set(false);
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let reject = |e: ApiError| {
                let mut body = e.body();
                body["status"] = e.status.into();
                JsValue::from(body.to_string())
            };
            let (api, ids, settings, name) =
                openai_prompt(&model, &endpoint, &request, fallback_template.as_deref()).map_err(reject)?;
            let context = model.model.max_context;
            if ids.is_empty() || ids.len() >= context {
                return Err(reject(ApiError::invalid(
                    format!(
                        "the prompt has {} tokens; the context holds {context} positions",
                        ids.len()
                    ),
                    Some("messages"),
                )));
            }
            let tokenizer = model
                .tokenizer()
                .map_err(|e| reject(ApiError::invalid(e.to_string(), None)))?;
            let random = (js_sys::Math::random() * 2f64.powi(53)) as u64;
            let created = (js_sys::Date::now() / 1000.0) as u64;
            let mut reply = Reply::new(
                api,
                response_id(api, random),
                created,
                name,
                ids.len(),
                settings.stops.clone(),
            );
            let stop_ids = settings.stop_ids(&model.model.config.eos_token_ids);
            let max_tokens = settings.max_tokens.unwrap_or(context).min(context - ids.len());
            let mut session = Session::new(&state.ctx, &model.model, None)
                .map_err(|e| reject(ApiError::invalid(e.to_string(), None)))?;
            let send = |chunk: &serde_json::Value| {
                let _ = on_chunk.call1(&JsValue::NULL, &JsValue::from(chunk.to_string()));
            };
            let mut finish = "length";
            generate(
                &state.ctx,
                &model.model,
                &mut session,
                &ids,
                max_tokens,
                settings.sampling,
                &stop_ids,
                |id, _| {
                    if stop_ids.contains(&id) {
                        finish = "stop";
                        return false;
                    }
                    let chunk = reply.token_chunk(id, |ids| tokenizer.decode(ids).unwrap_or_default());
                    if let (true, Some(chunk)) = (settings.stream, chunk) {
                        send(&chunk);
                    }
                    if reply.assembler.stopped {
                        finish = "stop";
                    }
                    !reply.assembler.stopped && !state.cancelled.get()
                },
            )
            .await
            .map_err(|e| {
                let mut err = ApiError::invalid(e.to_string(), None);
                err.status = 500;
                err.kind = "server_error";
                reject(err)
            })?;
            if settings.stream {
                for chunk in reply.closing_chunks(finish, settings.include_usage) {
                    send(&chunk);
                }
                Ok(JsValue::from(""))
            } else {
                Ok(JsValue::from(reply.complete(finish).to_string()))
            }
        }))
    }

    /// Stops a running generation after the current token.
    pub fn cancel(&self) {
        self.state.cancelled.set(true);
    }

    /// Runs the benchmark suite (`webmoe bench`) on this browser's adapter. `shapes`:
    /// comma-separated parts of model names (empty: all); `tokens`: token counts
    /// (empty: the suite's). Resolves to the same JSON report as the CLI's `--json`.
    pub fn bench(&self, quick: bool, shapes: String, tokens: Vec<u32>, repeats: u32) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut options = crate::bench::BenchOptions::new(quick);
            options.shapes = shapes
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if !tokens.is_empty() {
                options.tokens = tokens.iter().map(|t| *t as usize).collect();
            }
            if repeats > 0 {
                options.repeats = repeats as usize;
            }
            let report = crate::bench::run_bench(&state.ctx, &options, &[])
                .await
                .map_err(|e| JsValue::from(JsError::new(&e.to_string())))?;
            let json = serde_json::json!({
                "report": report,
                "markdown": crate::bench::markdown(&report),
            });
            Ok(JsValue::from(json.to_string()))
        })
    }

    /// Runs the kernel self-test (every op against its CPU reference). Resolves to JSON.
    #[wasm_bindgen(js_name = selfTest)]
    pub fn self_test(&self) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let report = crate::selftest::run(&state.ctx).await;
            Ok(JsValue::from(serde_json::to_string(&report).unwrap_or_default()))
        })
    }
}

/// The embedded model's chat template (its GGUF copy, which the demo loads, has none).
#[wasm_bindgen(js_name = embeddedChatTemplate)]
pub fn embedded_chat_template() -> String {
    crate::chat::EMBEDDED_TEMPLATE.to_string()
}

/// The endpoint, prompt ids, settings and model name of an OpenAI-style request.
fn openai_prompt(
    model: &LoadedModel,
    endpoint: &str,
    request: &str,
    fallback_template: Option<&str>,
) -> Result<(Api, Vec<u32>, Settings, String), ApiError> {
    let bad = |e: crate::Error| ApiError::invalid(e.to_string(), None);
    let parse_error = |e: serde_json::Error| ApiError::invalid(format!("the body is not a valid request: {e}"), None);
    let tokenizer = model.tokenizer().map_err(bad)?;
    match endpoint.trim_start_matches('/').trim_start_matches("v1/") {
        "chat/completions" => {
            let r: ChatRequest = serde_json::from_str(request).map_err(parse_error)?;
            let name = r.common.model.clone().unwrap_or_else(|| "webmoe".into());
            let settings = r.common.settings(&name)?;
            let source = model
                .chat_template
                .as_deref()
                .or(fallback_template)
                .ok_or_else(|| ApiError::invalid("the model has no chat template: use completions", None))?;
            let template = ChatTemplate::for_model(source, &model.model.config, tokenizer).map_err(bad)?;
            Ok((Api::Chat, r.prompt_ids(&template, tokenizer)?, settings, name))
        }
        "completions" => {
            let r: CompletionRequest = serde_json::from_str(request).map_err(parse_error)?;
            let name = r.common.model.clone().unwrap_or_else(|| "webmoe".into());
            let settings = r.common.settings(&name)?;
            Ok((Api::Completion, r.prompt_ids(tokenizer)?, settings, name))
        }
        other => Err(ApiError::invalid(
            format!("no endpoint {other:?}: use chat/completions or completions"),
            None,
        )),
    }
}

fn console_error_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("webmoe panicked: {info}").into());
    }));
}

//! The browser API (wasm-bindgen, ES module): an engine on `navigator.gpu` that
//! loads a model from in-memory files, generates with a per-token callback carrying
//! per-layer routing counts, can be cancelled, reports adapter info and speeds, and
//! runs the kernel self-test against the CPU references.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wasm_bindgen::prelude::*;

use crate::gpu::context::{describe_adapter, ContextOptions};
use crate::gpu::GpuContext;
use crate::model::generate::{generate, SamplingParams};
use crate::model::load::{load_model_files, LoadOptions, LoadedModel, ModelFiles};
use crate::model::tokenizer::TextStream;

struct State {
    ctx: GpuContext,
    model: RefCell<Option<Rc<LoadedModel>>>,
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
    /// Creates an engine on the browser's WebGPU adapter.
    pub async fn create() -> Result<Engine, JsError> {
        console_error_panic_hook();
        let ctx = GpuContext::new(ContextOptions::default()).await.map_err(js_error)?;
        Ok(Engine {
            state: Rc::new(State {
                ctx,
                model: RefCell::new(None),
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
        })
        .to_string()
    }

    /// Loads a model from its files: config.json text, safetensors shards (an array of
    /// Uint8Array with their names) and tokenizer.json bytes. Returns a JSON summary.
    #[wasm_bindgen(js_name = loadModel)]
    pub fn load_model(
        &self,
        config_json: String,
        shard_names: Vec<String>,
        shards: js_sys::Array,
        tokenizer_json: Option<Vec<u8>>,
    ) -> Result<String, JsError> {
        let safetensors = shard_names
            .into_iter()
            .zip(shards.iter())
            .map(|(name, bytes)| (name, js_sys::Uint8Array::new(&bytes).to_vec()))
            .collect();
        let files = ModelFiles {
            config_json,
            safetensors,
            tokenizer_json,
        };
        *self.state.model.borrow_mut() = None;
        let loaded = load_model_files(&self.state.ctx, files, LoadOptions::default()).map_err(js_error)?;
        let c = &loaded.model.config;
        let summary = serde_json::json!({
            "architecture": c.architecture,
            "layers": c.num_layers,
            "moe_layers": c.sparse_layers.iter().filter(|s| **s).count(),
            "experts": c.moe.num_experts(),
            "top_k": c.moe.top_k(),
            "hidden_size": c.hidden_size,
            "vocab_size": c.vocab_size,
            "context": loaded.model.max_context,
        })
        .to_string();
        *self.state.model.borrow_mut() = Some(Rc::new(loaded));
        Ok(summary)
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
            let result = generate(
                &state.ctx,
                &model.model,
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

fn console_error_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("webmoe panicked: {info}").into());
    }));
}

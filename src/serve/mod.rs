//! `webmoe serve`: an OpenAI-compatible HTTP server (axum on tokio) in front of a GPU
//! loop that batches every active request ([`engine`]).
pub mod engine;
pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::load::LoadedModel;
use crate::serve::engine::{Engine, EngineOptions};
use crate::serve::http::{router, ServerState};

/// How `webmoe serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub model_name: String,
    pub api_key: Option<String>,
    pub engine: EngineOptions,
    /// How long running requests may go on after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
}

/// Serves `loaded` until SIGINT or SIGTERM: binds, prints the address, answers
/// requests; on a signal it stops accepting connections, lets running requests
/// finish for `shutdown_grace`, ends the rest with an error event, and returns.
pub fn serve(ctx: GpuContext, loaded: LoadedModel, options: ServeOptions) -> Result<()> {
    let LoadedModel {
        model,
        tokenizer,
        chat_template,
        tokenizer_error,
        ..
    } = loaded;
    let tokenizer = tokenizer.ok_or_else(|| {
        Error::Unsupported(format!(
            "serving needs the model's tokenizer: {}",
            tokenizer_error.unwrap_or_else(|| "the model has no tokenizer.json".into())
        ))
    })?;
    let chat_template = ChatTemplate::for_model(
        chat_template
            .as_deref()
            .unwrap_or("{{ raise_exception('the model has no chat template: use /v1/completions') }}"),
        &model.config,
        &tokenizer,
    )?;
    let stop_ids = model.config.eos_token_ids.clone();
    let engine = Engine::start(Arc::new(ctx), Arc::new(model), options.engine)?;
    let state = Arc::new(ServerState {
        engine: engine.clone(),
        tokenizer,
        chat_template,
        model_name: options.model_name.clone(),
        api_key: options.api_key.clone(),
        stop_ids,
        created: http::now(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("could not start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let address = format!("{}:{}", options.host, options.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| Error::io(&address, e))?;
        let local: SocketAddr = listener.local_addr().map_err(|e| Error::io(&address, e))?;
        eprintln!(
            "serving {} on http://{local}/v1 ({} sequences x {} positions, prompt chunks of {} tokens)",
            options.model_name, options.engine.max_sequences, options.engine.context, options.engine.prefill_chunk
        );
        let grace = options.shutdown_grace;
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                eprintln!("shutting down: finishing running requests (up to {grace:?})");
                engine.shutdown(grace);
            })
            .await
            .map_err(|e| Error::io(&address, e))
    })?;
    eprintln!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

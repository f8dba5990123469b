//! The HTTP side of `webmoe serve` (axum): OpenAI's routes, API-key check, JSON
//! errors, server-sent events, and graceful shutdown.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::chat::ChatTemplate;
use crate::error::ErrorKind;
use crate::model::tokenizer::Tokenizer;
use crate::openai::{response_id, Api, ApiError, ChatRequest, CompletionRequest, Reply, Settings};
use crate::serve::engine::{EngineHandle, Event, Finish, Request, SubmitError};

/// Everything a handler needs.
pub struct ServerState {
    pub engine: EngineHandle,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
    pub model_name: String,
    pub api_key: Option<String>,
    pub stop_ids: Vec<u32>,
    pub created: u64,
}

type Shared = Arc<ServerState>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body())).into_response()
    }
}

/// The routes.
pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), check_key));
    Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError {
                status: 404,
                message: "no such route".into(),
                kind: "invalid_request_error",
                param: None,
                code: None,
            }
        })
        .with_state(state)
}

async fn check_key(State(state): State<Shared>, request: HttpRequest, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError {
                status: 401,
                message: "Incorrect API key provided.".into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("invalid_api_key"),
            }
            .into_response();
        }
    }
    next.run(request).await
}

async fn health(State(state): State<Shared>) -> Response {
    if state.engine.metrics.shutting_down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.engine.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<Shared>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": state.model_name, "object": "model", "created": state.created, "owned_by": "webmoe",
    }]}))
}

/// Parses a JSON body into `T`, with OpenAI-shaped errors for malformed input. Any
/// content type is accepted (curl's `-d` sends a form type), as llama.cpp's server does.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("the body is not a valid request: {e}"), None))
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn chat_completions(State(state): State<Shared>, body: Bytes) -> Response {
    let run = || -> Result<(Vec<u32>, Settings), ApiError> {
        let request: ChatRequest = parse(&body)?;
        let settings = request.common.settings(&state.model_name)?;
        Ok((request.prompt_ids(&state.chat_template, &state.tokenizer)?, settings))
    };
    match run() {
        Ok((ids, settings)) => generate(state, Api::Chat, ids, settings).await,
        Err(e) => e.into_response(),
    }
}

async fn completions(State(state): State<Shared>, body: Bytes) -> Response {
    let run = || -> Result<(Vec<u32>, Settings), ApiError> {
        let request: CompletionRequest = parse(&body)?;
        let settings = request.common.settings(&state.model_name)?;
        Ok((request.prompt_ids(&state.tokenizer)?, settings))
    };
    match run() {
        Ok((ids, settings)) => generate(state, Api::Completion, ids, settings).await,
        Err(e) => e.into_response(),
    }
}

fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidInput | ErrorKind::LimitExceeded => 400,
        ErrorKind::Unsupported => 503,
        _ => 500,
    }
}

fn failure(kind: ErrorKind, message: String) -> ApiError {
    let status = status_of(kind);
    ApiError {
        status,
        message,
        kind: if status == 500 {
            "server_error"
        } else {
            "invalid_request_error"
        },
        param: None,
        code: None,
    }
}

/// Submits the request and answers it, streamed or whole.
async fn generate(state: Shared, api: Api, prompt: Vec<u32>, settings: Settings) -> Response {
    let (events, receiver) = unbounded_channel();
    let context = state.engine.options.context;
    let request = Request {
        max_tokens: settings.max_tokens.unwrap_or(usize::MAX),
        prompt: prompt.clone(),
        sampling: settings.sampling,
        stop_ids: settings.stop_ids(&state.stop_ids),
        events,
    };
    if let Err(e) = state.engine.submit(request) {
        return match e {
            SubmitError::QueueFull => ApiError {
                status: 429,
                message: format!(
                    "the server is busy: {} requests are already waiting; retry later",
                    state.engine.options.max_queue
                ),
                kind: "rate_limit_error",
                param: None,
                code: Some("queue_full"),
            },
            SubmitError::ShuttingDown => ApiError {
                status: 503,
                message: "the server is shutting down".into(),
                kind: "server_error",
                param: None,
                code: None,
            },
            SubmitError::Invalid(message) => ApiError {
                status: 400,
                message: format!("{message} (context: {context} positions)"),
                kind: "invalid_request_error",
                param: Some(if api == Api::Chat { "messages" } else { "prompt" }),
                code: Some("context_length_exceeded"),
            },
        }
        .into_response();
    }
    let reply = Reply::new(
        api,
        response_id(api, rand::random()),
        now(),
        state.model_name.clone(),
        prompt.len(),
        settings.stops.clone(),
    );
    let answer = Answer { state, reply };
    if settings.stream {
        sse(answer, receiver, settings.include_usage).into_response()
    } else {
        whole(answer, receiver).await
    }
}

/// A request's reply and the tokenizer that turns its tokens into text.
struct Answer {
    state: Shared,
    reply: Reply,
}

impl Answer {
    fn token_chunk(&mut self, token: u32) -> Option<Value> {
        let tokenizer = &self.state.tokenizer;
        self.reply
            .token_chunk(token, |ids| tokenizer.decode(ids).unwrap_or_default())
    }
}

fn finish_name(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

async fn whole(mut answer: Answer, mut receiver: UnboundedReceiver<Event>) -> Response {
    loop {
        match receiver.recv().await {
            Some(Event::Token(t)) => {
                answer.token_chunk(t);
                if answer.reply.assembler.stopped {
                    return Json(answer.reply.complete("stop")).into_response();
                }
            }
            Some(Event::Done(f)) => return Json(answer.reply.complete(finish_name(f))).into_response(),
            Some(Event::Failed { kind, message }) => return failure(kind, message).into_response(),
            None => return failure(ErrorKind::Gpu, "the engine stopped".into()).into_response(),
        }
    }
}

struct StreamState {
    answer: Answer,
    receiver: Option<UnboundedReceiver<Event>>,
    include_usage: bool,
    pending: std::collections::VecDeque<SseEvent>,
}

fn data(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

fn sse(
    answer: Answer,
    receiver: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let start = StreamState {
        answer,
        receiver: Some(receiver),
        include_usage,
        pending: Default::default(),
    };
    let events = stream::unfold(start, |mut s| async move {
        loop {
            if let Some(event) = s.pending.pop_front() {
                return Some((Ok(event), s));
            }
            let receiver = s.receiver.as_mut()?;
            let finish = match receiver.recv().await {
                Some(Event::Token(t)) => {
                    if let Some(chunk) = s.answer.token_chunk(t) {
                        s.pending.push_back(data(&chunk));
                    }
                    s.answer.reply.assembler.stopped.then_some("stop")
                }
                Some(Event::Done(f)) => Some(finish_name(f)),
                Some(Event::Failed { kind, message }) => {
                    s.pending.push_back(data(&failure(kind, message).body()));
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    s.receiver = None;
                    continue;
                }
                None => {
                    s.receiver = None;
                    continue;
                }
            };
            if let Some(finish) = finish {
                // Dropping the receiver cancels the request in the engine (stop string).
                s.receiver = None;
                for chunk in s.answer.reply.closing_chunks(finish, s.include_usage) {
                    s.pending.push_back(data(&chunk));
                }
                s.pending.push_back(SseEvent::default().data("[DONE]"));
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

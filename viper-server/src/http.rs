//! The HTTP side: the axum router and [`serve`].
//!
//! Handlers parse and check the request (images decoded on the blocking pool), hand it to the engine
//! over its bounded queue (full: 503), and wait for the engine's events on the request's own channel.
//! When a client goes away its handler (or its event stream) is dropped, which closes that channel:
//! the engine drops the sequence at its next tick.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use viper_model::FinishReason;

use crate::api::{parse_request, ApiError, RequestLimits};
use crate::engine::{Completion, Engine, Event, Job};
use crate::metrics::Metrics;
use crate::ServerError;

/// HTTP-side settings.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The model id `/v1/models` lists and responses carry.
    pub model_name: String,
    /// Largest request body, bytes (beyond: 413).
    pub max_body_bytes: usize,
    /// Image, image-count and `max_tokens` limits.
    pub limits: RequestLimits,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self { model_name: "viper".into(), max_body_bytes: 64 << 20, limits: RequestLimits::default() }
    }
}

#[derive(Clone)]
struct AppState {
    jobs: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    options: Arc<HttpOptions>,
    created: u64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, `GET /metrics`; anything
/// else is a 404 in OpenAI's error format.
pub fn router(engine: &Engine, options: HttpOptions) -> Router {
    let max_body = options.max_body_bytes;
    let state = AppState {
        jobs: engine.jobs.clone(),
        metrics: engine.metrics.clone(),
        options: Arc::new(options),
        created: now(),
    };
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn not_found() -> Response {
    ApiError::invalid("no such route: see /v1/chat/completions, /v1/models, /health, /metrics")
        .with_status(StatusCode::NOT_FOUND)
        .with_code("not_found")
        .into_response()
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn models(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{ "id": s.options.model_name, "object": "model", "created": s.created, "owned_by": "viper" }],
    }))
}

async fn metrics(State(s): State<AppState>) -> Response {
    let queued = (s.jobs.max_capacity() - s.jobs.capacity()) as u64;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.prometheus(queued)).into_response()
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Eos | FinishReason::StopString => "stop",
    }
}

/// A response or chunk id.
fn completion_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!("chatcmpl-{:016x}", RandomState::new().hash_one(SystemTime::now()))
}

async fn chat_completions(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match chat(s, body).await {
        Ok(r) => r,
        Err(e) => {
            log::debug!("request refused: {} {}", e.status, e.message);
            e.into_response()
        }
    }
}

async fn chat(s: AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        let error = ApiError::invalid(format!("cannot read the request body: {}", e.body_text())).with_status(status);
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            error.with_code("body_too_large")
        } else {
            error
        }
    })?;
    let limits = s.options.limits.clone();
    let parsed = tokio::task::spawn_blocking(move || parse_request(&body, &limits))
        .await
        .map_err(|e| ApiError::internal(format!("request parsing failed: {e}")))??;
    let stream = parsed.stream;
    let (job, mut rx) = Job::new(parsed.conversation, &parsed.image_bytes, parsed.generation, parsed.return_token_ids);
    s.jobs.try_send(job).map_err(|_| {
        Metrics::add(&s.metrics.rejected_queue_full, 1);
        ApiError::overloaded()
    })?;
    match rx.recv().await {
        Some(Event::Started { .. }) => {}
        Some(Event::Error(e)) => return Err(e),
        _ => return Err(ApiError::internal("the engine stopped")),
    }
    let (id, created, model) = (completion_id(), now(), s.options.model_name.clone());
    if stream {
        return Ok(stream_response(rx, id, created, model));
    }
    loop {
        match rx.recv().await {
            Some(Event::Text(_) | Event::Started { .. }) => {}
            Some(Event::Done(c)) => return Ok(Json(completion_json(&c, &id, created, &model)).into_response()),
            Some(Event::Error(e)) => return Err(e),
            None => return Err(ApiError::internal("the engine stopped")),
        }
    }
}

fn completion_json(c: &Completion, id: &str, created: u64, model: &str) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": c.text },
            "logprobs": null,
            "finish_reason": finish_reason(c.finish),
        }],
        "usage": c.usage,
        "viper_stats": c.stats,
    })
}

/// Server-sent `chat.completion.chunk`s: the role, the content deltas, the finish reason (with
/// `usage` and `viper_stats`), then `[DONE]`.
fn stream_response(rx: mpsc::UnboundedReceiver<Event>, id: String, created: u64, model: String) -> Response {
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        })
    };
    let data = |v: &Value| SseEvent::default().data(v.to_string());
    let mut queue = VecDeque::new();
    queue.push_back(data(&chunk(json!({ "role": "assistant", "content": "" }), None)));
    struct St<F> {
        rx: mpsc::UnboundedReceiver<Event>,
        queue: VecDeque<SseEvent>,
        ended: bool,
        chunk: F,
    }
    let state = St { rx, queue, ended: false, chunk };
    let events = futures_util::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(event) = st.queue.pop_front() {
                return Some((Ok::<_, Infallible>(event), st));
            }
            if st.ended {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Text(t)) => st.queue.push_back(data(&(st.chunk)(json!({ "content": t }), None))),
                Some(Event::Started { .. }) => {}
                Some(Event::Done(c)) => {
                    let mut last = (st.chunk)(json!({}), Some(finish_reason(c.finish)));
                    last["usage"] = json!(c.usage);
                    last["viper_stats"] = json!(c.stats);
                    st.queue.push_back(data(&last));
                    st.queue.push_back(SseEvent::default().data("[DONE]"));
                    st.ended = true;
                }
                Some(Event::Error(e)) => {
                    st.queue.push_back(data(&e.body()));
                    st.queue.push_back(SseEvent::default().data("[DONE]"));
                    st.ended = true;
                }
                None => st.ended = true,
            }
        }
    });
    Sse::new(events).into_response()
}

/// Serves `engine` on `addr` until Ctrl-C or SIGTERM (in-flight requests are finished), calling
/// `on_listen` with the bound address (port 0 picks a free one). Runs its own tokio runtime.
pub fn serve(
    engine: Engine,
    options: HttpOptions,
    addr: SocketAddr,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let app = router(&engine, options);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        on_listen(listener.local_addr()?);
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await
    })?;
    drop(runtime);
    log::info!("server stopped; finishing the engine");
    engine.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            log::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                log::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => log::info!("Ctrl-C: shutting down"),
        () = term => log::info!("SIGTERM: shutting down"),
    }
}

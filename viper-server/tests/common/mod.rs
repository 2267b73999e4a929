//! What the server tests share: the reference checkpoints, an engine on them, requests through the
//! router in-process, and the library path to compare with.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use burn::backend::NdArray;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use viper_model::{GenerationConfig, ImageLoader, Viper, ViperLoadOptions};
use viper_server::{router, Engine, EngineConfig, HttpOptions};

pub type B = NdArray;

/// Every test's time bound.
pub const BOUND: Duration = Duration::from_secs(150);

pub fn reference(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference").join(name)
}

pub fn image_path(model: &str, image: &str) -> PathBuf {
    reference(model).join("images").join(image)
}

/// `data:image/png;base64,…` of a reference image.
pub fn data_url(model: &str, image: &str) -> String {
    let bytes = std::fs::read(image_path(model, image)).unwrap();
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn options() -> ViperLoadOptions {
    ViperLoadOptions { strict_context: true, ..ViperLoadOptions::default() }
}

/// The model as the library loads it, for the reference answers.
pub fn library(model: &str) -> Viper<B> {
    Viper::<B>::load(reference(model), options(), &Default::default()).unwrap()
}

pub fn engine(model: &str, config: EngineConfig) -> Engine {
    let dir = reference(model);
    Engine::spawn(move || Viper::<B>::load(dir, options(), &Default::default()), config).unwrap()
}

pub fn app(engine: &Engine, options: HttpOptions) -> Router {
    router(engine, options)
}

/// One user message: the images (as data URLs) first, then the question.
pub fn user(question: &str, images: &[String]) -> Value {
    let mut parts: Vec<Value> =
        images.iter().map(|url| json!({ "type": "image_url", "image_url": { "url": url } })).collect();
    parts.push(json!({ "type": "text", "text": question }));
    json!({ "role": "user", "content": parts })
}

/// A greedy request of exactly `max_tokens` tokens, returning the token ids.
pub fn greedy(messages: Vec<Value>, max_tokens: usize) -> Value {
    json!({
        "model": "viper",
        "messages": messages,
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "return_token_ids": true,
    })
}

pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = tokio::time::timeout(BOUND, app.clone().oneshot(request)).await.expect("bounded").unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, body)
}

pub async fn post_raw(app: &Router, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let request = Request::post(path).header("content-type", "application/json").body(Body::from(body)).unwrap();
    send(app, request).await
}

/// POSTs `body` to `/v1/chat/completions`; the status and the JSON answer.
pub async fn post(app: &Router, body: &Value) -> (StatusCode, Value) {
    let (status, bytes) = post_raw(app, "/v1/chat/completions", serde_json::to_vec(body).unwrap()).await;
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&bytes) }));
    (status, value)
}

/// Posts every request at once (each on its own task); the handles answer in request order.
pub fn post_concurrently(app: &Router, requests: &[Value]) -> Vec<tokio::task::JoinHandle<(StatusCode, Value)>> {
    requests
        .iter()
        .map(|request| {
            let (app, request) = (app.clone(), request.clone());
            tokio::spawn(async move { post(&app, &request).await })
        })
        .collect()
}

pub async fn get(app: &Router, path: &str) -> (StatusCode, String) {
    let (status, body) = send(app, Request::get(path).body(Body::empty()).unwrap()).await;
    (status, String::from_utf8(body).unwrap())
}

/// The generated ids of a response (`return_token_ids`).
pub fn completion_ids(response: &Value) -> Vec<u32> {
    serde_json::from_value(response["viper_stats"]["completion_ids"].clone()).expect("completion_ids")
}

/// What `Viper::generate` answers (greedy, exactly `max_tokens`, no eos): ids and text, and the prompt ids.
pub fn library_answer(
    viper: &Viper<B>,
    question: &str,
    images: &[&str],
    model: &str,
    max_tokens: usize,
) -> (Vec<i64>, Vec<u32>, String) {
    let loader = ImageLoader::default();
    let images = images.iter().map(|i| loader.open(image_path(model, i)).unwrap()).collect();
    let conversation = Viper::<B>::conversation(question, images);
    let config = GenerationConfig { max_new_tokens: max_tokens, ignore_eos: true, ..viper.default_generation() };
    let (prepared, generation) = viper.generate(&conversation, &config, |_| {}).unwrap();
    (prepared.tokens.ids, generation.ids, generation.text)
}

/// A metric's value in the Prometheus text.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

//! The server on the tiny reference checkpoints (NdArray): answers equal the library's, batched equals
//! alone, a state-cache hit equals a miss, and every bad request gets an OpenAI-style error.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use viper_server::api::RequestLimits;
use viper_server::{EngineConfig, HttpOptions};

const Q1: &str = "What colors are in this picture?";
const Q2: &str = "Describe the shapes you can see.";
const Q3: &str = "Tell me a short story about a red square.";

/// The content of a stream of server-sent events, with the chunks' JSON.
fn parse_sse(body: &str) -> (Vec<Value>, bool) {
    let mut chunks = Vec::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            done = true;
        } else {
            chunks.push(serde_json::from_str(data).unwrap());
        }
    }
    (chunks, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_the_library_path_plain_and_streamed() {
    let viper = library("mamba-s1");
    let (prompt_ids, want_ids, want_text) = library_answer(&viper, Q1, &["image_97x61.png"], "mamba-s1", 12);
    // Small chunks: the prompt (≈ 137 positions) is prefilled over several ticks.
    let engine = engine("mamba-s1", EngineConfig { prefill_chunk: 32, ..EngineConfig::default() });
    let app = app(&engine, HttpOptions::default());
    let request = greedy(vec![user(Q1, &[data_url("mamba-s1", "image_97x61.png")])], 12);

    let (status, r) = post(&app, &request).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    // The conversation is rendered and tokenized as `viper generate` / `viper chat` do it.
    assert_eq!(r["viper_stats"]["prompt_ids"], json!(prompt_ids));
    assert_eq!(completion_ids(&r), want_ids);
    assert_eq!(r["choices"][0]["message"]["content"], json!(want_text));
    let prompt_tokens = viper
        .prepare(&viper_model::Viper::<B>::conversation(
            Q1,
            vec![viper_model::ImageLoader::default().open(image_path("mamba-s1", "image_97x61.png")).unwrap()],
        ))
        .unwrap()
        .inputs_embeds
        .dims()[1];
    assert_eq!(
        r["usage"],
        json!({ "prompt_tokens": prompt_tokens, "completion_tokens": 12, "total_tokens": prompt_tokens + 12 })
    );
    assert!(r["viper_stats"]["prefill_chunks"].as_u64().unwrap() > 2);

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let (status, body) = post_raw(&app, "/v1/chat/completions", serde_json::to_vec(&streamed).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (chunks, done) = parse_sse(&String::from_utf8(body).unwrap());
    assert!(done, "the stream ends with [DONE]");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 12);
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(text, want_text);

    // A stop string cuts the answer before it, streamed or not.
    let stop: String = want_text.chars().skip(3).take(2).collect();
    let mut stopped = request.clone();
    stopped["stop"] = json!(stop);
    stopped["ignore_eos"] = json!(false);
    let (status, r) = post(&app, &stopped).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let cut = &want_text[..want_text.find(&stop).unwrap()];
    assert_eq!(r["choices"][0]["message"]["content"], json!(cut));
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    stopped["stream"] = json!(true);
    let (_, body) = post_raw(&app, "/v1/chat/completions", serde_json::to_vec(&stopped).unwrap()).await;
    let (chunks, _) = parse_sse(&String::from_utf8(body).unwrap());
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(text, cut);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_greedy_requests_equal_their_runs_alone() {
    let viper = library("mamba-s1");
    let cases: [(&str, &[&str]); 3] = [(Q1, &["image_97x61.png"]), (Q2, &["image_40x120.png"]), (Q3, &[])];
    let want: Vec<Vec<u32>> =
        cases.iter().map(|(q, images)| library_answer(&viper, q, images, "mamba-s1", 10).1).collect();
    let requests: Vec<Value> = cases
        .iter()
        .map(|(q, images)| {
            let urls: Vec<String> = images.iter().map(|i| data_url("mamba-s1", i)).collect();
            greedy(vec![user(q, &urls)], 10)
        })
        .collect();
    let engine = engine("mamba-s1", EngineConfig { max_batch: 3, prefill_chunk: 64, ..EngineConfig::default() });
    let app = app(&engine, HttpOptions::default());

    let mut alone = Vec::new();
    for request in &requests {
        let (status, r) = post(&app, request).await;
        assert_eq!(status, StatusCode::OK, "{r}");
        assert_eq!(r["viper_stats"]["max_batch"], 1);
        alone.push(completion_ids(&r));
    }
    assert_eq!(alone, want, "alone = Viper::generate");

    let handles = post_concurrently(&app, &requests);
    let mut batched = Vec::new();
    let mut widest = 0;
    for h in handles {
        let (status, r) = h.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{r}");
        widest = widest.max(r["viper_stats"]["max_batch"].as_u64().unwrap());
        batched.push(completion_ids(&r));
    }
    assert_eq!(batched, want, "batched = alone");
    assert!(widest >= 2, "the requests were decoded together (widest batch {widest})");
    let (_, metrics) = get(&app, "/metrics").await;
    assert!(metric(&metrics, "viper_decode_sequences_total") > metric(&metrics, "viper_decode_steps_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_cache_hit_gives_the_same_answer_and_skips_the_image_prefix() {
    let viper = library("mamba-s1");
    let url = data_url("mamba-s1", "image_84x84.png");
    let first = greedy(vec![user(Q1, std::slice::from_ref(&url))], 8);
    let second = greedy(vec![user(Q2, std::slice::from_ref(&url))], 8);
    let cached_engine = engine("mamba-s1", EngineConfig::default());
    let cached = app(&cached_engine, HttpOptions::default());
    let plain_engine = engine("mamba-s1", EngineConfig { state_cache_bytes: 0, ..EngineConfig::default() });
    let plain = app(&plain_engine, HttpOptions::default());

    let (_, a) = post(&cached, &first).await;
    assert_eq!(a["viper_stats"]["cache_hit"], false, "{a}");
    let (_, b) = post(&cached, &second).await;
    let (_, b_plain) = post(&plain, &second).await;
    let stats = &b["viper_stats"];
    assert_eq!(stats["cache_hit"], true, "{b}");
    let (cached_positions, prefilled, total) = (
        stats["cached_positions"].as_u64().unwrap(),
        stats["prefill_positions"].as_u64().unwrap(),
        stats["prompt_positions"].as_u64().unwrap(),
    );
    assert!(cached_positions > 0 && prefilled + cached_positions == total && prefilled < total, "{stats}");
    assert_eq!(b_plain["viper_stats"]["prefill_positions"].as_u64().unwrap(), total);
    assert_eq!(completion_ids(&b), completion_ids(&b_plain), "with and without the cache");
    assert_eq!(completion_ids(&b), library_answer(&viper, Q2, &["image_84x84.png"], "mamba-s1", 8).1);

    let (_, metrics) = get(&cached, "/metrics").await;
    assert_eq!(metric(&metrics, "viper_state_cache_hits_total"), 1);
    assert_eq!(metric(&metrics, "viper_state_cache_misses_total"), 1);
    assert_eq!(metric(&metrics, "viper_state_cache_positions_saved_total"), cached_positions);
    assert!(metric(&metrics, "viper_state_cache_entries") >= 1 && metric(&metrics, "viper_state_cache_bytes") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let engine = engine("mamba-s1", EngineConfig::default());
    let limits = RequestLimits {
        max_images: 2,
        images: viper_model::ImageLoader { max_bytes: 12_000, ..Default::default() },
        ..Default::default()
    };
    let app = app(&engine, HttpOptions { model_name: "tiny".into(), max_body_bytes: 1 << 20, limits });
    let small = data_url("mamba-s1", "image_23x17.png");
    let good = greedy(vec![user(Q1, std::slice::from_ref(&small))], 2);
    let with_part = |part: Value| json!({ "messages": [{ "role": "user", "content": [part] }] });

    let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        ("malformed JSON", b"{\"messages\": [".to_vec(), StatusCode::BAD_REQUEST),
        ("missing messages", b"{\"model\": \"tiny\"}".to_vec(), StatusCode::BAD_REQUEST),
        ("empty messages", b"{\"messages\": []}".to_vec(), StatusCode::BAD_REQUEST),
        (
            "unknown part",
            with_part(json!({ "type": "audio", "audio": "x" })).to_string().into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad base64",
            with_part(json!({ "type": "image_url", "image_url": { "url": "data:image/png;base64,@@@not base64" } }))
                .to_string()
                .into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not an image",
            with_part(json!({ "type": "image_url", "image_url": { "url": "data:image/png;base64,aGVsbG8gd29ybGQ=" } }))
                .to_string()
                .into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "remote url",
            with_part(json!({ "type": "image_url", "image_url": { "url": "https://example.com/a.png" } }))
                .to_string()
                .into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "image too large",
            greedy(vec![user(Q1, &[data_url("mamba-s1", "image_84x84.png")])], 2).to_string().into(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "too many images",
            greedy(vec![user(Q1, &[small.clone(), small.clone(), small.clone()])], 2).to_string().into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "beyond the context",
            greedy(vec![user(&"colour ".repeat(3000), &[])], 2).to_string().into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "image marker in the text",
            greedy(vec![user("<image> what?", &[])], 2).to_string().into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad top_p",
            json!({ "messages": [{ "role": "user", "content": "hi" }], "top_p": 0.0 }).to_string().into(),
            StatusCode::BAD_REQUEST,
        ),
        ("body too large", vec![b' '; 2 << 20], StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (name, body, want) in cases {
        let (status, bytes) = post_raw(&app, "/v1/chat/completions", body).await;
        assert_eq!(status, want, "{name}: {}", String::from_utf8_lossy(&bytes));
        let error: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("{name}: not JSON"));
        let code = match name {
            "beyond the context" => Some("context_length_exceeded"),
            "image too large" => Some("image_too_large"),
            "too many images" => Some("too_many_images"),
            "remote url" => Some("remote_image_refused"),
            "unknown part" => Some("unsupported_content_type"),
            "bad base64" => Some("invalid_base64"),
            _ => None,
        };
        if let Some(code) = code {
            assert_eq!(error["error"]["code"], code, "{name}: {error}");
        }
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {error}");
        assert!(error["error"]["type"].is_string(), "{name}: {error}");
        // The server still answers.
        let (status, r) = post(&app, &good).await;
        assert_eq!(status, StatusCode::OK, "after {name}: {r}");
        assert_eq!(r["model"], "tiny");
    }
    let (status, body) = get(&app, "/v2/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("\"error\""), "{body}");

    let (status, models) = get(&app, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(get(&app, "/health").await.0, StatusCode::OK);
    let (_, metrics) = get(&app, "/metrics").await;
    assert_eq!(metric(&metrics, "viper_active_sequences"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503() {
    let engine = engine("mamba-s1", EngineConfig { max_batch: 1, queue: 1, ..EngineConfig::default() });
    let app = app(&engine, HttpOptions::default());
    let long = greedy(vec![user(Q3, &[])], 40);
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let (app, long) = (app.clone(), long.clone());
            tokio::spawn(async move { post(&app, &long).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for h in handles {
        let (status, r) = h.await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r["error"]["code"], "queue_full", "{r}");
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&StatusCode::SERVICE_UNAVAILABLE), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE), "{statuses:?}");
    let (status, _) = post(&app, &greedy(vec![user(Q3, &[])], 2)).await;
    assert_eq!(status, StatusCode::OK);
}

/// Over a real socket: a streaming client that goes away mid-answer frees its slot (the only one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_frees_its_slot() {
    let engine = engine("mamba-s1", EngineConfig { max_batch: 1, ..EngineConfig::default() });
    let app = app(&engine, HttpOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let endless = json!({
        "messages": [{ "role": "user", "content": Q3 }],
        "max_tokens": 60000, "ignore_eos": true, "stream": true,
    });
    let client = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = endless.to_string();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until a few content deltas arrived, then hang up.
        while String::from_utf8_lossy(&seen).matches("\"content\"").count() < 4 {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0 && start.elapsed() < BOUND, "the stream ended early");
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    });
    client.await.unwrap();

    // The one slot is free again: a short request is answered.
    let short = greedy(vec![user(Q1, &[])], 3);
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(BOUND)).unwrap();
        let body = short.to_string();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"completion_tokens\":3"), "{answer}");
    assert_eq!(engine.metrics.cancelled.load(std::sync::atomic::Ordering::Relaxed), 1);
    server.abort();
}

/// Jamba: stepped one by one inside a tick (no batched attention), still equal to the library.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jamba_answers_equal_the_library_alone_and_together() {
    let viper = library("jamba-s1");
    let want = [
        library_answer(&viper, Q1, &["image_97x61.png"], "jamba-s1", 6),
        library_answer(&viper, Q3, &[], "jamba-s1", 6),
    ];
    let engine = engine("jamba-s1", EngineConfig { max_batch: 2, prefill_chunk: 48, ..EngineConfig::default() });
    let app = app(&engine, HttpOptions::default());
    let requests =
        [greedy(vec![user(Q1, &[data_url("jamba-s1", "image_97x61.png")])], 6), greedy(vec![user(Q3, &[])], 6)];
    let handles = post_concurrently(&app, &requests);
    for (h, (prompt_ids, ids, _)) in handles.into_iter().zip(&want) {
        let (status, r) = h.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{r}");
        assert_eq!(r["viper_stats"]["prompt_ids"], json!(prompt_ids));
        assert_eq!(&completion_ids(&r), ids);
    }
    // The same image again: a cache hit (Mamba states and KV cache), the same answer.
    let (_, again) = post(&app, &requests[0]).await;
    assert_eq!(again["viper_stats"]["cache_hit"], true, "{again}");
    assert_eq!(completion_ids(&again), want[0].1);
}

/// A long prefill runs in chunks between decode steps: a sequence that is decoding keeps producing
/// tokens while another one's prompt is prefilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prefill_does_not_stall_decoding() {
    let engine = engine("mamba-s1", EngineConfig { max_batch: 2, prefill_chunk: 8, ..EngineConfig::default() });
    let app = app(&engine, HttpOptions::default());
    let mut decoding = greedy(vec![user(Q3, &[])], 400);
    decoding["stream"] = json!(true);
    let first = {
        let app = app.clone();
        tokio::spawn(
            async move { post_raw(&app, "/v1/chat/completions", serde_json::to_vec(&decoding).unwrap()).await },
        )
    };
    // Once the first sequence decodes, a prompt of ≈ 137 positions (≈ 18 chunks of 8) arrives.
    let start = Instant::now();
    while get(&app, "/metrics")
        .await
        .1
        .lines()
        .all(|l| !l.starts_with("viper_generated_tokens_total ") || l.ends_with(" 0"))
    {
        assert!(start.elapsed() < BOUND, "the first request never decoded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, long) = post(&app, &greedy(vec![user(Q1, &[data_url("mamba-s1", "image_97x61.png")])], 2)).await;
    assert_eq!(status, StatusCode::OK, "{long}");
    let stats = &long["viper_stats"];
    let chunks = stats["prefill_chunks"].as_u64().unwrap();
    assert!(chunks >= 10, "{stats}");
    // One decode step of the other sequence per tick of this prefill, but the last (if it finished).
    let decoded = stats["decoded_during_prefill"].as_u64().unwrap();
    assert!(decoded + 1 >= chunks || first.is_finished(), "{stats}");
    assert!(decoded > 0, "{stats}");
    let (status, _) = first.await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// A one-request-at-a-time HTTP/1.1 server on 127.0.0.1 for the remote-image test: `/image.png` serves
/// `png`, `/large.png` a body beyond the limit without a `Content-Length`, `/announced.png` a
/// `Content-Length` beyond the limit, anything else a 404.
fn image_host(png: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let path = String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap_or("").to_string();
            let _ = match path.as_str() {
                "/image.png" => stream
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", png.len()).as_bytes())
                    .and_then(|_| stream.write_all(&png)),
                "/announced.png" => stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\nConnection: close\r\n\r\n")
                    .and_then(|_| stream.write_all(b"short")),
                "/large.png" => stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
                    .and_then(|_| stream.write_all(&vec![0u8; 64 << 10])),
                _ => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            };
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_images_are_fetched_only_when_allowed_and_bounded() {
    let engine = engine("mamba-s1", EngineConfig::default());
    let png = std::fs::read(image_path("mamba-s1", "image_23x17.png")).unwrap();
    let host = image_host(png);
    let images = viper_model::ImageLoader { max_bytes: 12_000, ..Default::default() };
    let options = |remote_images| HttpOptions {
        model_name: "tiny".into(),
        max_body_bytes: 1 << 20,
        limits: RequestLimits { images, remote_images, ..Default::default() },
    };
    let refusing = app(&engine, options(None));
    let fetching = app(&engine, options(Some(viper_server::api::RemoteImages::default())));
    let remote = |path: &str| greedy(vec![user(Q1, &[format!("{host}{path}")])], 4);

    let (status, error) = post(&refusing, &remote("/image.png")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"]["code"], "remote_image_refused", "{error}");

    // Fetched, the image gives the answer it gives inline.
    let (status, fetched) = post(&fetching, &remote("/image.png")).await;
    assert_eq!(status, StatusCode::OK, "{fetched}");
    let inline = greedy(vec![user(Q1, &[data_url("mamba-s1", "image_23x17.png")])], 4);
    let (status, inline) = post(&fetching, &inline).await;
    assert_eq!(status, StatusCode::OK, "{inline}");
    assert_eq!(completion_ids(&fetched), completion_ids(&inline));
    assert!(!completion_ids(&fetched).is_empty());

    for (path, want, code) in [
        ("/missing.png", StatusCode::BAD_REQUEST, "remote_image_fetch_failed"),
        ("/large.png", StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
        ("/announced.png", StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
    ] {
        let (status, error) = post(&fetching, &remote(path)).await;
        assert_eq!(status, want, "{path}: {error}");
        assert_eq!(error["error"]["code"], code, "{path}: {error}");
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (status, error) = post(&fetching, &greedy(vec![user(Q1, &[format!("http://{closed}/x.png")])], 4)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"]["code"], "remote_image_fetch_failed", "{error}");
}

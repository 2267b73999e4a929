//! OpenAI's chat-completions JSON: the request (with viper's extensions), its checks and conversion
//! to a [`Conversation`] and a [`GenerationConfig`], the response objects, and OpenAI-style errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use viper_chat_template::{Conversation, VIPER_SYSTEM_PROMPT};
use viper_model::{GenerationConfig, SamplingConfig};
use viper_processor::{ImageLoader, ProcessorError, RgbImage};

/// An error as OpenAI returns it: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, `server_error`, …).
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`context_length_exceeded`, `image_too_large`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// This error with another status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// This error naming the request field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// This error with a machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// A 500 `server_error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self { kind: "server_error", ..Self::invalid(message).with_status(StatusCode::INTERNAL_SERVER_ERROR) }
    }

    /// 503: the request queue is full.
    pub fn overloaded() -> Self {
        Self {
            kind: "server_error",
            ..Self::invalid("the server is at capacity (request queue full): retry later")
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
                .with_code("queue_full")
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// A message's `content`: a string or an array of parts (parts are checked by hand, for clear errors).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// `{"type": "text", "text"}` and `{"type": "image_url", "image_url": {"url"}}` parts.
    Parts(Vec<serde_json::Value>),
}

/// One message of the request.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The content (`null` is allowed for an assistant message).
    #[serde(default)]
    pub content: Option<Content>,
}

/// The body of `POST /v1/chat/completions` (the fields viper reads; others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The model id (any value is accepted: the server holds one model).
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    /// Most tokens to generate (`max_completion_tokens` wins).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    /// 0 (the default here) is greedy.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// The sampler's seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Choices per request (only 1).
    #[serde(default)]
    pub n: Option<usize>,
    /// Extension: top-k filtering (0 = off).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Extension: min-p filtering.
    #[serde(default)]
    pub min_p: Option<f32>,
    /// Extension: CTRL-style repetition penalty.
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Extension: generate `max_tokens` whatever the model says (vLLM's `ignore_eos`).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Extension: return the prompt's and the answer's token ids in `viper_stats`.
    #[serde(default)]
    pub return_token_ids: bool,
}

/// Limits the request checks apply.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Image decoding limits (encoded bytes, pixels, sides).
    pub images: ImageLoader,
    /// Most images per request.
    pub max_images: usize,
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: usize,
    /// Largest `max_tokens` accepted.
    pub max_tokens_limit: usize,
    /// Fetching `http(s)://` image URLs; `None` (the default) refuses them.
    pub remote_images: Option<RemoteImages>,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            images: ImageLoader::default(),
            max_images: 4,
            default_max_tokens: 512,
            max_tokens_limit: 1 << 16,
            remote_images: None,
        }
    }
}

/// How `http(s)://` image URLs are fetched where the operator allows it (`viper serve
/// --allow-remote-images`). Off by default: a server that fetches the URLs its clients name reaches hosts
/// on their behalf, the server's own network included. The body is bounded by the image byte limit
/// ([`ImageLoader::max_bytes`]) whatever the server announces; the connection and the whole fetch by
/// `timeout` (name resolution is the system resolver's, with its own timeouts).
#[derive(Debug, Clone)]
pub struct RemoteImages {
    /// Time for the whole fetch: connection, redirects, body.
    pub timeout: std::time::Duration,
    /// Most requests in a redirect chain, the first included (ureq's count: 5 follows 4 redirects).
    pub max_redirects: u32,
}

impl Default for RemoteImages {
    fn default() -> Self {
        Self { timeout: std::time::Duration::from_secs(30), max_redirects: 5 }
    }
}

/// A checked request: the conversation to render, the images' encoded bytes, what to generate.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    /// As `viper chat` builds it: the system prompt (Viper's default when the request has none), then
    /// the turns, each user turn's images as `<image>\n` markers before its text.
    pub conversation: Conversation<RgbImage>,
    /// The encoded bytes of every image, in prompt order (the state cache hashes them).
    pub image_bytes: Vec<Vec<u8>>,
    /// Sampling and stop conditions (eos ids are the engine's to add).
    pub generation: GenerationConfig,
    /// Stream as server-sent events.
    pub stream: bool,
    /// Return the prompt's and the answer's ids.
    pub return_token_ids: bool,
}

/// Parses and checks a request body (JSON, messages, images, sampling) as [`ParsedRequest`].
pub fn parse_request(body: &[u8], limits: &RequestLimits) -> Result<ParsedRequest, ApiError> {
    let request: ChatRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!("the body is not a valid chat request: {e}")).with_code("invalid_json")
    })?;
    let messages = match &request.messages {
        None => return Err(ApiError::invalid("`messages` is required").with_param("messages")),
        Some(m) if m.is_empty() => return Err(ApiError::invalid("`messages` must not be empty").with_param("messages")),
        Some(m) => m,
    };
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("only n = 1 is supported").with_param("n"));
    }
    let mut conversation = Conversation::new();
    let mut image_bytes = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let (text, images) = parse_content(message.content.as_ref(), &param, limits, &mut image_bytes)?;
        match message.role.as_str() {
            "system" | "developer" => {
                if !images.is_empty() {
                    return Err(ApiError::invalid("a system message cannot hold images").with_param(param));
                }
                if i != 0 {
                    return Err(ApiError::invalid("a system message must come first").with_param(param));
                }
                conversation.system = Some(text);
            }
            "user" => conversation = conversation.user_with_images(text, images),
            "assistant" => {
                if !images.is_empty() {
                    return Err(ApiError::invalid("an assistant message cannot hold images").with_param(param));
                }
                conversation = conversation.assistant(text);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unsupported role `{other}`: expected system, user or assistant"
                ))
                .with_param(format!("{param}.role")))
            }
        }
    }
    if conversation.system.is_none() {
        // `viper chat` without --system: the Viper system prompt.
        conversation.system = Some(VIPER_SYSTEM_PROMPT.to_string());
    }
    if conversation.turns.is_empty() {
        return Err(ApiError::invalid("`messages` holds no user message").with_param("messages"));
    }
    let generation = generation_config(&request, limits)?;
    Ok(ParsedRequest {
        conversation,
        image_bytes,
        generation,
        stream: request.stream,
        return_token_ids: request.return_token_ids,
    })
}

/// A message's text (parts joined by newlines) and decoded images; appends the images' bytes.
fn parse_content(
    content: Option<&Content>,
    param: &str,
    limits: &RequestLimits,
    image_bytes: &mut Vec<Vec<u8>>,
) -> Result<(String, Vec<RgbImage>), ApiError> {
    let parts = match content {
        None => return Ok((String::new(), Vec::new())),
        Some(Content::Text(t)) => return Ok((t.clone(), Vec::new())),
        Some(Content::Parts(parts)) => parts,
    };
    let mut texts = Vec::new();
    let mut images = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let param = format!("{param}.content[{j}]");
        let kind = part.get("type").and_then(|t| t.as_str()).unwrap_or_default();
        match kind {
            "text" => match part.get("text").and_then(|t| t.as_str()) {
                Some(t) => texts.push(t.to_string()),
                None => return Err(ApiError::invalid("a text part needs a string `text`").with_param(param)),
            },
            "image_url" => {
                let url =
                    part.get("image_url").and_then(|u| u.get("url").or(Some(u))).and_then(|u| u.as_str()).ok_or_else(
                        || ApiError::invalid("an image_url part needs `image_url.url`").with_param(param.clone()),
                    )?;
                if image_bytes.len() >= limits.max_images {
                    return Err(ApiError::invalid(format!(
                        "more than {} images in the request: this server takes at most {} per request",
                        limits.max_images, limits.max_images
                    ))
                    .with_param(param)
                    .with_code("too_many_images"));
                }
                let bytes = image_url_bytes(url, limits).map_err(|e| e.with_param(format!("{param}.image_url.url")))?;
                let image = limits.images.decode(&bytes).map_err(|e| image_error(e, &param))?;
                images.push(image);
                image_bytes.push(bytes);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unsupported content part type `{other}`: expected `text` or `image_url`"
                ))
                .with_param(format!("{param}.type"))
                .with_code("unsupported_content_type"))
            }
        }
    }
    Ok((texts.join("\n"), images))
}

/// 413 for an image beyond the byte limit.
fn too_many_bytes(what: String, max: u64) -> ApiError {
    ApiError::invalid(format!("{what}, beyond the limit of {max} bytes"))
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        .with_code("image_too_large")
}

/// The body of an `http(s)://` image URL, at most the image byte limit of it read (blocking: parsing
/// runs on the blocking pool).
fn fetch_image(url: &str, remote: &RemoteImages, max: u64) -> Result<Vec<u8>, ApiError> {
    use std::io::Read as _;
    let failed = |e: String| {
        ApiError::invalid(format!("fetching the image URL failed: {e}")).with_code("remote_image_fetch_failed")
    };
    let agent = ureq::AgentBuilder::new()
        .timeout(remote.timeout)
        .timeout_connect(remote.timeout)
        .redirects(remote.max_redirects)
        .build();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => failed(format!("the server answered HTTP {code}")),
        ureq::Error::Transport(t) => failed(t.to_string()),
    })?;
    if let Some(len) = response.header("content-length").and_then(|l| l.trim().parse::<u64>().ok()) {
        if len > max {
            return Err(too_many_bytes(format!("the image URL announces {len} bytes"), max));
        }
    }
    let mut bytes = Vec::new();
    response.into_reader().take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| failed(e.to_string()))?;
    if bytes.len() as u64 > max {
        return Err(too_many_bytes("the image URL's body is longer".to_string(), max));
    }
    Ok(bytes)
}

/// The bytes of a base64 `data:` URL, checked against the encoded-size limit before decoding, or of an
/// `http(s)://` URL where [`RequestLimits::remote_images`] allows fetching.
fn image_url_bytes(url: &str, limits: &RequestLimits) -> Result<Vec<u8>, ApiError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return match &limits.remote_images {
            Some(remote) => fetch_image(url, remote, limits.images.max_bytes),
            None => Err(ApiError::invalid(
                "remote image URLs are not fetched by this server (it runs without --allow-remote-images): send \
                 the image as a data:image/...;base64, URL",
            )
            .with_code("remote_image_refused")),
        };
    }
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(ApiError::invalid("an image URL must be a data: URL (data:image/png;base64,...)"));
    };
    let Some((media, data)) = rest.split_once(";base64,") else {
        return Err(ApiError::invalid("an image data: URL must be base64-encoded (data:image/png;base64,...)"));
    };
    if !media.starts_with("image/") {
        return Err(ApiError::invalid(format!("the data: URL holds `{media}`, not an image")));
    }
    let max = limits.images.max_bytes;
    // Four base64 characters hold three bytes: refuse what must decode beyond the limit unread.
    if (data.len() as u64 / 4).saturating_mul(3) > max.saturating_add(3) {
        return Err(too_many_bytes(format!("the image is {} bytes or more encoded", data.len() as u64 / 4 * 3), max));
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.trim_end())
        .map_err(|e| ApiError::invalid(format!("the image's base64 does not decode: {e}")).with_code("invalid_base64"))
}

/// 413 for images beyond the size limits, 400 for the rest.
fn image_error(e: ProcessorError, param: &str) -> ApiError {
    let too_large = matches!(
        e,
        ProcessorError::TooManyBytes { .. }
            | ProcessorError::DimensionTooLarge { .. }
            | ProcessorError::TooManyPixels { .. }
    );
    let error = ApiError::invalid(format!("image: {e}")).with_param(param);
    if too_large {
        error.with_status(StatusCode::PAYLOAD_TOO_LARGE).with_code("image_too_large")
    } else {
        error.with_code("invalid_image")
    }
}

/// The request's sampling and stop settings, checked as [`SamplingConfig::validate`] checks them.
fn generation_config(r: &ChatRequest, limits: &RequestLimits) -> Result<GenerationConfig, ApiError> {
    let max_new_tokens = r.max_completion_tokens.or(r.max_tokens).unwrap_or(limits.default_max_tokens);
    if max_new_tokens == 0 || max_new_tokens > limits.max_tokens_limit {
        return Err(ApiError::invalid(format!(
            "max_tokens must be in 1..={}, got {max_new_tokens}",
            limits.max_tokens_limit
        ))
        .with_param("max_tokens"));
    }
    let temperature = r.temperature.unwrap_or(0.0);
    if temperature < 0.0 {
        return Err(
            ApiError::invalid(format!("temperature must not be negative, got {temperature}")).with_param("temperature")
        );
    }
    let sampling = SamplingConfig {
        temperature,
        top_k: r.top_k.unwrap_or(0),
        top_p: r.top_p.unwrap_or(1.0),
        min_p: r.min_p.unwrap_or(0.0),
        repetition_penalty: r.repetition_penalty.unwrap_or(1.0),
        seed: r.seed.unwrap_or_else(random_seed),
    };
    sampling.validate().map_err(|m| {
        let param = m.split_whitespace().next().unwrap_or_default().to_string();
        ApiError::invalid(m).with_param(param)
    })?;
    let stop_strings = match &r.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop_strings.len() > 16 || stop_strings.iter().any(String::is_empty) {
        return Err(ApiError::invalid("`stop` takes at most 16 non-empty strings").with_param("stop"));
    }
    // The engine samples every sequence on the host after each batched step (`decode_block` is unused).
    Ok(GenerationConfig {
        max_new_tokens,
        sampling,
        stop_strings,
        ignore_eos: r.ignore_eos,
        ..GenerationConfig::default()
    })
}

/// A seed for requests that give none (sampling without a seed is not meant to repeat).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// `usage` of a response.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Positions of the prompt (each image counted as its feature rows).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

/// Per-request figures (the `viper_stats` extension of a response).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestStats {
    /// Positions of the prompt.
    pub prompt_positions: usize,
    /// Positions this request ran through the model (the rest came from the state cache).
    pub prefill_positions: usize,
    /// Positions taken from the state cache.
    pub cached_positions: usize,
    /// Whether the state cache held this prompt's prefix.
    pub cache_hit: bool,
    /// Prefill chunks run.
    pub prefill_chunks: usize,
    /// Waiting for a slot, ms.
    pub queue_ms: f64,
    /// Template, tokenizer and the vision side, ms.
    pub prepare_ms: f64,
    /// From admission to the first token, ms.
    pub ttft_ms: f64,
    /// Whole request in the engine, ms.
    pub total_ms: f64,
    /// The largest decode batch this sequence was stepped in.
    pub max_batch: usize,
    /// Tokens the other sequences decoded while this one was prefilling (a long prefill does not
    /// stall the decode batch: one chunk, then one decode step, per tick).
    pub decoded_during_prefill: usize,
    /// The prompt's ids (with `return_token_ids`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prompt_ids: Option<Vec<i64>>,
    /// The generated ids (with `return_token_ids`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub completion_ids: Option<Vec<u32>>,
}

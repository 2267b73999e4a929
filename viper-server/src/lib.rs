//! An OpenAI-compatible HTTP server for Viper models (`viper serve`).
//!
//! - [`api`]: the request and response JSON of `POST /v1/chat/completions` (messages with text and
//!   `image_url` parts as `data:` URLs), their checks, and OpenAI-style errors ([`ApiError`]).
//! - [`engine`]: the model lives on one dedicated thread that owns the [`Viper`](viper_model::Viper)
//!   and runs the scheduler: each tick admits waiting requests up to `max_batch`, runs at most one
//!   prefill chunk, then one decode step for every decoding sequence as one batch.
//! - [`state_cache`]: model caches kept after a prompt prefix (the one ending with the last image),
//!   keyed by its exact ids and the images' bytes, LRU-bounded in bytes.
//! - [`http`]: the axum router (`/v1/chat/completions`, `/v1/models`, `/health`, `/metrics`) and
//!   [`serve`], which runs it until Ctrl-C or SIGTERM.
//!
//! ```no_run
//! # fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use viper_model::{Viper, ViperLoadOptions};
//! use viper_server::{Engine, EngineConfig, HttpOptions};
//!
//! let engine = Engine::spawn(
//!     || Viper::<burn::backend::NdArray>::load("path/to/checkpoint", ViperLoadOptions::default(), &Default::default()),
//!     EngineConfig::default(),
//! )?;
//! let options = HttpOptions { model_name: "viper".into(), ..HttpOptions::default() };
//! viper_server::serve(engine, options, "127.0.0.1:8080".parse()?, |addr| log::info!("listening on {addr}"))?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod state_cache;

pub use api::ApiError;
pub use engine::{Engine, EngineConfig};
pub use http::{router, serve, HttpOptions};
pub use metrics::Metrics;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The model did not load on the engine thread.
    #[error("loading the model: {0}")]
    Load(String),
    /// Binding, serving or the runtime failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A setting is out of range.
    #[error("invalid server setting: {0}")]
    Config(String),
}

//! Viper's language models and their loading from HuggingFace checkpoint directories.

pub mod config;
pub mod error;
pub mod falcon_mamba;
pub mod lm;

pub use config::FalconMambaConfig;
pub use error::{ModelError, Result};
pub use falcon_mamba::{FalconMambaCache, FalconMambaForCausalLM};
pub use lm::{LanguageModel, Logits};

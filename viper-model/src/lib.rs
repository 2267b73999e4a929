//! Viper vision-language models on Burn: load a published checkpoint directory as it is and chat
//! about images, on any backend (`ViperModel<NdArray>`, `ViperModel<Wgpu>`, `ViperModel<Cuda>`).

pub mod config;
pub mod error;
pub mod falcon_mamba;
pub mod generate;
/// The config size limits ([`viper_ssm::limits`]), under their former path.
pub use viper_ssm::limits;
pub mod lm;
pub mod pipeline;
pub mod sampling;
pub mod stats;
pub mod viper;

pub use config::{FalconMambaConfig, LanguageConfig, LlavaConfig, ViperConfig};
pub use error::{ModelError, Result};
pub use falcon_mamba::{FalconMambaCache, FalconMambaForCausalLM};
pub use generate::{generate, FinishReason, Generation, GenerationConfig, DECODE_BLOCK};
pub use lm::{LanguageModel, Logits};
pub use pipeline::{ChatSession, PreparedPrompt, Viper};
pub use sampling::{Sampler, SamplingConfig};
pub use stats::{GenerationStats, LoadStats};
// What an app needs besides the backend type, so that `viper-model` is its one viper dependency.
pub use viper::{ImageEncoding, Language, ViperCache, ViperLoadOptions, ViperModel, VisionSide};
pub use viper_checkpoint::LoadProgress;
pub use viper_processor::{ImageLoader, RgbImage};
pub use viper_ssm::SsmBackend;

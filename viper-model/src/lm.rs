//! The language-model contract generation uses; it lives next to the models, in `viper-ssm`
//! ([`viper_ssm::lm`]), and is re-exported here.

pub use viper_ssm::lm::{LanguageModel, Logits};

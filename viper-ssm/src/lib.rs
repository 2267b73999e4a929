//! The Mamba mixer of Viper's language models, in its FalconMamba and Jamba variants; the FalconMamba
//! causal LM built on it ([`FalconMambaForCausalLM`], docs/spec.md §6); and the floor both language models
//! stand on ([`lm`]): the [`LanguageModel`] contract with its [`Logits`] selection, the loader of the
//! embedding matrix, final norm and `lm_head`, and [`linear`], the one entry point of every product.
//!
//! A [`MambaMixer`] runs over a whole sequence ([`MambaMixer::forward`]) or one token at a time
//! ([`MambaMixer::step`]), carrying a [`MambaState`] (conv window + SSM state) between calls. The
//! sequence ops go through the [`SsmBackend`] extension trait: its default bodies are the tensor-op
//! [`reference`](mod@reference), which runs on every Burn backend.
//!
//! Module order, each using only modules before it: `config`; `ops` (the op structs) → `reference`
//! (their tensor-op semantics); `kernels`, `cublas` (CubeCL only) → `backend` → `norm` → `mixer`.

pub mod backend;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cublas;
pub mod error;
pub mod falcon_mamba;
#[cfg(feature = "cube")]
pub mod kernels;
pub mod limits;
pub mod lm;
pub mod mixer;
pub mod norm;
mod ops;
pub mod reference;

pub use backend::{
    attention, linear, AttentionInput, ConvInput, RmsNormInput, ScanInput, ScanOutput, SsmBackend, StepInput,
};
pub use config::{AutoSize, ConfigError, MambaConfig, MambaVariant};
pub use error::LmError;
pub use falcon_mamba::{
    FalconMambaBlock, FalconMambaCache, FalconMambaConfig, FalconMambaForCausalLM, FalconMambaModel,
};
pub use lm::{lm_logits, LanguageModel, LmLayout, LmParts, LmShape, Logits};
pub use mixer::{DtBcNorms, MambaMixer, MambaState};
pub use norm::{rms, RmsNorm};

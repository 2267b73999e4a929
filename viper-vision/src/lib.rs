//! Viper's image path after preprocessing: the CLIP vision tower, the multimodal projector and the
//! `spatial_unpad` merge (docs/spec.md §4), on any Burn backend.
//!
//! ```text
//! pixel_values (1 + tiles, 3, S, S)
//!   → ClipVisionTower::forward   selected hidden state, CLS dropped   (1 + tiles, P, D_v)
//!   → MmProjector::forward       mlp2x_gelu / linear / identity       (1 + tiles, P, H)
//!   → spatial_unpad_merge        base crop, unpadded grid + newlines   (P + H'·(W'+1), H)
//! ```
//!
//! The merge lays the features out by the image's `viper_processor::AnyResGeometry`, which the
//! processor computed with the pixels (grid, features per tile side, unpad region): data flows
//! processor → vision, and nothing here recomputes it.
//!
//! Modules are built straight from [`viper_checkpoint::Weights`] views, with field names that mirror
//! the checkpoint keys. The tower sits under `vision_model.` in a CLIP checkpoint and under
//! `{backbone|model}.vision_tower.vision_tower.vision_model.` in a Viper one ([`vision_model_prefix`]
//! finds it); the projector and `image_newline` sit at the language model's root.
//!
//! ```no_run
//! # use burn::backend::NdArray;
//! # fn f() -> viper_vision::Result<()> {
//! use viper_checkpoint::Checkpoint;
//! use viper_vision::{ClipVisionConfig, ClipVisionTower, FeatureSelect, MmProjector, SelectFeature};
//!
//! let dir = std::path::Path::new("path/to/viper");
//! let ckpt = Checkpoint::open(dir)?;
//! let w = ckpt.weights(Default::default());
//! let device = Default::default();
//! let config = ClipVisionConfig::from_file(dir.join("vision_tower/config.json"))?;
//! let select = FeatureSelect { layer: -2, feature: SelectFeature::Patch };
//! let tower = ClipVisionTower::<NdArray>::load(&config, select, &w.at(&viper_vision::vision_model_prefix(&ckpt)?), &device)?;
//! let projector = MmProjector::<NdArray>::load("mlp2x_gelu", 1024, 4096, &w.pp("backbone"), &device)?;
//! # Ok(()) }
//! ```
//!
//! Module order, each using only modules before it: `hub` (preset names) → `error` → `config` →
//! `clip`; `projector` and `merge` use `error` only.

pub mod clip;
pub mod config;
pub mod error;
mod hub;
pub mod merge;
pub mod projector;

pub use clip::{
    vision_model_prefix, ClipAttention, ClipEncoder, ClipEncoderLayer, ClipMlp, ClipVisionEmbeddings, ClipVisionTower,
};
pub use config::{
    Activation, ClipVisionConfig, FeatureSelect, SelectFeature, CLIP_MAX_SIZES, CLIP_VIT_LARGE_PATCH14_336,
};
pub use error::{Result, VisionError};
pub use merge::spatial_unpad_merge;
pub use projector::{MmProjector, ProjectorType};

//! Hub ids of the CLIP vision towers this crate has presets for. Below both `config` (which builds the
//! presets) and `error` (whose message lists them), so that neither imports the other.

/// Hub id of the tower of both Viper models.
pub const CLIP_VIT_LARGE_PATCH14_336: &str = "openai/clip-vit-large-patch14-336";
/// Names [`ClipVisionConfig::from_name`](crate::ClipVisionConfig::from_name) knows.
pub(crate) const KNOWN_MODELS: &[&str] = &[CLIP_VIT_LARGE_PATCH14_336];

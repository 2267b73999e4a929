//! Language-model configs, deserialised straight from a checkpoint's `config.json`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use viper_processor::AnyResConfig;
pub use viper_ssm::FalconMambaConfig;

use crate::error::{ModelError, Result};

/// Reads and parses a JSON config file into `T`, with the file name in every error. The file must be
/// a regular file of at most [`viper_io::MAX_CONFIG_BYTES`].
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = viper_io::read_capped_to_string(path, viper_io::MAX_CONFIG_BYTES)?;
    serde_json::from_str(&text).map_err(|e| ModelError::ConfigParse { path: path.to_path_buf(), reason: e.to_string() })
}

fn default_select_layer() -> i64 {
    -2
}
fn default_patch() -> String {
    "patch".into()
}
fn default_projector() -> String {
    "linear".into()
}

/// The LLaVA/Viper keys of a Viper `config.json` (docs/spec.md §1.1); the base LM keys sit beside them.
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaConfig {
    /// `llava_falcon_mamba` or `llava_jamba` (plain `falcon_mamba` / `jamba` load as text-only models).
    pub model_type: String,
    /// CLIP tower: a hub id (`openai/clip-vit-large-patch14-336`) or a folder relative to the checkpoint.
    #[serde(default)]
    pub mm_vision_tower: Option<String>,
    /// CLIP width (checked against the tower).
    #[serde(default)]
    pub mm_hidden_size: Option<usize>,
    /// `linear`, `mlp{N}x_gelu` or `identity`.
    #[serde(default = "default_projector")]
    pub mm_projector_type: String,
    /// Index into CLIP's hidden states.
    #[serde(default = "default_select_layer")]
    pub mm_vision_select_layer: i64,
    /// `patch` (drop CLS) or `cls_patch`.
    #[serde(default = "default_patch")]
    pub mm_vision_select_feature: String,
    /// `flat`, `spatial`, `spatial_unpad`.
    #[serde(default)]
    pub mm_patch_merge_type: Option<String>,
    /// The preprocessing keys `image_aspect_ratio`, `image_grid_pinpoints` and
    /// `vision_preprocessor_config`, resolved with the tower by [`AnyResConfig::resolve`].
    #[serde(flatten)]
    pub anyres: AnyResConfig,
    /// Hard truncation of the spliced embedding sequence.
    #[serde(default)]
    pub tokenizer_model_max_length: Option<usize>,
    /// Vision weights come from the checkpoint when true, from the CLIP tower otherwise (docs/spec.md §9.4).
    #[serde(default)]
    pub unfreeze_mm_vision_tower: bool,
    /// Upstream adds `<im_patch>` to the tokenizer when true or absent (docs/spec.md §9.5).
    #[serde(default)]
    pub mm_use_im_patch_token: Option<bool>,
    /// `<im_start>`/`<im_end>` around images (not used by Viper).
    #[serde(default)]
    pub mm_use_im_start_end: bool,
    /// Inline CLIP vision config.
    #[serde(default)]
    pub vision_config: Option<serde_json::Value>,
}

/// The language model family named by `model_type`.
#[derive(Debug, Clone)]
pub enum LanguageConfig {
    /// FalconMamba (Viper-Mamba-7B).
    FalconMamba(FalconMambaConfig),
    /// Jamba (Viper-Jamba-52B).
    Jamba(viper_moe::JambaConfig),
}

/// A Viper `config.json`: the LLaVA keys plus the base LM's config.
#[derive(Debug, Clone)]
pub struct ViperConfig {
    /// The LLaVA keys.
    pub llava: LlavaConfig,
    /// The language model's config.
    pub language: LanguageConfig,
}

impl ViperConfig {
    /// Reads and validates a Viper (or plain FalconMamba / Jamba) `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json: serde_json::Value = read_json(path)?;
        Self::from_json(json).map_err(|e| match e {
            ModelError::ConfigParse { reason, .. } => ModelError::ConfigParse { path: path.to_path_buf(), reason },
            other => other,
        })
    }

    /// Builds the config from parsed JSON, its sizes checked against
    /// [`CONFIG_LIMITS`](viper_ssm::limits::CONFIG_LIMITS) first.
    pub fn from_json(json: serde_json::Value) -> Result<Self> {
        let parse =
            |e: serde_json::Error| ModelError::ConfigParse { path: "config.json".into(), reason: e.to_string() };
        viper_ssm::limits::check_config_limits(&json)?;
        let llava: LlavaConfig = serde_json::from_value(json.clone()).map_err(parse)?;
        let language = match llava.model_type.as_str() {
            "llava_falcon_mamba" | "falcon_mamba" => {
                let c: FalconMambaConfig = serde_json::from_value(json).map_err(parse)?;
                c.validate()?;
                LanguageConfig::FalconMamba(c)
            }
            "llava_jamba" | "jamba" => {
                let c: viper_moe::JambaConfig = serde_json::from_value(json).map_err(parse)?;
                c.validate().map_err(ModelError::Config)?;
                LanguageConfig::Jamba(c)
            }
            other => {
                return Err(ModelError::Config(format!(
                    "unknown model_type `{other}` (expected llava_falcon_mamba, llava_jamba, falcon_mamba or jamba)"
                )))
            }
        };
        Ok(Self { llava, language })
    }

    /// The language model's hidden size.
    pub fn hidden_size(&self) -> usize {
        match &self.language {
            LanguageConfig::FalconMamba(c) => c.hidden_size,
            LanguageConfig::Jamba(c) => c.hidden_size,
        }
    }

    /// Whether the config describes a multimodal (LLaVA) model rather than a bare LM.
    pub fn is_multimodal(&self) -> bool {
        self.llava.model_type.starts_with("llava_")
    }
}

//! CLIP vision hyper-parameters (transformers' `CLIPVisionConfig`, docs/spec.md §1.5) and the Viper keys that
//! pick the feature layer (`mm_vision_select_layer`, `mm_vision_select_feature`).

use std::path::Path;
use std::str::FromStr;

use burn::prelude::*;
use burn::tensor::activation::{gelu, sigmoid};
use serde::Deserialize;

use crate::error::{Result, VisionError};
pub use crate::hub::CLIP_VIT_LARGE_PATCH14_336;
/// Upper limits of the sizes [`ClipVisionConfig::validate`] checks, in its order: `hidden_size`,
/// `intermediate_size`, `num_hidden_layers`, `num_attention_heads`, `num_channels`, `image_size`,
/// `patch_size` (published towers: 1024, 4096, 24, 16, 3, 336, 14).
pub const CLIP_MAX_SIZES: [usize; 7] = [65_536, 1 << 20, 1024, 4096, 16, 4096, 4096];

/// transformers' `CLIPVisionConfig`: the keys inference needs, others ignored.
///
/// Keys absent from the JSON take transformers' defaults ([`Default`], ViT-B/32 at 224 px), as
/// `CLIPConfig.save_pretrained` writes only the non-default keys of its `vision_config`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width D of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP (`fc1` output).
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads; `hidden_size / num_attention_heads` is the head dim.
    pub num_attention_heads: usize,
    /// Input channels (3 for RGB).
    pub num_channels: usize,
    /// Side S of the square input (the anyres tile size).
    pub image_size: usize,
    /// Side of a patch; `image_size / patch_size` patches per side.
    pub patch_size: usize,
    /// MLP activation: `quick_gelu` or `gelu` (see [`Activation`]).
    pub hidden_act: String,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// `openai/clip-vit-large-patch14-336`: 24 layers of width 1024, 16 heads, 336 px in 14 px patches.
    pub fn clip_vit_large_patch14_336() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 336,
            patch_size: 14,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }

    /// The preset for a hub id (Viper's `mm_vision_tower`); only [`CLIP_VIT_LARGE_PATCH14_336`] is known.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            CLIP_VIT_LARGE_PATCH14_336 => Ok(Self::clip_vit_large_patch14_336()),
            _ => Err(VisionError::UnknownModel(name.to_string())),
        }
    }

    /// Parses and validates a config: a CLIP vision config itself, or any object carrying one under
    /// `vision_config` (a `CLIPConfig`, or a Viper `config.json` with its convenience copy).
    pub fn from_value(value: &serde_json::Value) -> Result<Self> {
        Self::parse(value, "JSON")
    }

    /// [`from_value`](Self::from_value) on the contents of a JSON file (`vision_tower/config.json`, …).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = viper_io::read_capped_to_string(path, viper_io::MAX_CONFIG_BYTES).map_err(|e| match e {
            viper_io::FileError::Io { path, source } => VisionError::Io { path, source },
            other => VisionError::File(other),
        })?;
        let value = serde_json::from_str(&text)
            .map_err(|e| VisionError::ConfigParse { origin: origin.clone(), reason: e.to_string() })?;
        Self::parse(&value, &origin)
    }

    fn parse(value: &serde_json::Value, origin: &str) -> Result<Self> {
        let value = value.get("vision_config").unwrap_or(value);
        // A config of something else (a Viper config without `vision_config`) would otherwise parse
        // into nonsense through the defaults.
        match value.get("model_type").and_then(|t| t.as_str()) {
            None | Some("clip_vision_model") => {}
            Some(other) => {
                return Err(VisionError::InvalidConfig {
                    field: "model_type",
                    reason: format!("is `{other}`, expected `clip_vision_model` (or a `vision_config` object)"),
                })
            }
        }
        let config = Self::deserialize(value)
            .map_err(|e| VisionError::ConfigParse { origin: origin.to_string(), reason: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects configs that describe no working tower: zero sizes or sizes beyond [`CLIP_MAX_SIZES`], a
    /// width not divisible by the heads, an image not divisible into patches, a non-positive eps, an
    /// unsupported activation.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_channels", self.num_channels),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
        ];
        if let Some((field, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(VisionError::InvalidConfig { field, reason: "must be positive, got 0".into() });
        }
        if let Some((field, value, limit)) =
            sizes.iter().zip(CLIP_MAX_SIZES).map(|(&(f, v), max)| (f, v, max)).find(|&(_, v, max)| v > max)
        {
            return Err(VisionError::InvalidConfig {
                field,
                reason: format!("{value} is beyond the limit of {limit}"),
            });
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(VisionError::InvalidConfig {
                field: "hidden_size",
                reason: format!(
                    "{} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            });
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(VisionError::InvalidConfig {
                field: "image_size",
                reason: format!("{} is not divisible by patch_size {}", self.image_size, self.patch_size),
            });
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(VisionError::InvalidConfig {
                field: "layer_norm_eps",
                reason: format!("must be positive, got {}", self.layer_norm_eps),
            });
        }
        self.activation()?;
        Ok(())
    }

    /// The MLP activation named by `hidden_act`.
    pub fn activation(&self) -> Result<Activation> {
        self.hidden_act.parse()
    }

    /// Per-head width `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Patches along one side, `image_size / patch_size` (24 for CLIP-L/336).
    pub fn num_patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patch tokens per image (576 for CLIP-L/336); positions are one more (CLS).
    pub fn num_patches(&self) -> usize {
        self.num_patches_per_side().pow(2)
    }
}

/// The encoder MLP's activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `quick_gelu`: `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// `gelu`: exact `x * Φ(x)` with erf.
    Gelu,
}

impl FromStr for Activation {
    type Err = VisionError;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            _ => Err(VisionError::InvalidConfig {
                field: "hidden_act",
                reason: format!("`{name}` is not supported (expected `quick_gelu` or `gelu`)"),
            }),
        }
    }
}

impl Activation {
    /// Applies the activation element-wise.
    pub fn forward<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::QuickGelu => x.clone() * sigmoid(x * 1.702),
            Self::Gelu => gelu(x),
        }
    }
}

/// Which tokens of the selected hidden state are returned (`mm_vision_select_feature`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectFeature {
    /// `patch`: drop the CLS token (Viper's setting).
    Patch,
    /// `cls_patch`: keep every token, CLS first.
    ClsPatch,
}

impl FromStr for SelectFeature {
    type Err = VisionError;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "patch" => Ok(Self::Patch),
            "cls_patch" => Ok(Self::ClsPatch),
            _ => Err(VisionError::InvalidConfig {
                field: "mm_vision_select_feature",
                reason: format!("`{name}` is not supported (expected `patch` or `cls_patch`)"),
            }),
        }
    }
}

/// Which hidden state the tower returns, and which of its tokens (upstream `CLIPVisionTower.feature_select`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSelect {
    /// `mm_vision_select_layer`: index into `hidden_states` (`[0]` = `pre_layrnorm` output, `[i]` =
    /// output of encoder layer i), negative from the end as in Python (`-2` = second-to-last layer).
    pub layer: i64,
    /// `mm_vision_select_feature`.
    pub feature: SelectFeature,
}

impl FeatureSelect {
    /// The non-negative `hidden_states` index for a tower of `num_layers` layers, which is also the
    /// number of encoder layers that must run.
    pub fn hidden_state_index(&self, num_layers: usize) -> Result<usize> {
        let count = num_layers as i64 + 1;
        let index = if self.layer < 0 { count + self.layer } else { self.layer };
        if (0..count).contains(&index) {
            Ok(index as usize)
        } else {
            Err(VisionError::InvalidConfig {
                field: "mm_vision_select_layer",
                reason: format!(
                    "{} is out of range for {num_layers} layers (valid: -{count}..={num_layers})",
                    self.layer
                ),
            })
        }
    }
}

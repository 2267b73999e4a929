//! The CLIP vision transformer up to the selected hidden state (docs/spec.md §4.1; transformers'
//! `modeling_clip.py` `CLIPVisionTransformer`, upstream Viper `clip_encoder.py` `CLIPVisionTower`).
//!
//! Field names mirror the checkpoint keys under `vision_model.`: `embeddings.{class_embedding,
//! patch_embedding, position_embedding}`, `pre_layrnorm` (HF's spelling), `encoder.layers.{j}.{layer_norm1,
//! self_attn.{q,k,v,out}_proj, layer_norm2, mlp.{fc1,fc2}}`.
//!
//! Shapes: n images, S image side, p patch side, s = S/p patches per side, P = s² patch tokens,
//! T = P + 1 positions (CLS first), D width, h heads of width d = D/h.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::FloatDType;
use viper_checkpoint::{Checkpoint, CheckpointError, Weights};
use viper_ssm::{attention, linear, AttentionInput, SsmBackend};

use crate::config::{Activation, ClipVisionConfig, FeatureSelect, SelectFeature};
use crate::error::{Result, VisionError};

/// Key, relative to `vision_model.`, used to locate the tower in a checkpoint.
const ANCHOR: &str = "embeddings.patch_embedding.weight";

/// The prefix of the tower's `vision_model.` level in `ckpt`: `vision_model.` in a CLIP checkpoint,
/// `backbone.vision_tower.vision_tower.vision_model.` / `model.vision_tower.vision_tower.vision_model.`
/// in a Viper one. Pass it to [`Weights::at`] before [`ClipVisionTower::load`].
pub fn vision_model_prefix(ckpt: &Checkpoint) -> Result<String> {
    ckpt.prefix_of(ANCHOR).ok_or_else(|| {
        VisionError::Checkpoint(CheckpointError::MissingTensor {
            key: format!("vision_model.{ANCHOR}"),
            hint: format!(" (no single key ends with `{ANCHOR}`: no CLIP vision tower, or more than one)"),
        })
    })
}

/// Reads a PyTorch `nn.LayerNorm` (`weight`, `bias` of shape `[d]`).
fn layer_norm<B: Backend>(w: &Weights, d: usize, eps: f64, device: &B::Device) -> Result<LayerNorm<B>> {
    let mut norm = LayerNormConfig::new(d).with_epsilon(eps).init(device);
    norm.gamma = Param::from_tensor(w.tensor("weight", [d], device)?);
    norm.beta = Some(Param::from_tensor(w.tensor("bias", [d], device)?));
    Ok(norm)
}

/// `embeddings.*`: patch conv (no bias), CLS token, learned positions.
#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings<B: Backend> {
    /// `class_embedding`, `[D]`.
    pub class_embedding: Param<Tensor<B, 1>>,
    /// `patch_embedding.weight`, `[D, C, p, p]`, stride p, no bias.
    pub patch_embedding: Conv2d<B>,
    /// `position_embedding.weight`, `[T, D]` (row 0 = CLS).
    pub position_embedding: Embedding<B>,
}

impl<B: Backend> ClipVisionEmbeddings<B> {
    fn load(c: &ClipVisionConfig, w: &Weights, device: &B::Device) -> Result<Self> {
        let (d, p) = (c.hidden_size, c.patch_size);
        let weight = w.pp("patch_embedding").tensor("weight", [d, c.num_channels, p, p], device)?;
        let positions = w.pp("position_embedding").tensor("weight", [c.num_patches() + 1, d], device)?;
        Ok(Self {
            class_embedding: Param::from_tensor(w.tensor("class_embedding", [d], device)?),
            patch_embedding: Conv2d {
                weight: Param::from_tensor(weight),
                bias: None,
                stride: [p, p],
                kernel_size: [p, p],
                dilation: [1, 1],
                groups: 1,
                padding: PaddingConfig2d::Valid,
            },
            position_embedding: Embedding { weight: Param::from_tensor(positions) },
        })
    }

    /// `(n, C, S, S)` → `(n, T, D)`.
    fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let patches = self.patch_embedding.forward(pixels); // (n, D, s, s)
        let [n, d, s, _] = patches.dims();
        let patches = patches.reshape([n, d, s * s]).swap_dims(1, 2); // (n, P, D), patch r*s+c
        let cls = self.class_embedding.val().reshape([1, 1, d]).expand([n, 1, d]);
        Tensor::cat(vec![cls, patches], 1) + self.position_embedding.weight.val().unsqueeze::<3>()
    }
}

/// `self_attn.*`: multi-head self-attention, all projections with bias, no mask.
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    /// `q_proj`, D → D.
    pub q_proj: Linear<B>,
    /// `k_proj`, D → D.
    pub k_proj: Linear<B>,
    /// `v_proj`, D → D.
    pub v_proj: Linear<B>,
    /// `out_proj`, D → D.
    pub out_proj: Linear<B>,
    /// h.
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: SsmBackend> ClipAttention<B> {
    fn load(c: &ClipVisionConfig, w: &Weights, device: &B::Device) -> Result<Self> {
        let d = c.hidden_size;
        let proj = |name| w.linear(name, d, d, true, device);
        Ok(Self {
            q_proj: proj("q_proj")?,
            k_proj: proj("k_proj")?,
            v_proj: proj("v_proj")?,
            out_proj: proj("out_proj")?,
            num_heads: c.num_attention_heads,
        })
    }

    /// `out_proj(softmax(q kᵀ · d^-½) v)` per head, through [`viper_ssm::attention`]: cuBLAS batched
    /// products around an f32 softmax on CUDA, Burn's `attention` elsewhere.
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, t, width] = x.dims();
        let (h, d) = (self.num_heads, width / self.num_heads);
        // (n·h, T, d): one copy of each projection into heads.
        let heads =
            |proj: &Linear<B>| linear(proj, x.clone()).reshape([n, t, h, d]).swap_dims(1, 2).reshape([n * h, t, d]);
        let input =
            AttentionInput { q: heads(&self.q_proj), k: heads(&self.k_proj), v: heads(&self.v_proj), causal: false };
        let o = attention(input).reshape([n, h, t, d]);
        linear(&self.out_proj, o.swap_dims(1, 2).reshape([n, t, width]))
    }
}

/// `mlp.*`: `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct ClipMlp<B: Backend> {
    /// `fc1`, D → intermediate.
    pub fc1: Linear<B>,
    /// `fc2`, intermediate → D.
    pub fc2: Linear<B>,
    /// `hidden_act`.
    #[module(skip)]
    pub activation: Activation,
}

/// `encoder.layers.{j}`: pre-norm attention and MLP blocks.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    /// `layer_norm1`, before attention.
    pub layer_norm1: LayerNorm<B>,
    /// `self_attn`.
    pub self_attn: ClipAttention<B>,
    /// `layer_norm2`, before the MLP.
    pub layer_norm2: LayerNorm<B>,
    /// `mlp`.
    pub mlp: ClipMlp<B>,
}

impl<B: SsmBackend> ClipEncoderLayer<B> {
    fn load(c: &ClipVisionConfig, w: &Weights, device: &B::Device) -> Result<Self> {
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        let mlp = w.pp("mlp");
        Ok(Self {
            layer_norm1: layer_norm(&w.pp("layer_norm1"), d, eps, device)?,
            self_attn: ClipAttention::load(c, &w.pp("self_attn"), device)?,
            layer_norm2: layer_norm(&w.pp("layer_norm2"), d, eps, device)?,
            mlp: ClipMlp {
                fc1: mlp.linear("fc1", d, c.intermediate_size, true, device)?,
                fc2: mlp.linear("fc2", c.intermediate_size, d, true, device)?,
                activation: c.activation()?,
            },
        })
    }

    /// `h = x + attn(ln1(x)); h + mlp(ln2(h))`.
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        let mlp = &self.mlp;
        h.clone() + linear(&mlp.fc2, mlp.activation.forward(linear(&mlp.fc1, self.layer_norm2.forward(h))))
    }
}

/// `encoder.*`.
#[derive(Module, Debug)]
pub struct ClipEncoder<B: Backend> {
    /// `layers.{j}` for the layers up to the selected hidden state only.
    pub layers: Vec<ClipEncoderLayer<B>>,
}

/// The CLIP vision tower as Viper uses it: embeddings, `pre_layrnorm`, the encoder layers up to the
/// selected hidden state, and the feature selection (upstream `CLIPVisionTower`).
///
/// Only the tensors the selected output depends on are loaded. Keys of the `vision_model.` level that
/// are stored but expected to stay unused ([`is_unused_key`](Self::is_unused_key)): the layers after
/// the selected one, `post_layernorm.*` (Viper never applies it) and the legacy
/// `embeddings.position_ids` buffer.
#[derive(Module, Debug)]
pub struct ClipVisionTower<B: Backend> {
    /// `embeddings`.
    pub embeddings: ClipVisionEmbeddings<B>,
    /// `pre_layrnorm`; its output is `hidden_states[0]`.
    pub pre_layrnorm: LayerNorm<B>,
    /// `encoder`.
    pub encoder: ClipEncoder<B>,
    /// The hyper-parameters it was loaded with.
    #[module(skip)]
    pub config: ClipVisionConfig,
    /// The hidden state and tokens [`forward`](Self::forward) returns.
    #[module(skip)]
    pub select: FeatureSelect,
}

impl<B: SsmBackend> ClipVisionTower<B> {
    /// Loads the tower from a view positioned at the `vision_model.` level (see [`vision_model_prefix`]).
    pub fn load(config: &ClipVisionConfig, select: FeatureSelect, w: &Weights, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let used = select.hidden_state_index(config.num_hidden_layers)?;
        log::debug!(
            "loading CLIP tower at `{}`: {used} of {} layers, {:?} features",
            w.prefix(),
            config.num_hidden_layers,
            select.feature
        );
        let layers = (0..used)
            .map(|j| ClipEncoderLayer::load(config, &w.pp(format_args!("encoder.layers.{j}")), device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: ClipVisionEmbeddings::load(config, &w.pp("embeddings"), device)?,
            pre_layrnorm: layer_norm(&w.pp("pre_layrnorm"), config.hidden_size, config.layer_norm_eps, device)?,
            encoder: ClipEncoder { layers },
            config: config.clone(),
            select,
        })
    }

    /// `pixel_values` `(n, C, S, S)` → the selected hidden state, `(n, P, D)` for `patch` or
    /// `(n, 1 + P, D)` for `cls_patch`.
    ///
    /// Runs in the weights' float type and returns the pixels' one, as upstream casts the features to
    /// `images.dtype`.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        let c = &self.config;
        let dims = pixel_values.dims();
        if dims[0] == 0 || dims[1..] != [c.num_channels, c.image_size, c.image_size] {
            return Err(VisionError::PixelShape { found: dims.to_vec(), channels: c.num_channels, size: c.image_size });
        }
        let out_dtype = FloatDType::from(pixel_values.dtype());
        let dtype = FloatDType::from(self.embeddings.class_embedding.val().dtype());
        let x = self.embeddings.forward(pixel_values.cast(dtype));
        let mut h = self.pre_layrnorm.forward(x);
        for layer in &self.encoder.layers {
            h = layer.forward(h);
        }
        let h = match self.select.feature {
            SelectFeature::Patch => h.narrow(1, 1, c.num_patches()),
            SelectFeature::ClsPatch => h,
        };
        Ok(h.cast(out_dtype))
    }

    /// Whether `key` (relative to the `vision_model.` prefix) is a tensor this tower deliberately does
    /// not read; use it to filter [`Checkpoint::unused_keys`].
    pub fn is_unused_key(&self, key: &str) -> bool {
        let layer = key.strip_prefix("encoder.layers.").and_then(|r| r.split('.').next()?.parse::<usize>().ok());
        key.starts_with("post_layernorm.")
            || key == "embeddings.position_ids"
            || layer.is_some_and(|j| j >= self.encoder.layers.len())
    }
}

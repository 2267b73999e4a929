//! The multimodal projector from CLIP width to the language model's width (docs/spec.md §4.2; upstream
//! `multimodal_projector/builder.py`).

use std::fmt;
use std::str::FromStr;

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::gelu;
use viper_checkpoint::Weights;
use viper_ssm::{linear, SsmBackend};

use crate::error::{Result, VisionError};

/// The projector architecture, as named by `mm_projector_type` or laid out in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectorType {
    /// `linear`: one `nn.Linear` with bias, keys `mm_projector.{weight,bias}`.
    Linear,
    /// `mlp{N}x_gelu`: N linears with bias at `nn.Sequential` indices 0, 2, …, 2(N−1), exact (erf)
    /// GELU between them, keys `mm_projector.{0,2,…}.{weight,bias}`.
    MlpGelu(usize),
    /// `identity`: features pass through unchanged; no tensors.
    Identity,
}

impl FromStr for ProjectorType {
    type Err = VisionError;

    fn from_str(name: &str) -> Result<Self> {
        // Upstream matches `^mlp(\d+)x_gelu$`; depth 0 would build one linear there, it is refused here.
        let depth = name
            .strip_prefix("mlp")
            .and_then(|r| r.strip_suffix("x_gelu"))
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<usize>().ok());
        match (name, depth) {
            ("linear", _) => Ok(Self::Linear),
            ("identity", _) => Ok(Self::Identity),
            (_, Some(n)) if n > 0 => Ok(Self::MlpGelu(n)),
            _ => Err(VisionError::InvalidConfig {
                field: "mm_projector_type",
                reason: format!(
                    "`{name}` is not supported (expected `linear`, `mlp{{N}}x_gelu` with N >= 1, or `identity`)"
                ),
            }),
        }
    }
}

impl fmt::Display for ProjectorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Linear => f.write_str("linear"),
            Self::MlpGelu(n) => write!(f, "mlp{n}x_gelu"),
            Self::Identity => f.write_str("identity"),
        }
    }
}

impl ProjectorType {
    /// The layout stored under `w` (a view at `…mm_projector.`): `weight` → `linear`, `0.weight`,
    /// `2.weight`, … → `mlp{N}x_gelu`, nothing → `identity`.
    pub fn detect(w: &Weights) -> Self {
        if w.contains("weight") {
            return Self::Linear;
        }
        match (0..).take_while(|i| w.contains(&format!("{}.weight", 2 * i))).count() {
            0 => Self::Identity,
            n => Self::MlpGelu(n),
        }
    }
}

/// `mm_projector`: maps each feature token from `mm_hidden_size` to `hidden_size`.
#[derive(Module, Debug)]
pub struct MmProjector<B: Backend> {
    /// The linears in order (`mm_projector.{weight,bias}` for `linear`, `mm_projector.{2i}.*` for
    /// `mlp{N}x_gelu`, none for `identity`).
    pub linears: Vec<Linear<B>>,
    /// The architecture.
    #[module(skip)]
    pub kind: ProjectorType,
    /// Input width (`mm_hidden_size`).
    #[module(skip)]
    pub d_in: usize,
}

impl<B: SsmBackend> MmProjector<B> {
    /// Loads the projector `projector_type` (`mm_projector_type`) from `mm_projector.*` under `w` (a view
    /// at the language model's root: `backbone.` / `model.`), after checking that the tensor names
    /// describe the same architecture.
    pub fn load(
        projector_type: &str,
        mm_hidden_size: usize,
        hidden_size: usize,
        w: &Weights,
        device: &B::Device,
    ) -> Result<Self> {
        let kind: ProjectorType = projector_type.parse()?;
        let seq = w.pp("mm_projector");
        let found = ProjectorType::detect(&seq);
        // No tensors at all for a non-identity type is a missing-weights problem: the loads below name
        // the absent key.
        if found != kind && found != ProjectorType::Identity {
            let key = seq.key(if found == ProjectorType::Linear { "weight" } else { "0.weight" });
            return Err(VisionError::ProjectorMismatch {
                config: projector_type.to_string(),
                found: format!("{found} (`{key}`)"),
            });
        }
        if kind == ProjectorType::Identity && mm_hidden_size != hidden_size {
            return Err(VisionError::InvalidConfig {
                field: "mm_projector_type",
                reason: format!("`identity` needs mm_hidden_size ({mm_hidden_size}) = hidden_size ({hidden_size})"),
            });
        }
        let linears = match kind {
            ProjectorType::Linear => {
                vec![w.linear("mm_projector", mm_hidden_size, hidden_size, true, device)?]
            }
            ProjectorType::MlpGelu(n) => (0..n)
                .map(|i| {
                    let d_in = if i == 0 { mm_hidden_size } else { hidden_size };
                    seq.linear(&(2 * i).to_string(), d_in, hidden_size, true, device)
                })
                .collect::<std::result::Result<_, _>>()?,
            ProjectorType::Identity => Vec::new(),
        };
        Ok(Self { linears, kind, d_in: mm_hidden_size })
    }

    /// `(…, mm_hidden_size)` → `(…, hidden_size)`: `linear_{N-1}(gelu(… gelu(linear_0(x))))`.
    pub fn forward<const D: usize>(&self, features: Tensor<B, D>) -> Result<Tensor<B, D>> {
        let width = features.dims()[D - 1];
        if width != self.d_in {
            return Err(VisionError::Input(format!(
                "the projector expects features of width {} (mm_hidden_size), got {width}",
                self.d_in
            )));
        }
        // Rows flattened into `[1, rows, d]` for the projection entry point the language models use.
        let mut dims = features.dims();
        let rows = dims[..D - 1].iter().product();
        let mut x = features.reshape([1, rows, width]);
        for (i, layer) in self.linears.iter().enumerate() {
            x = linear(layer, if i == 0 { x } else { gelu(x) });
        }
        dims[D - 1] = x.dims()[2];
        Ok(x.reshape(dims))
    }
}

//! The projector: type names, layout detection against the tensor names, and the `linear` /
//! `mlp{N}x_gelu` / `identity` forward passes against PyTorch (tests/fixtures/vision/projector from
//! tests/generator/gen_clip.py).

use crate::common::{assert_close, fixture, read, B};
use burn::prelude::*;
use viper_checkpoint::{Checkpoint, CheckpointError, LoadOptions};
use viper_vision::{MmProjector, ProjectorType, VisionError};

#[test]
fn linear_and_deep_mlp_match_pytorch() {
    let ckpt = Checkpoint::open(fixture("projector")).unwrap();
    let expected = Checkpoint::open(fixture("projector/expected.safetensors")).unwrap();
    let w = ckpt.weights(LoadOptions::default());
    let x = read::<3>(&expected, "input");
    for (name, kind, depth) in [("linear", ProjectorType::Linear, 1), ("mlp3x", ProjectorType::MlpGelu(3), 3)] {
        let view = w.pp(name);
        assert_eq!(ProjectorType::detect(&view.pp("mm_projector")), kind);
        let p = MmProjector::<B>::load(&kind.to_string(), 20, 12, &view, &Default::default()).unwrap();
        assert_eq!(p.linears.len(), depth);
        assert_close(p.forward(x.clone()).unwrap(), read::<3>(&expected, &format!("{name}.output")), name);
        let other = if kind == ProjectorType::Linear { "mlp1x_gelu" } else { "linear" };
        let r = MmProjector::<B>::load(other, 20, 12, &view, &Default::default());
        assert!(matches!(r, Err(VisionError::ProjectorMismatch { .. })), "{name} as {other}: {r:?}");
    }
    assert!(ckpt.unused_keys(|_| false).is_empty());
}

fn projector(kind: &str, mm_hidden: usize, hidden: usize) -> Result<MmProjector<B>, VisionError> {
    let ckpt = Checkpoint::open(fixture("reference/mamba-s1")).unwrap();
    let w = ckpt.weights(LoadOptions::default()).at("backbone.");
    MmProjector::load(kind, mm_hidden, hidden, &w, &Default::default())
}

#[test]
fn projector_types() {
    assert_eq!("linear".parse::<ProjectorType>().unwrap(), ProjectorType::Linear);
    assert_eq!("mlp12x_gelu".parse::<ProjectorType>().unwrap(), ProjectorType::MlpGelu(12));
    assert_eq!("identity".parse::<ProjectorType>().unwrap(), ProjectorType::Identity);
    assert_eq!(ProjectorType::MlpGelu(2).to_string(), "mlp2x_gelu");
    for bad in ["mlp0x_gelu", "mlpx_gelu", "mlp+2x_gelu", "mlp2x_relu", "Linear", ""] {
        let r = bad.parse::<ProjectorType>();
        assert!(matches!(r, Err(VisionError::InvalidConfig { field: "mm_projector_type", .. })), "{bad}");
    }

    let p = projector("mlp2x_gelu", 48, 64).unwrap();
    assert_eq!((p.kind, p.linears.len()), (ProjectorType::MlpGelu(2), 2));
    // The checkpoint stores `mm_projector.{0,2}`: every other type disagrees with it.
    for kind in ["linear", "mlp1x_gelu", "mlp3x_gelu", "identity"] {
        let r = projector(kind, 48, 64);
        assert!(
            matches!(&r, Err(VisionError::ProjectorMismatch { found, .. }) if found.contains("mlp2x_gelu")),
            "{kind}: {r:?}"
        );
    }
    let r = projector("mlp2x_gelu", 40, 64);
    assert!(matches!(r, Err(VisionError::Checkpoint(CheckpointError::ShapeMismatch { .. }))), "{r:?}");
    let r = projector("mlp2x_gelu", 48, 64).unwrap().forward(Tensor::<B, 3>::zeros([1, 4, 40], &Default::default()));
    assert!(matches!(r, Err(VisionError::Input(_))));

    // A checkpoint without projector tensors: missing weights, or a valid identity.
    let ckpt = Checkpoint::open(fixture("clip-odd")).unwrap();
    let w = ckpt.weights(LoadOptions::default());
    let r = MmProjector::<B>::load("linear", 40, 64, &w, &Default::default());
    assert!(matches!(r, Err(VisionError::Checkpoint(CheckpointError::MissingTensor { .. }))), "{r:?}");
    let r = MmProjector::<B>::load("identity", 40, 64, &w, &Default::default());
    assert!(matches!(r, Err(VisionError::InvalidConfig { field: "mm_projector_type", .. })), "{r:?}");
    let identity = MmProjector::<B>::load("identity", 40, 40, &w, &Default::default()).unwrap();
    let x = Tensor::<B, 3>::ones([1, 2, 40], &Default::default());
    assert_eq!(identity.forward(x).unwrap().into_data().to_vec::<f32>().unwrap(), vec![1.0; 80]);
}

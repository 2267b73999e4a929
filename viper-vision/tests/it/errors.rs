//! Bad configs, checkpoints and inputs give typed errors, never panics.

use crate::common::{fixture, B};
use burn::prelude::*;
use serde_json::json;
use viper_checkpoint::{Checkpoint, CheckpointError, LoadOptions};
use viper_vision::{vision_model_prefix, ClipVisionConfig, ClipVisionTower, FeatureSelect, SelectFeature, VisionError};

const PATCH: SelectFeature = SelectFeature::Patch;

fn odd_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("clip-odd/config.json")).unwrap()).unwrap()
}

fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
    let mut v = odd_json();
    v[key] = value;
    v
}

fn invalid_field(r: Result<ClipVisionConfig, VisionError>) -> &'static str {
    match r {
        Err(VisionError::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn bad_configs() {
    assert_eq!(invalid_field(ClipVisionConfig::from_value(&with("hidden_size", json!(0)))), "hidden_size");
    assert_eq!(invalid_field(ClipVisionConfig::from_value(&with("patch_size", json!(0)))), "patch_size");
    assert_eq!(invalid_field(ClipVisionConfig::from_value(&with("num_attention_heads", json!(3)))), "hidden_size");
    assert_eq!(invalid_field(ClipVisionConfig::from_value(&with("image_size", json!(43)))), "image_size");
    assert_eq!(invalid_field(ClipVisionConfig::from_value(&with("hidden_act", json!("relu")))), "hidden_act");
    assert_eq!(invalid_field(ClipVisionConfig::from_value(&with("layer_norm_eps", json!(0.0)))), "layer_norm_eps");
    // A Viper config without its `vision_config` copy is not silently read as a CLIP config.
    let viper = json!({"model_type": "llava_falcon_mamba", "hidden_size": 64});
    assert_eq!(invalid_field(ClipVisionConfig::from_value(&viper)), "model_type");
    // Negative sizes and wrong types fail to parse.
    for bad in [with("num_attention_heads", json!(-5)), with("hidden_size", json!("big"))] {
        assert!(matches!(ClipVisionConfig::from_value(&bad), Err(VisionError::ConfigParse { .. })), "{bad}");
    }
    assert!(matches!(
        ClipVisionConfig::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")),
        Err(VisionError::ConfigParse { .. })
    ));
    assert!(matches!(ClipVisionConfig::from_file(fixture("nope.json")), Err(VisionError::Io { .. })));
    assert!(matches!(ClipVisionConfig::from_name("openai/clip-vit-base"), Err(VisionError::UnknownModel(_))));
    assert!(matches!(
        "cls".parse::<SelectFeature>(),
        Err(VisionError::InvalidConfig { field: "mm_vision_select_feature", .. })
    ));
    for layer in [5, -6] {
        let r = FeatureSelect { layer, feature: PATCH }.hidden_state_index(4);
        assert!(matches!(r, Err(VisionError::InvalidConfig { field: "mm_vision_select_layer", .. })), "{layer}");
    }
}

fn load_odd(config: &ClipVisionConfig, layer: i64, prefix: &str) -> Result<ClipVisionTower<B>, VisionError> {
    let ckpt = Checkpoint::open(fixture("clip-odd")).unwrap();
    let w = ckpt.weights(LoadOptions::default()).at(prefix);
    ClipVisionTower::load(config, FeatureSelect { layer, feature: PATCH }, &w, &Default::default())
}

#[test]
fn bad_checkpoints() {
    let config = ClipVisionConfig::from_file(fixture("clip-odd/config.json")).unwrap();
    let missing = |r| matches!(r, Err(VisionError::Checkpoint(CheckpointError::MissingTensor { .. })));
    assert!(missing(load_odd(&config, -2, "backbone.")), "wrong prefix");
    // A config with more layers than stored, selecting the last one.
    let deeper = ClipVisionConfig { num_hidden_layers: 6, ..config.clone() };
    assert!(missing(load_odd(&deeper, -1, "vision_model.")), "missing layer");
    // Selecting an earlier layer of the same config never touches the missing ones.
    assert!(load_odd(&deeper, 2, "vision_model.").is_ok());
    let wider = ClipVisionConfig { intermediate_size: 80, ..config.clone() };
    let r = load_odd(&wider, -2, "vision_model.");
    assert!(matches!(r, Err(VisionError::Checkpoint(CheckpointError::ShapeMismatch { .. }))), "{r:?}");
    let out_of_range = load_odd(&config, 5, "vision_model.");
    assert!(matches!(out_of_range, Err(VisionError::InvalidConfig { field: "mm_vision_select_layer", .. })));
    let unvalidated = ClipVisionConfig { num_attention_heads: 0, ..config };
    assert!(matches!(load_odd(&unvalidated, -2, "vision_model."), Err(VisionError::InvalidConfig { .. })));
    // No CLIP tower at all.
    let expected = Checkpoint::open(fixture("clip-odd/expected.safetensors")).unwrap();
    assert!(matches!(
        vision_model_prefix(&expected),
        Err(VisionError::Checkpoint(CheckpointError::MissingTensor { .. }))
    ));
}

#[test]
fn bad_pixels() {
    let config = ClipVisionConfig::from_file(fixture("clip-odd/config.json")).unwrap();
    let tower = load_odd(&config, -2, "vision_model.").unwrap();
    for shape in [[1, 3, 41, 41], [1, 1, 42, 42], [2, 3, 42, 14], [0, 3, 42, 42]] {
        let r = tower.forward(Tensor::<B, 4>::zeros(shape, &Default::default()));
        assert!(matches!(r, Err(VisionError::PixelShape { .. })), "{shape:?}");
    }
    assert_eq!(tower.forward(Tensor::zeros([2, 3, 42, 42], &Default::default())).unwrap().dims(), [2, 9, 40]);
}

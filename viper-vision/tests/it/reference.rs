//! The whole image path against the upstream Viper reference run (tests/fixtures/vision/reference, extracted
//! from the shared reference dirs by tests/generator/gen_clip.py): CLIP features, projected features
//! and the merged `image_features`, for both model families, read from a Viper checkpoint layout.

use crate::common::{assert_close, fixture, read, rel_err, B};
use serde_json::Value;
use viper_checkpoint::{Checkpoint, LoadOptions};
use viper_processor::Processor;
use viper_vision::{
    spatial_unpad_merge, vision_model_prefix, ClipVisionConfig, ClipVisionTower, FeatureSelect, MmProjector,
};

fn json(path: std::path::PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn pair(v: &Value) -> (usize, usize) {
    (v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize)
}

fn pair_u32(v: &Value) -> (u32, u32) {
    let (a, b) = pair(v);
    (a as u32, b as u32)
}

fn check_family(family: &str, root: &str) {
    let dir = fixture(&format!("reference/{family}"));
    let config = json(dir.join("config.json"));
    let vision = ClipVisionConfig::from_value(&config).unwrap();
    let select = FeatureSelect {
        layer: config["mm_vision_select_layer"].as_i64().unwrap(),
        feature: config["mm_vision_select_feature"].as_str().unwrap().parse().unwrap(),
    };
    let hidden = config["hidden_size"].as_u64().unwrap() as usize;
    let processor = Processor::from_config(&config).unwrap();
    let device = Default::default();

    let ckpt = Checkpoint::open(&dir).unwrap();
    let prefix = vision_model_prefix(&ckpt).unwrap();
    assert_eq!(prefix, format!("{root}vision_tower.vision_tower.vision_model."));
    let w = ckpt.weights(LoadOptions::default());
    let tower = ClipVisionTower::<B>::load(&vision, select, &w.at(&prefix), &device).unwrap();
    let projector = MmProjector::<B>::load(
        config["mm_projector_type"].as_str().unwrap(),
        config["mm_hidden_size"].as_u64().unwrap() as usize,
        hidden,
        &w.at(root),
        &device,
    )
    .unwrap();
    let newline = w.at(root).tensor::<B, 1>("image_newline", [hidden], &device).unwrap();
    let unused = ckpt.unused_keys(|k| k.strip_prefix(&prefix).is_some_and(|k| tower.is_unused_key(k)));
    assert!(unused.is_empty(), "{family}: unused {unused:?}");

    let expected = Checkpoint::open(dir.join("expected.safetensors")).unwrap();
    let cases = json(dir.join("cases.json"));
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 2);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let t = |tensor: &str| format!("{name}.{tensor}");
        // The geometry the merge consumes is the processor's, checked against the reference run's.
        let geometry = processor.geometry(pair_u32(&case["image_size"])).unwrap();
        assert_eq!(geometry.grid, pair_u32(&case["grid_w_h"]), "{name}");
        assert_eq!(geometry.unpad.grid_hw, pair(&case["feature_grid_before_unpad_h_w"]), "{name}");
        assert_eq!((geometry.unpad.height(), geometry.unpad.width()), pair(&case["unpadded_h_w"]), "{name}");

        let features = tower.forward(read::<4>(&expected, &t("pixel_values"))).unwrap();
        assert_close(features.clone(), read::<3>(&expected, &t("clip_features")), &t("clip_features"));
        let projected = projector.forward(features).unwrap();
        let want_projected = read::<3>(&expected, &t("projected_features"));
        assert_close(projected.clone(), want_projected.clone(), &t("projected_features"));
        let merged = spatial_unpad_merge(projected, &geometry, newline.clone()).unwrap();
        let want_merged = read::<2>(&expected, &t("image_features"));
        assert_eq!(merged.dims()[0], case["num_image_tokens"].as_u64().unwrap() as usize, "{name}");
        assert_close(merged, want_merged.clone(), &t("image_features"));

        // The merge alone is a pure rearrangement: exact on the reference's own projected features.
        let merged = spatial_unpad_merge(want_projected, &geometry, newline.clone()).unwrap();
        assert_eq!(rel_err(merged, want_merged), 0.0, "{name}: merge of the reference features");
    }
}

#[test]
fn mamba_s1_image_path() {
    check_family("mamba-s1", "backbone.");
}

#[test]
fn jamba_s1_image_path() {
    check_family("jamba-s1", "model.");
}

//! The CLIP tower against transformers' `CLIPVisionModel` / `CLIPModel` hidden states (fixtures from
//! tests/generator/gen_clip.py): every select layer, both feature selections, f32 and bf16 on disk,
//! a standalone vision checkpoint and a whole CLIP checkpoint.

use crate::common::{assert_close, fixture, read, B};
use viper_checkpoint::{Checkpoint, LoadOptions};
use viper_vision::{vision_model_prefix, ClipVisionConfig, ClipVisionTower, FeatureSelect, SelectFeature};

fn fixture_select(name: &str) -> FeatureSelect {
    let text = std::fs::read_to_string(fixture(name).join("fixture.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    FeatureSelect {
        layer: json["select_layer"].as_i64().unwrap(),
        feature: json["select_feature"].as_str().unwrap().parse().unwrap(),
    }
}

/// Every valid `select_layer` (negative and positive) and both feature selections.
fn check_all_layers(name: &str) {
    let dir = fixture(name);
    let config = ClipVisionConfig::from_file(dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let prefix = vision_model_prefix(&ckpt).unwrap();
    assert_eq!(prefix, "vision_model.");
    let w = ckpt.weights(LoadOptions::default()).at(&prefix);
    let expected = Checkpoint::open(dir.join("expected.safetensors")).unwrap();
    let pixels = read::<4>(&expected, "pixel_values");
    let layers = config.num_hidden_layers as i64;
    for layer in -(layers + 1)..=layers {
        for feature in [SelectFeature::Patch, SelectFeature::ClsPatch] {
            let select = FeatureSelect { layer, feature };
            let tower = ClipVisionTower::<B>::load(&config, select, &w, &Default::default()).unwrap();
            let index = select.hidden_state_index(config.num_hidden_layers).unwrap();
            assert_eq!(tower.encoder.layers.len(), index, "only the layers up to the selected one are built");
            let want = read::<3>(&expected, &format!("hidden_states.{index}"));
            let [n, t, d] = want.dims();
            let want = if feature == SelectFeature::Patch { want.narrow(1, 1, t - 1) } else { want };
            let got = tower.forward(pixels.clone()).unwrap();
            assert_eq!(got.dims()[0], n);
            assert_eq!(got.dims()[2], d);
            assert_close(got, want, &format!("{name} layer {layer} {feature:?}"));
        }
    }
}

#[test]
fn odd_widths_quick_gelu_f32() {
    check_all_layers("clip-odd");
}

#[test]
fn whole_clip_checkpoint_gelu_bf16() {
    check_all_layers("clip-gelu-bf16");
}

/// The fixture's own selection reads exactly the tensors it needs: what is left is either outside the
/// tower (`text_model.*`, projections) or declared expected-unused.
#[test]
fn loads_only_what_the_selection_needs() {
    for name in ["clip-odd", "clip-gelu-bf16"] {
        let dir = fixture(name);
        let config = ClipVisionConfig::from_file(dir.join("config.json")).unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let prefix = vision_model_prefix(&ckpt).unwrap();
        let select = fixture_select(name);
        let w = ckpt.weights(LoadOptions::default()).at(&prefix);
        let tower = ClipVisionTower::<B>::load(&config, select, &w, &Default::default()).unwrap();
        let unused = ckpt.unused_keys(|k| !k.starts_with(&prefix));
        assert!(!unused.is_empty(), "{name}: the layers after the selected one must stay unread");
        for key in &unused {
            assert!(tower.is_unused_key(&key[prefix.len()..]), "{name}: {key} unexpectedly unused");
        }
        let last = format!("{prefix}encoder.layers.{}.mlp.fc2.weight", config.num_hidden_layers - 1);
        assert!(unused.contains(&last), "{name}: {last} was read");
        assert!(!ckpt.unused_keys(|_| false).iter().any(|k| k.contains("pre_layrnorm")), "{name}");
    }
    // The standalone fixture carries the legacy `position_ids` buffer, which is never read.
    let ckpt = Checkpoint::open(fixture("clip-odd")).unwrap();
    assert!(ckpt.contains("vision_model.embeddings.position_ids"));
}

#[test]
fn configs_parse_from_every_layout() {
    // A standalone `CLIPVisionModel` config.
    let odd = ClipVisionConfig::from_file(fixture("clip-odd/config.json")).unwrap();
    assert_eq!((odd.hidden_size, odd.num_attention_heads, odd.head_dim()), (40, 5, 8));
    assert_eq!((odd.num_patches_per_side(), odd.num_patches()), (3, 9));
    assert_eq!(odd.activation().unwrap(), viper_vision::Activation::QuickGelu);
    // A `CLIPConfig`: `vision_config` holds only non-default keys (`num_channels` is absent).
    let gelu = ClipVisionConfig::from_file(fixture("clip-gelu-bf16/config.json")).unwrap();
    assert_eq!((gelu.hidden_size, gelu.num_channels, gelu.layer_norm_eps), (36, 3, 1e-6));
    assert_eq!(gelu.activation().unwrap(), viper_vision::Activation::Gelu);
    // A Viper config with its `vision_config` copy.
    let viper = ClipVisionConfig::from_file(fixture("reference/mamba-s1/config.json")).unwrap();
    assert_eq!((viper.hidden_size, viper.image_size, viper.num_hidden_layers), (48, 56, 3));
}

#[test]
fn clip_large_preset() {
    let c = ClipVisionConfig::from_name(viper_vision::CLIP_VIT_LARGE_PATCH14_336).unwrap();
    assert_eq!(c, ClipVisionConfig::clip_vit_large_patch14_336());
    c.validate().unwrap();
    assert_eq!((c.hidden_size, c.intermediate_size, c.num_hidden_layers), (1024, 4096, 24));
    assert_eq!((c.head_dim(), c.num_patches_per_side(), c.num_patches()), (64, 24, 576));
    let layer = FeatureSelect { layer: -2, feature: SelectFeature::Patch }.hidden_state_index(c.num_hidden_layers);
    assert_eq!(layer.unwrap(), 23);
}

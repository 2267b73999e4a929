//! Bad configs and bad checkpoints give errors that say what and where, never panics.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use viper_checkpoint::{Checkpoint, CheckpointError, LoadOptions};
use viper_model::{FalconMambaConfig, FalconMambaForCausalLM, ModelError};

type B = NdArray;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/falcon_mamba/fm-odd")
}

fn config_with(
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<FalconMambaConfig, ModelError> {
    let text = std::fs::read_to_string(fixture().join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(json.as_object_mut().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, json.to_string()).unwrap();
    Ok(FalconMambaConfig::from_file(&path)?)
}

#[test]
fn config_errors() {
    let missing = config_with(|c| {
        c.remove("hidden_size");
    });
    assert!(
        matches!(&missing, Err(ModelError::ConfigParse { reason, .. }) if reason.contains("hidden_size")),
        "{missing:?}"
    );
    let zero = config_with(|c| {
        c.insert("num_hidden_layers".into(), 0.into());
    });
    assert!(matches!(&zero, Err(ModelError::Config(m)) if m.contains("num_hidden_layers")), "{zero:?}");
    let negative = config_with(|c| {
        c.insert("state_size".into(), (-4).into());
    });
    assert!(matches!(&negative, Err(ModelError::ConfigParse { reason, .. }) if reason.contains("-4")), "{negative:?}");
    let eps = config_with(|c| {
        c.insert("layer_norm_epsilon".into(), (-1.0).into());
    });
    assert!(matches!(eps, Err(ModelError::Config(_))));
    let conv = config_with(|c| {
        c.insert("conv_kernel".into(), 1.into());
    });
    assert!(matches!(conv, Err(ModelError::Config(_))));
    let auto = config_with(|c| {
        c.insert("time_step_rank".into(), "auto".into());
    })
    .unwrap();
    assert_eq!(auto.mamba().dt_rank, 3); // ceil(48 / 16)
    let missing_file = FalconMambaConfig::from_file(Path::new("/nonexistent/config.json")).map_err(ModelError::from);
    assert!(matches!(missing_file, Err(ModelError::Io { .. })));
}

fn load(config: &FalconMambaConfig, dir: &Path) -> Result<FalconMambaForCausalLM<B>, ModelError> {
    let ckpt = Checkpoint::open(dir)?;
    Ok(FalconMambaForCausalLM::load(config, &ckpt, LoadOptions::default(), &Default::default())?)
}

#[test]
fn checkpoint_that_does_not_fit_the_config() {
    let config = FalconMambaConfig::from_file(&fixture().join("config.json")).unwrap();
    // Wrong width: the first tensor read reports the key and both shapes.
    let mut wide = config.clone();
    wide.hidden_size = 50;
    match load(&wide, &fixture()) {
        Err(ModelError::Checkpoint(CheckpointError::ShapeMismatch { key, expected, found })) => {
            assert!(key.starts_with("backbone."), "{key}");
            assert_ne!(expected, found);
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
    // More layers than stored: the missing key is named.
    let mut deep = config.clone();
    deep.num_hidden_layers = 3;
    let err = load(&deep, &fixture()).unwrap_err().to_string();
    assert!(err.contains("backbone.layers.2."), "{err}");
}

#[test]
fn truncated_checkpoint() {
    let config = FalconMambaConfig::from_file(&fixture().join("config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&config, dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::Checkpoint(CheckpointError::InvalidFile { .. })), "{err}");
}

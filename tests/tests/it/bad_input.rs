//! Bad input through the public API: typed errors that name the cause, never panics.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use viper_chat_template::Conversation;
use viper_model::{ModelError, Viper, ViperConfig, ViperLoadOptions};
use viper_processor::ImageLoader;

type B = NdArray;

fn reference_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference").join(name)
}

/// A copy of a reference checkpoint with `config.json` edited.
fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = reference_dir(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

fn load(dir: &Path, options: ViperLoadOptions) -> Result<Viper<B>, ModelError> {
    Viper::<B>::load(dir, options, &Default::default())
}

#[test]
fn missing_directory_and_files() {
    assert!(matches!(load(Path::new("/nonexistent/viper"), Default::default()), Err(ModelError::Io { .. })));
    let empty = tempfile::tempdir().unwrap();
    let err = load(empty.path(), Default::default()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn unknown_model_type() {
    let err = ViperConfig::from_json(serde_json::json!({"model_type": "llava_llama", "hidden_size": 8})).unwrap_err();
    assert!(err.to_string().contains("unknown model_type `llava_llama`"), "{err}");
}

#[test]
fn frozen_tower_without_weights() {
    // A frozen tower loads from `mm_vision_tower`; here it names a folder that does not exist.
    let dir = edited("mamba-s1", |c| {
        c["unfreeze_mm_vision_tower"] = false.into();
        c["mm_vision_tower"] = "no-such-tower".into();
    });
    let err = load(dir.path(), Default::default()).unwrap_err();
    assert!(err.to_string().contains("frozen") && err.to_string().contains("no-such-tower"), "{err}");

    // Pointing at a CLIP checkpoint explicitly fixes it (the reference tower folder is one).
    let options =
        ViperLoadOptions { vision_tower: Some(reference_dir("mamba-s1").join("vision_tower")), ..Default::default() };
    load(dir.path(), options).unwrap();
}

#[test]
fn projector_that_does_not_match_its_weights() {
    let dir = edited("jamba-s1", |c| c["mm_projector_type"] = "linear".into());
    let err = load(dir.path(), Default::default()).unwrap_err();
    assert!(matches!(err, ModelError::Vision(_)) && err.to_string().contains("linear"), "{err}");
}

#[test]
fn image_count_and_context_limits() {
    let dir = reference_dir("mamba-s1");
    let viper = load(&dir, Default::default()).unwrap();
    let image = ImageLoader::default().open(dir.join("images/image_84x84.png")).unwrap();

    let two_markers = Conversation::new().user_inline_images("<image><image> what?", [image.clone()]);
    assert!(matches!(viper.prepare(&two_markers), Err(ModelError::Prompt(_))));
    let unmarked = Conversation::new().user_inline_images("what?", [image]);
    assert!(viper.prepare(&unmarked).is_err());

    let strict = load(&dir, ViperLoadOptions { strict_context: true, ..Default::default() }).unwrap();
    let long = Viper::<B>::conversation(&"colour ".repeat(3000), vec![]);
    let err = strict.prepare(&long).unwrap_err();
    assert!(err.to_string().contains("tokenizer_model_max_length 2048"), "{err}");
    // Upstream's behaviour by default: cut to the limit.
    assert_eq!(viper.prepare(&long).unwrap().inputs_embeds.dims()[1], 2048);
}

#[test]
fn broken_images() {
    let loader = ImageLoader::default();
    assert!(loader.decode(b"").is_err());
    assert!(loader.decode(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").is_err());
    let dir = tempfile::tempdir().unwrap();
    let err = loader.open(dir.path().join("missing.png")).unwrap_err();
    assert!(err.to_string().contains("missing.png"), "{err}");
}

//! The byte counter `viper` draws its loading bar from: its total is what the checkpoint stores, and it
//! ends at the bytes of the tensors the model reads (all but the CLIP layers after the selected one and
//! `post_layernorm`, which Viper never runs).

use std::path::PathBuf;

use burn::backend::NdArray;
use viper_checkpoint::Checkpoint;
use viper_model::{LoadProgress, Viper, ViperLoadOptions};

#[test]
fn progress_counts_the_bytes_read() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference/mamba-s1");
    let progress = LoadProgress::default();
    let options = ViperLoadOptions { progress: Some(progress.clone()), ..Default::default() };
    let viper = Viper::<NdArray>::load(&dir, options, &Default::default()).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert_eq!(progress.total(), ckpt.stored_bytes());
    let layers = viper.model.vision.as_ref().unwrap().vision_tower.encoder.layers.len();
    let skipped: u64 = ckpt
        .keys()
        .into_iter()
        .filter(|k| k.contains("post_layernorm") || k.contains(&format!("encoder.layers.{layers}.")))
        .map(|k| {
            let m = ckpt.meta(k).unwrap();
            (m.shape.iter().product::<usize>() * m.dtype.bitsize() / 8) as u64
        })
        .sum();
    assert!(skipped > 0, "the tiny tower has a layer after the selected one");
    assert_eq!(progress.loaded(), progress.total() - skipped);
}

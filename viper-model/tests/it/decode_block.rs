//! Greedy decoding with the device picking its own next ids (`decode_block` > 1) gives the ids, text,
//! finish reason and final cache of the host loop that reads every token back (`decode_block` = 1), on
//! both reference checkpoints: through a whole run, a run that stops inside a block (eos, stop string),
//! a length that is not a multiple of the block, and a length of zero.

use std::path::PathBuf;

use burn::backend::NdArray;
use viper_checkpoint::max_errors;
use viper_model::{
    generate, FinishReason, Generation, GenerationConfig, ImageLoader, LanguageModel, Logits, Viper, ViperCache,
    ViperLoadOptions,
};

type B = NdArray;

fn reference_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference").join(name)
}

/// Generates with `config` at `block`, returning the generation and the cache it leaves.
fn run(viper: &Viper<B>, config: &GenerationConfig, block: usize) -> (Generation, ViperCache<B>) {
    let image = ImageLoader::default().open(reference_dir("mamba-s1").join("images/image_97x61.png")).unwrap();
    let prepared = viper.prepare(&Viper::<B>::conversation("What colors are in this picture?", vec![image])).unwrap();
    let mut cache = viper.model.new_cache(1);
    let config = GenerationConfig { decode_block: block, ..config.clone() };
    let mut streamed = String::new();
    let generation =
        generate(&viper.model, &mut cache, prepared.inputs_embeds, &config, &viper.tokenizer, |t| streamed.push_str(t))
            .unwrap();
    if generation.finish != FinishReason::StopString {
        assert_eq!(streamed, generation.text, "streamed text = the answer (block {block})");
    }
    (generation, cache)
}

/// Logits of one more step from `cache` (feeding `id`), to compare two caches.
fn next_logits(viper: &Viper<B>, cache: &mut ViperCache<B>, id: u32) -> Vec<f32> {
    let x = burn::tensor::Tensor::<B, 2, burn::tensor::Int>::from_data([[i64::from(id)]], &Default::default());
    viper.model.forward(viper.model.embed(x), cache, Logits::Last).into_data().convert::<f32>().into_vec().unwrap()
}

fn same(viper: &Viper<B>, config: &GenerationConfig, what: &str) -> Generation {
    let (host, host_cache) = run(viper, config, 1);
    for block in [2, 8] {
        let (device, mut device_cache) = run(viper, config, block);
        assert_eq!(device.ids, host.ids, "{what}, block {block}: ids");
        assert_eq!(device.text, host.text, "{what}, block {block}: text");
        assert_eq!(device.finish, host.finish, "{what}, block {block}: finish");
        if let Some(&last) = host.ids.last() {
            // The cache holds every id but the last one in both: the next step agrees.
            let a = next_logits(viper, &mut host_cache.clone(), last);
            let b = next_logits(viper, &mut device_cache, last);
            let (abs, _) = max_errors(&a, &b).unwrap();
            assert!(abs < 1e-5, "{what}, block {block}: the caches differ by {abs}");
        }
    }
    host
}

fn check(name: &str) {
    let viper = Viper::<B>::load(reference_dir(name), ViperLoadOptions::default(), &Default::default()).unwrap();
    let free = GenerationConfig { max_new_tokens: 16, ignore_eos: true, ..viper.default_generation() };
    let all = same(&viper, &free, &format!("{name}: 16 tokens"));
    assert_eq!(all.ids.len(), 16);
    assert!(all.ids.iter().collect::<std::collections::HashSet<_>>().len() > 2, "{name}: a degenerate answer");

    let odd = GenerationConfig { max_new_tokens: 11, ..free.clone() };
    assert_eq!(same(&viper, &odd, &format!("{name}: 11 tokens")).ids, all.ids[..11]);

    // An eos inside the second block of 8: the run ends there, and the cache is the one before it.
    let stop_at = all.ids.iter().position(|&id| id == all.ids[10]).unwrap();
    let eos = GenerationConfig { eos_token_ids: vec![all.ids[10]], ignore_eos: false, ..free.clone() };
    let g = same(&viper, &eos, &format!("{name}: eos"));
    assert_eq!((g.ids.len(), g.finish), (stop_at + 1, FinishReason::Eos));

    let needle = viper.tokenizer.decode(&all.ids[5..7], true).unwrap();
    if !needle.trim().is_empty() {
        let stop = GenerationConfig { stop_strings: vec![needle.clone()], ignore_eos: false, ..free.clone() };
        let g = same(&viper, &stop, &format!("{name}: stop string"));
        assert_eq!(g.finish, FinishReason::StopString, "{name}: {needle:?}");
    }

    let none = GenerationConfig { max_new_tokens: 0, ..free };
    let g = same(&viper, &none, &format!("{name}: 0 tokens"));
    assert!(g.ids.is_empty());
}

#[test]
fn mamba_s1_device_greedy_equals_host_greedy() {
    check("mamba-s1");
}

#[test]
fn jamba_s1_device_greedy_equals_host_greedy() {
    check("jamba-s1");
}

//! Every case of every checkpoint in tests/fixtures/reference (upstream Viper outputs, see its
//! UPSTREAM_README.md): prompt ids, each intermediate tensor, last-position logits and 16 greedy
//! tokens, through the public pipeline on the NdArray backend.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::prelude::*;
use viper_checkpoint::{max_errors, Checkpoint};
use viper_model::{GenerationConfig, LanguageModel, Viper, ViperLoadOptions};
use viper_processor::ImageLoader;

type B = NdArray;

fn reference_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference").join(name)
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn check_close(what: &str, ours: Vec<f32>, reference: &Checkpoint, key: &str, tol: f32) {
    let (want, _) = reference.read_f32(key).unwrap();
    let (abs, rel) = max_errors(&ours, &want).expect("comparable, non-degenerate tensors");
    assert!(rel < tol, "{key} ({what}): max abs {abs:e}, rel {rel:e} ≥ {tol:e}");
}

fn run(name: &str) {
    let dir = reference_dir(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let reference = Checkpoint::open(dir.join("reference.safetensors")).unwrap();
    let viper = Viper::<B>::load(&dir, ViperLoadOptions::default(), &Default::default()).unwrap();
    let config = GenerationConfig { max_new_tokens: 16, ignore_eos: true, ..viper.default_generation() };
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let case_name = case["name"].as_str().unwrap();
        let images: Vec<_> = case["image"]
            .as_str()
            .map(|p| ImageLoader::default().open(Path::new(&dir).join(p)).unwrap())
            .into_iter()
            .collect();
        let question = case["question"].as_str().unwrap();
        let conversation = Viper::<B>::conversation(question, images);
        let (prepared, generation) = viper.generate(&conversation, &config, |_| {}).unwrap();

        assert_eq!(prepared.prompt, case["prompt"].as_str().unwrap(), "{name}/{case_name}: prompt");
        let want_ids: Vec<i64> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(prepared.tokens.ids, want_ids, "{name}/{case_name}: input_ids");
        let len = prepared.inputs_embeds.dims()[1];
        assert_eq!(len as u64, case["inputs_embeds_len"].as_u64().unwrap(), "{name}/{case_name}: inputs_embeds_len");

        let key = |t: &str| format!("{case_name}.{t}");
        if let (Some(enc), Some(image)) = (&prepared.encoding, prepared.images.first()) {
            let g = &image.geometry;
            assert_eq!(
                [g.grid.0, g.grid.1],
                [case["grid_w_h"][0].as_u64().unwrap() as u32, case["grid_w_h"][1].as_u64().unwrap() as u32]
            );
            check_close("pixels", image.pixel_values.clone(), &reference, &key("pixel_values"), 1e-6);
            check_close("tower", host(enc.clip_features.clone()), &reference, &key("clip_features"), 1e-4);
            check_close(
                "projector",
                host(enc.projected_features.clone()),
                &reference,
                &key("projected_features"),
                1e-4,
            );
            check_close("merge", host(enc.image_features[0].clone()), &reference, &key("image_features"), 1e-4);
        }
        check_close("splice", host(prepared.inputs_embeds.clone()), &reference, &key("inputs_embeds"), 1e-4);
        check_close("logits", generation.prompt_logits.clone(), &reference, &key("last_logits"), 1e-3);
        let want_gen: Vec<u32> =
            case["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(generation.ids, want_gen, "{name}/{case_name}: generated_ids");
    }
}

#[test]
fn mamba_s1_matches_upstream() {
    run("mamba-s1");
}

#[test]
fn jamba_s1_matches_upstream() {
    run("jamba-s1");
}

#[test]
fn follow_up_reuses_the_cache() {
    let dir = reference_dir("mamba-s1");
    let viper = Viper::<B>::load(&dir, ViperLoadOptions::default(), &Default::default()).unwrap();
    let image = ImageLoader::default().open(dir.join("images/image_84x84.png")).unwrap();
    // The answer is kept as its ids, so the follow-up extends the cache whether or not its decoded text
    // re-tokenizes to the same ids (one-token answers do, longer random-weight answers do not).
    for answer_len in [1, 6] {
        let config = GenerationConfig { max_new_tokens: answer_len, ..viper.default_generation() };
        let mut session = viper.chat(None);
        session.ask("What colors are in this picture?", vec![image.clone()], &config, |_| {}).unwrap();
        let first_prefill = session.last_prefill;
        let second = session.ask("And the shapes?", vec![], &config, |_| {}).unwrap();
        assert!(
            session.last_prefill < first_prefill / 4,
            "follow-up prefilled {} of {first_prefill}",
            session.last_prefill
        );
        assert_eq!(second.stats.images, 0);

        // The answer is the one a fresh run over the same ids gives.
        let ids = session.ids();
        let prompt = &ids[..ids.len() + 1 - second.ids.len()];
        let prepared = viper.embed_ids(prompt, &[&image]).unwrap();
        let mut cache = viper.model.new_cache(1);
        let fresh =
            viper_model::generate(&viper.model, &mut cache, prepared.inputs_embeds, &config, &viper.tokenizer, |_| {})
                .unwrap();
        assert_eq!(second.ids, fresh.ids);
    }
}

#[test]
fn stops_on_eos_and_stop_strings() {
    let dir = reference_dir("mamba-s1");
    let viper = Viper::<B>::load(&dir, ViperLoadOptions::default(), &Default::default()).unwrap();
    let conversation = Viper::<B>::conversation("What colors are in this picture?", vec![]);
    let free = GenerationConfig { max_new_tokens: 16, ignore_eos: true, ..viper.default_generation() };
    let (_, all) = viper.generate(&conversation, &free, |_| {}).unwrap();
    assert_eq!(all.finish, viper_model::FinishReason::Length);
    assert_eq!(all.ids.len(), 16);

    // Treat the 6th generated id as end of sequence: generation stops right after it (kept, as transformers does).
    let eos = GenerationConfig { max_new_tokens: 16, eos_token_ids: vec![all.ids[5]], ..Default::default() };
    let (_, stopped) = viper.generate(&conversation, &eos, |_| {}).unwrap();
    let first = all.ids.iter().position(|&id| id == all.ids[5]).unwrap();
    assert_eq!(stopped.ids, all.ids[..=first]);
    assert_eq!(stopped.finish, viper_model::FinishReason::Eos);

    // A stop string taken from the unconstrained answer cuts the text before it.
    let text = viper.tokenizer.decode(&all.ids, true).unwrap();
    let needle: String = text.chars().skip(text.chars().count() / 2).take(2).collect();
    let stop = GenerationConfig { max_new_tokens: 16, stop_strings: vec![needle.clone()], ..Default::default() };
    let mut streamed = String::new();
    let (_, cut) = viper.generate(&conversation, &stop, |piece| streamed.push_str(piece)).unwrap();
    assert_eq!(cut.finish, viper_model::FinishReason::StopString);
    assert!(!cut.text.contains(&needle) && text.starts_with(&cut.text), "{:?} vs {:?}", cut.text, text);
    assert!(streamed.contains(&needle));
}

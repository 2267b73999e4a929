//! `ChatSession` follow-ups cost only their new ids and images: a 3-turn chat with an image per turn
//! on the reference checkpoints runs the vision tower once per image, prefills exactly each turn's
//! new positions, and leaves the cache equal to a fresh prefill over the same ids.

use std::path::PathBuf;

use burn::backend::NdArray;
use viper_chat_template::IMAGE_TOKEN_INDEX;
use viper_checkpoint::max_errors;
use viper_model::{generate, GenerationConfig, ImageLoader, LanguageModel, Logits, RgbImage, Viper, ViperLoadOptions};

type B = NdArray;

fn reference_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference").join(name)
}

fn three_turns(name: &str) {
    let dir = reference_dir(name);
    let viper = Viper::<B>::load(&dir, ViperLoadOptions::default(), &Default::default()).unwrap();
    // Answers of several tokens, whatever they re-tokenize to.
    let config = GenerationConfig { max_new_tokens: 4, ignore_eos: true, ..viper.default_generation() };
    let turns = [
        ("What colors are in this picture?", "images/image_84x84.png"),
        ("And in this one?", "images/image_97x61.png"),
        ("Which of them is the tallest?", "images/image_40x120.png"),
    ];
    let images: Vec<RgbImage> = turns.iter().map(|(_, p)| ImageLoader::default().open(dir.join(p)).unwrap()).collect();
    let processor = viper.model.processor.as_ref().unwrap();

    let mut session = viper.chat(None);
    let (mut fed, mut before) = (0, Vec::<i64>::new());
    let mut last = None;
    for (turn, ((question, _), image)) in turns.iter().zip(&images).enumerate() {
        let generation = session.ask(question, vec![image.clone()], &config, |_| {}).unwrap();
        let stats = &generation.stats;
        assert_eq!(generation.ids.len(), 4);
        // The vision tower ran on this turn's image only.
        assert_eq!(stats.images, 1, "{name} turn {turn}");
        assert_eq!(stats.crops, processor.process(image).unwrap().shape[0], "{name} turn {turn}");

        let ids = session.ids();
        // Earlier ids stay as they were; the answer is kept as its ids (the final one still pending).
        assert_eq!(ids[..before.len()], before[..], "{name} turn {turn}: earlier ids changed");
        let prompt_end = ids.len() - (generation.ids.len() - 1);
        let answer: Vec<i64> = generation.ids.iter().map(|&id| i64::from(id)).collect();
        assert_eq!(ids[prompt_end..], answer[..answer.len() - 1]);
        assert_eq!(session.pending(), generation.ids.last().copied());
        let new = &ids[before.len()..prompt_end];
        assert_eq!(new.iter().filter(|&&id| id == IMAGE_TOKEN_INDEX).count(), 1, "{name} turn {turn}: {new:?}");
        if let Some(pending) = last {
            assert_eq!(new[0], i64::from(pending), "{name} turn {turn}: the last answer's final id comes first");
        }
        // Exactly the new positions were prefilled: the new ids with this image's features.
        let alone = viper.embed_ids(new, &[image]).unwrap().inputs_embeds.dims()[1];
        assert_eq!(stats.prefill_positions, alone, "{name} turn {turn}");
        assert_eq!(session.last_prefill, alone);
        fed += stats.prefill_positions + stats.decode_tokens;
        before = ids.to_vec();
        last = generation.ids.last().copied();

        if turn == turns.len() - 1 {
            // A fresh run over the same ids (and images) sees what the chat's cache saw.
            let all: Vec<&RgbImage> = images.iter().collect();
            let full = viper.embed_ids(ids, &all).unwrap().inputs_embeds;
            assert_eq!(full.dims()[1], fed, "{name}: positions fed in total");
            let prompt = viper.embed_ids(&ids[..prompt_end], &all).unwrap().inputs_embeds;
            let mut cache = viper.model.new_cache(1);
            let fresh = generate(&viper.model, &mut cache, prompt.clone(), &config, &viper.tokenizer, |_| {}).unwrap();
            let (abs, rel) = max_errors(&fresh.prompt_logits, &generation.prompt_logits).unwrap();
            assert!(rel <= 1e-4, "{name}: last logits differ, max abs {abs:e}, rel {rel:e}");
            assert_eq!(fresh.ids, generation.ids, "{name}: greedy answers");
            // The same through the model's forward directly.
            let mut cache = viper.model.new_cache(1);
            let logits: Vec<f32> =
                viper.model.forward(prompt, &mut cache, Logits::Last).into_data().convert::<f32>().to_vec().unwrap();
            let (abs, rel) = max_errors(&logits, &generation.prompt_logits).unwrap();
            assert!(rel <= 1e-4, "{name}: forward logits differ, max abs {abs:e}, rel {rel:e}");
        }
    }
    assert_eq!(session.conversation().turns.len(), 6);
    assert_eq!(session.conversation().images().count(), 3);
}

#[test]
fn mamba_s1_follow_ups_feed_only_new_positions() {
    three_turns("mamba-s1");
}

#[test]
fn jamba_s1_follow_ups_feed_only_new_positions() {
    three_turns("jamba-s1");
}

/// A follow-up without images and a one-token answer: the separator alone, the pending id first.
#[test]
fn text_follow_up_after_a_one_token_answer() {
    let dir = reference_dir("mamba-s1");
    let viper = Viper::<B>::load(&dir, ViperLoadOptions::default(), &Default::default()).unwrap();
    let config = GenerationConfig { max_new_tokens: 1, ignore_eos: true, ..viper.default_generation() };
    let image = ImageLoader::default().open(dir.join("images/image_84x84.png")).unwrap();
    let mut session = viper.chat(None);
    let first = session.ask("What is this?", vec![image.clone()], &config, |_| {}).unwrap();
    let cached = session.ids().len();
    let second = session.ask("Sure?", vec![], &config, |_| {}).unwrap();
    assert_eq!((second.stats.images, second.stats.crops), (0, 0));
    let new = &session.ids()[cached..];
    assert_eq!(new[0], i64::from(first.ids[0]));
    assert_eq!(second.stats.prefill_positions, new.len());
    let text = viper.tokenizer.decode(&new[1..].iter().map(|&id| id as u32).collect::<Vec<_>>(), false).unwrap();
    assert_eq!(text, "<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n");
}

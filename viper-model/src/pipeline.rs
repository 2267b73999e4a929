//! From a conversation with images to generated text: template, tokenizer, image preprocessing and
//! the model, wired the way the upstream README does it (docs/spec.md §2).

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use viper_chat_template::{BuiltinTemplate, ChatTemplate, Conversation, PromptTokens, Tokenizer, IMAGE_TOKEN_INDEX};
use viper_processor::{ImageLoader, ProcessedImage, RgbImage};
use viper_ssm::SsmBackend;

use crate::config::LanguageConfig;
use crate::error::{ModelError, Result};
use crate::generate::{generate, Generation, GenerationConfig};
use crate::lm::LanguageModel;
use crate::stats::{ms, GenerationStats};
use crate::viper::{ImageEncoding, ViperCache, ViperLoadOptions, ViperModel};

/// A prompt ready for the language model, with everything computed on the way.
#[derive(Debug, Clone)]
pub struct PreparedPrompt<B: Backend> {
    /// The rendered chat template.
    pub prompt: String,
    /// Token ids, [`IMAGE_TOKEN_INDEX`] where an image goes.
    pub tokens: PromptTokens,
    /// Preprocessed images in prompt order.
    pub images: Vec<ProcessedImage>,
    /// The image path's tensors (`None` without images).
    pub encoding: Option<ImageEncoding<B>>,
    /// `[1, L, H]` language-model input.
    pub inputs_embeds: Tensor<B, 3>,
    /// The image stages' figures (images, preprocessing, crops, vision tower); the rest is zero.
    pub stats: GenerationStats,
}

/// A Viper checkpoint with its tokenizer and chat template: what `viper generate` uses.
#[derive(Debug)]
pub struct Viper<B: SsmBackend> {
    /// The network.
    pub model: ViperModel<B>,
    /// The checkpoint's tokenizer.
    pub tokenizer: Tokenizer,
    /// The checkpoint's chat template, or the family's built-in Viper template.
    pub template: ChatTemplate,
    /// Image decoding limits.
    pub images: ImageLoader,
}

impl<B: SsmBackend> Viper<B> {
    /// Loads model, tokenizer and template from a checkpoint directory.
    pub fn load(dir: impl AsRef<Path>, options: ViperLoadOptions, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let model = ViperModel::load(dir, options, device)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        if tokenizer.vocab_size() > model.vocab_size() {
            log::warn!(
                "the tokenizer has {} tokens but the embedding matrix {} rows; ids beyond it are refused",
                tokenizer.vocab_size(),
                model.vocab_size()
            );
        }
        let builtin = match model.config.language {
            LanguageConfig::FalconMamba(_) => BuiltinTemplate::SystemFalconMamba,
            LanguageConfig::Jamba(_) => BuiltinTemplate::SystemJamba,
        };
        let template = ChatTemplate::from_checkpoint(dir)?.unwrap_or_else(|| ChatTemplate::builtin(builtin));
        Ok(Self { model, tokenizer, template, images: ImageLoader::default() })
    }

    /// The upstream generation defaults: greedy, and stop on the family's end-of-turn token
    /// (`<|im_end|>` for FalconMamba, `<|eom|>` for Jamba; docs/spec.md §8.2), else the tokenizer's eos.
    pub fn default_generation(&self) -> GenerationConfig {
        let end_of_turn = match self.model.config.language {
            LanguageConfig::FalconMamba(_) => "<|im_end|>",
            LanguageConfig::Jamba(_) => "<|eom|>",
        };
        let eos = self.tokenizer.token_to_id(end_of_turn).or(self.tokenizer.eos_token_id());
        GenerationConfig { eos_token_ids: eos.into_iter().collect(), ..GenerationConfig::default() }
    }

    /// A conversation with the Viper system prompt and one user turn: one `<image>\n` per image
    /// before `question`, as the upstream README builds it.
    pub fn conversation(question: &str, images: Vec<RgbImage>) -> Conversation<RgbImage> {
        Conversation::new().with_system(viper_chat_template::VIPER_SYSTEM_PROMPT).user_with_images(question, images)
    }

    /// Renders, tokenizes and embeds `conversation` (with a generation prompt), running its images
    /// through the vision side.
    pub fn prepare(&self, conversation: &Conversation<RgbImage>) -> Result<PreparedPrompt<B>> {
        let prompt = self.template.render(conversation, self.tokenizer.special_tokens(), true)?;
        let tokens = self.tokenizer.encode_prompt(&prompt)?;
        self.embed(prompt, tokens, conversation.images().collect())
    }

    /// Preprocesses, encodes and splices `images`, one per `<image>` marker of `tokens` (the count
    /// [`ChatTemplate::render`] checked).
    fn embed(&self, prompt: String, tokens: PromptTokens, images: Vec<&RgbImage>) -> Result<PreparedPrompt<B>> {
        let mut stats = GenerationStats { images: images.len(), ..GenerationStats::default() };
        let (images, encoding) = if images.is_empty() {
            (Vec::new(), None)
        } else {
            let processor = self
                .model
                .processor
                .as_ref()
                .ok_or_else(|| ModelError::Input("this checkpoint has no vision tower".into()))?;
            let start = Instant::now();
            let processed =
                images.into_iter().map(|im| processor.process(im)).collect::<std::result::Result<Vec<_>, _>>()?;
            stats.preprocess_ms = ms(start.elapsed());
            stats.crops = processed.iter().map(|im| im.shape[0]).sum();
            let start = Instant::now();
            let encoding = self.model.encode_images(&processed)?;
            // The tower runs asynchronously on a GPU: its clock stops when the device is done.
            B::sync(self.model.device()).map_err(|e| ModelError::Input(format!("device error: {e:?}")))?;
            stats.vision_ms = ms(start.elapsed());
            (processed, Some(encoding))
        };
        let features = encoding.as_ref().map(|e| e.image_features.clone()).unwrap_or_default();
        let inputs_embeds = self.model.embed_prompt(&tokens.ids, &features)?;
        Ok(PreparedPrompt { prompt, tokens, images, encoding, inputs_embeds, stats })
    }

    /// One-shot: prepares `conversation` and generates its answer from a fresh cache.
    pub fn generate(
        &self,
        conversation: &Conversation<RgbImage>,
        config: &GenerationConfig,
        on_text: impl FnMut(&str),
    ) -> Result<(PreparedPrompt<B>, Generation)> {
        let start = Instant::now();
        let prepared = self.prepare(conversation)?;
        let mut cache = self.model.new_cache(1);
        let mut generation =
            generate(&self.model, &mut cache, prepared.inputs_embeds.clone(), config, &self.tokenizer, on_text)?;
        generation.stats = prepared.stats.with_answer(&generation.stats, start);
        Ok((prepared, generation))
    }

    /// A multi-turn chat that keeps the model's cache between turns.
    pub fn chat(&self, system: Option<&str>) -> ChatSession<'_, B> {
        let mut conversation = Conversation::new();
        conversation.system = Some(system.unwrap_or(viper_chat_template::VIPER_SYSTEM_PROMPT).to_string());
        ChatSession {
            viper: self,
            conversation,
            cache: self.model.new_cache(1),
            seen: Vec::new(),
            pending: None,
            last_prefill: 0,
        }
    }
}

/// A conversation whose recurrent state (and KV cache) is kept across turns, so a follow-up about
/// the same image does not run the image prefill again.
#[derive(Debug)]
pub struct ChatSession<'a, B: SsmBackend> {
    viper: &'a Viper<B>,
    /// The conversation so far.
    pub conversation: Conversation<RgbImage>,
    cache: ViperCache<B>,
    /// Ids the cache has consumed (prompt and answers).
    seen: Vec<i64>,
    /// The last generated id, not yet fed to the cache.
    pending: Option<u32>,
    /// Positions the last [`ask`](Self::ask) prefilled (the whole prompt, or only the new turn).
    pub last_prefill: usize,
}

impl<B: SsmBackend> ChatSession<'_, B> {
    /// Adds a user turn (with `images` before `text`) and generates the answer, feeding only what
    /// the cache has not seen. Falls back to a full prefill if the new prompt does not extend the old
    /// one token for token.
    pub fn ask(
        &mut self,
        text: &str,
        images: Vec<RgbImage>,
        config: &GenerationConfig,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let start = Instant::now();
        let viper = self.viper;
        let mut conversation = self.conversation.clone().user_with_images(text, images);
        let prompt = viper.template.render(&conversation, viper.tokenizer.special_tokens(), true)?;
        let tokens = viper.tokenizer.encode_prompt(&prompt)?;
        // The cache holds `seen`; the last answer's final id is still to be fed.
        let mut expected = self.seen.clone();
        expected.extend(self.pending.map(i64::from));
        let (embeds, image_stats, consumed) = if !self.seen.is_empty() && tokens.ids.starts_with(&expected) {
            let new_images: Vec<&RgbImage> =
                conversation.turns.last().map(|t| t.images.iter().collect()).unwrap_or_default();
            let suffix = tokens.ids[self.seen.len()..].to_vec();
            let positions =
                suffix.iter().enumerate().filter(|(_, &id)| id == IMAGE_TOKEN_INDEX).map(|(i, _)| i).collect();
            let prepared = viper.embed(prompt, PromptTokens { ids: suffix, image_positions: positions }, new_images)?;
            (prepared.inputs_embeds, prepared.stats, tokens.ids.clone())
        } else {
            if !self.seen.is_empty() {
                log::info!("the new prompt does not extend the cached one: prefilling from scratch");
            }
            self.cache = viper.model.new_cache(1);
            let prepared = viper.embed(prompt, tokens.clone(), conversation.images().collect())?;
            (prepared.inputs_embeds, prepared.stats, tokens.ids.clone())
        };
        self.last_prefill = embeds.dims()[1];
        let mut generation = match generate(&viper.model, &mut self.cache, embeds, config, &viper.tokenizer, on_text) {
            Ok(g) => g,
            Err(e) => {
                // The cache may hold part of this turn: forget it so the next turn prefills afresh.
                self.seen.clear();
                self.pending = None;
                return Err(e);
            }
        };
        generation.stats = image_stats.with_answer(&generation.stats, start);
        self.seen = consumed;
        if let Some((&last, rest)) = generation.ids.split_last() {
            self.seen.extend(rest.iter().map(|&id| i64::from(id)));
            self.pending = Some(last);
        }
        conversation = conversation.assistant(viper.tokenizer.decode(&generation.ids, true)?);
        self.conversation = conversation;
        Ok(generation)
    }
}

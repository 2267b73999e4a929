//! From a conversation with images to generated text: template, tokenizer, image preprocessing and
//! the model, wired the way the upstream README does it (docs/spec.md §2).

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use viper_chat_template::{
    BuiltinTemplate, ChatTemplate, Conversation, PromptTokens, Role, Tokenizer, Turn, IMAGE_TOKEN, IMAGE_TOKEN_INDEX,
};
use viper_processor::{ImageLoader, ProcessedImage, RgbImage};
use viper_ssm::SsmBackend;

use crate::config::LanguageConfig;
use crate::error::{ModelError, Result};
use crate::generate::{generate, FinishReason, Generation, GenerationConfig};
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

    /// Embeds an explicit id sequence, [`IMAGE_TOKEN_INDEX`] where each of `images` goes (in order),
    /// running the images through the vision side: what a fresh prefill over, say,
    /// [`ChatSession::ids`] feeds. The returned `prompt` is empty (no template rendered these ids).
    pub fn embed_ids(&self, ids: &[i64], images: &[&RgbImage]) -> Result<PreparedPrompt<B>> {
        let image_positions: Vec<usize> =
            ids.iter().enumerate().filter(|(_, &id)| id == IMAGE_TOKEN_INDEX).map(|(i, _)| i).collect();
        if image_positions.len() != images.len() {
            return Err(ModelError::Input(format!(
                "{} image position(s) in the ids but {} image(s)",
                image_positions.len(),
                images.len()
            )));
        }
        self.embed(String::new(), PromptTokens { ids: ids.to_vec(), image_positions }, images.to_vec())
    }

    /// Preprocesses, encodes and splices `images`, one per `<image>` marker of `tokens` (the count
    /// [`ChatTemplate::render`] checked).
    fn embed(&self, prompt: String, tokens: PromptTokens, images: Vec<&RgbImage>) -> Result<PreparedPrompt<B>> {
        let (images, encoding, stats) = self.encode(images)?;
        let features = encoding.as_ref().map(|e| e.image_features.clone()).unwrap_or_default();
        let inputs_embeds = self.model.embed_prompt(&tokens.ids, &features)?;
        Ok(PreparedPrompt { prompt, tokens, images, encoding, inputs_embeds, stats })
    }

    /// Preprocesses and encodes `images` (nothing to do without any), with the image stages' stats.
    fn encode(
        &self,
        images: Vec<&RgbImage>,
    ) -> Result<(Vec<ProcessedImage>, Option<ImageEncoding<B>>, GenerationStats)> {
        let mut stats = GenerationStats { images: images.len(), ..GenerationStats::default() };
        if images.is_empty() {
            return Ok((Vec::new(), None, stats));
        }
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
        Ok((processed, Some(encoding), stats))
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
            pending_ends_turn: false,
            positions: 0,
            last_prefill: 0,
        }
    }
}

/// Stands for the last answer in the render that yields the template's text between an answer and
/// the next generation prompt (private-use characters: no template or tokenizer gives them a meaning).
const ANSWER_SENTINEL: &str = "\u{F8FF}viper-answer\u{F8FF}";

/// A conversation whose recurrent state (and KV cache) is kept across turns, so that a follow-up
/// costs only its new tokens and new images.
///
/// The cache's contents are ids, not text: a follow-up feeds the last answer's final id, then the
/// template's end-of-turn separator, the new question (with its images) and the generation prompt,
/// tokenized on their own. Earlier turns are never re-tokenized and earlier images never encoded
/// again, so the cache always holds what a fresh prefill over [`ids`](Self::ids) computes
/// ([`pending`](Self::pending) is fed next).
#[derive(Debug)]
pub struct ChatSession<'a, B: SsmBackend> {
    viper: &'a Viper<B>,
    /// The conversation so far, answers decoded for display.
    conversation: Conversation<RgbImage>,
    cache: ViperCache<B>,
    /// Ids the cache has consumed (prompt, separators and answers); empty when the next turn
    /// prefills from scratch.
    seen: Vec<i64>,
    /// The last generated id, not yet fed to the cache.
    pending: Option<u32>,
    /// `pending` ended its answer as an eos id.
    pending_ends_turn: bool,
    /// Positions the cache holds (each image counted as its feature rows).
    positions: usize,
    /// Positions the last [`ask`](Self::ask) prefilled (the whole prompt, or only the new turn).
    pub last_prefill: usize,
}

impl<B: SsmBackend> ChatSession<'_, B> {
    /// The conversation so far (answers decoded for display; the cache holds [`ids`](Self::ids)).
    pub fn conversation(&self) -> &Conversation<RgbImage> {
        &self.conversation
    }

    /// The ids the cache has consumed, in order, [`IMAGE_TOKEN_INDEX`] for each image: every prompt
    /// and separator fed and every answer, except the last answer's final id ([`pending`](Self::pending)).
    /// (A prompt cut at `tokenizer_model_max_length` is listed whole, though only its start was fed.)
    pub fn ids(&self) -> &[i64] {
        &self.seen
    }

    /// The last answer's final id, which the cache has not consumed: the next turn feeds it first.
    pub fn pending(&self) -> Option<u32> {
        self.pending
    }

    /// Adds a user turn (with `images` before `text`) and generates the answer. After the first turn
    /// only the new ids and the new images are fed (see [`ChatSession`]); the whole conversation is
    /// rendered and prefilled again only when the template does not render a follow-up as an
    /// extension of the previous prompt, or when the conversation outgrows `tokenizer_model_max_length`.
    pub fn ask(
        &mut self,
        text: &str,
        images: Vec<RgbImage>,
        config: &GenerationConfig,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let start = Instant::now();
        let new_images = images.len();
        self.conversation = std::mem::take(&mut self.conversation).user_with_images(text, images);
        let result = self.answer(new_images, config, on_text, start);
        if result.is_err() {
            self.conversation.turns.pop();
        }
        result
    }

    /// [`ask`](Self::ask) once the question is the conversation's last turn; on success the answer is
    /// appended to it.
    fn answer(
        &mut self,
        new_images: usize,
        config: &GenerationConfig,
        on_text: impl FnMut(&str),
        start: Instant,
    ) -> Result<Generation> {
        let viper = self.viper;
        let Feed { ids, embeds, stats: image_stats } = match self.follow_up(new_images)? {
            Some(feed) => feed,
            None => {
                let prepared = viper.prepare(&self.conversation)?;
                self.cache = viper.model.new_cache(1);
                self.seen.clear();
                self.positions = 0;
                Feed { ids: prepared.tokens.ids, embeds: prepared.inputs_embeds, stats: prepared.stats }
            }
        };
        let prefill = embeds.dims()[1];
        self.last_prefill = prefill;
        self.pending = None;
        let generated = generate(&viper.model, &mut self.cache, embeds, config, &viper.tokenizer, on_text)
            .and_then(|g| Ok((viper.tokenizer.decode(&g.ids, true)?, g)));
        let (answer, mut generation) = match generated {
            Ok(g) => g,
            Err(e) => {
                // The cache may hold part of this turn: forget it so the next turn prefills afresh.
                self.seen.clear();
                return Err(e);
            }
        };
        generation.stats = image_stats.with_answer(&generation.stats, start);
        self.seen.extend(ids);
        self.positions += prefill + generation.stats.decode_tokens;
        if let Some((&last, rest)) = generation.ids.split_last() {
            self.seen.extend(rest.iter().map(|&id| i64::from(id)));
            self.pending = Some(last);
        }
        self.pending_ends_turn = generation.finish == FinishReason::Eos;
        self.conversation = std::mem::take(&mut self.conversation).assistant(answer);
        Ok(generation)
    }

    /// What a follow-up feeds on top of the cache, or `None` when the turn must be prefilled from
    /// scratch (first turn, after an error, a template that does not extend the previous prompt, or
    /// past the context length).
    fn follow_up(&self, new_images: usize) -> Result<Option<Feed<B>>> {
        if self.seen.is_empty() {
            return Ok(None);
        }
        let viper = self.viper;
        let special = viper.tokenizer.special_tokens();
        // [… question, answer, new question]: the previous prompt, then the same with the answer
        // replaced by the sentinel; what follows the sentinel is the separator to feed.
        let mut outline = outline(&self.conversation);
        let question = outline.turns.pop();
        if !matches!(outline.turns.pop(), Some(t) if t.role == Role::Assistant) {
            return Ok(None);
        }
        let previous = viper.template.render(&outline, special, true)?;
        let mut probe = outline.assistant(ANSWER_SENTINEL);
        probe.turns.extend(question);
        let rendered = viper.template.render(&probe, special, true)?;
        let Some(separator) = separator(&previous, &rendered) else {
            log::info!(
                "the template does not render the follow-up as an extension of the prompt: prefilling from scratch"
            );
            return Ok(None);
        };
        if separator.matches(IMAGE_TOKEN).count() != new_images {
            log::info!("the template places images of other turns after the answer: prefilling from scratch");
            return Ok(None);
        }
        let starts_with_bos = viper.tokenizer.bos_token_id().map(i64::from) == self.seen.first().copied();
        let separator_ids = encode_follow_up(&viper.tokenizer, separator, starts_with_bos)?;
        let ids = follow_up_ids(self.pending, self.pending_ends_turn, separator_ids);

        let images: Vec<&RgbImage> =
            self.conversation.turns.last().map(|t| t.images.iter().collect()).unwrap_or_default();
        let (_, encoding, stats) = viper.encode(images)?;
        let features = encoding.map(|e| e.image_features).unwrap_or_default();
        let text = ids.iter().filter(|&&id| id != IMAGE_TOKEN_INDEX).count();
        let len = text + features.iter().map(|f| f.dims()[0]).sum::<usize>();
        // Past the context length the whole conversation is the prompt upstream truncates (§8.1).
        if let Some(max) = viper.model.config.llava.tokenizer_model_max_length.filter(|&m| self.positions + len > m) {
            log::info!("the conversation outgrows tokenizer_model_max_length {max}: prefilling from scratch");
            return Ok(None);
        }
        let embeds = viper.model.embed_prompt(&ids, &features)?;
        Ok(Some(Feed { ids, embeds, stats }))
    }
}

/// What one turn feeds the cache.
struct Feed<B: Backend> {
    /// The ids, [`IMAGE_TOKEN_INDEX`] for each image.
    ids: Vec<i64>,
    /// Their `[1, l, H]` embeddings, image features spliced.
    embeds: Tensor<B, 3>,
    /// The image stages' figures.
    stats: GenerationStats,
}

/// `conversation`'s text and image counts without the pixels: all a render needs.
fn outline(conversation: &Conversation<RgbImage>) -> Conversation<()> {
    let turns = conversation
        .turns
        .iter()
        .map(|t| Turn { role: t.role, text: t.text.clone(), images: vec![(); t.images.len()] })
        .collect();
    Conversation { system: conversation.system.clone(), turns }
}

/// The text after [`ANSWER_SENTINEL`] in `rendered`, if what precedes it is `previous` (the prompt the
/// answer was generated from) plus at most whitespace the template puts before an answer (Jamba's
/// `<|assistant|> `, docs/spec.md §5.3: the model generated without it, so it is not fed).
fn separator<'r>(previous: &str, rendered: &'r str) -> Option<&'r str> {
    let (before, after) = rendered.split_once(ANSWER_SENTINEL)?;
    let glue = before.strip_prefix(previous)?;
    (glue.trim().is_empty() && !after.contains(ANSWER_SENTINEL)).then_some(after)
}

/// Tokenizes a follow-up's `text` as [`Tokenizer::encode_prompt`] treats the part of a prompt after
/// an answer (docs/spec.md §5.4): split on `<image>`; the first chunk continues the cached text, so
/// it gets no special tokens; each later chunk is encoded with them and, when the conversation's ids
/// start with BOS, loses its first id (upstream's quirk, which training shared).
fn encode_follow_up(tokenizer: &Tokenizer, text: &str, starts_with_bos: bool) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    for (i, chunk) in text.split(IMAGE_TOKEN).enumerate() {
        let chunk_ids = if i == 0 {
            tokenizer.encode(chunk, false)?
        } else {
            ids.push(IMAGE_TOKEN_INDEX);
            tokenizer.encode(chunk, true)?.into_iter().skip(usize::from(starts_with_bos)).collect()
        };
        ids.extend(chunk_ids.into_iter().map(i64::from));
    }
    Ok(ids)
}

/// The ids of a follow-up: the last answer's final id (not yet in the cache), then the separator's,
/// whose leading end-of-turn id is not repeated when the answer already ended on it.
fn follow_up_ids(pending: Option<u32>, pending_ends_turn: bool, separator: Vec<i64>) -> Vec<i64> {
    let Some(last) = pending.map(i64::from) else { return separator };
    let skip = usize::from(pending_ends_turn && separator.first() == Some(&last));
    std::iter::once(last).chain(separator.into_iter().skip(skip)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_separator_follows_the_previous_prompt() {
        let chatml = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
        let rendered = format!("{chatml}{ANSWER_SENTINEL}<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n");
        assert_eq!(separator(chatml, &rendered), Some("<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n"));
        let jamba = "<|bom|><|user|> hi<|eom|><|bom|><|assistant|>";
        let rendered = format!("{jamba} {ANSWER_SENTINEL}<|eom|>");
        assert_eq!(separator(jamba, &rendered), Some("<|eom|>"));
        // Earlier text rendered differently, or words before the answer: not an extension.
        assert_eq!(separator("<|im_start|>system", &rendered), None);
        assert_eq!(separator(jamba, &format!("{jamba} Sure: {ANSWER_SENTINEL}<|eom|>")), None);
        assert_eq!(separator(jamba, jamba), None);
    }

    #[test]
    fn an_end_of_turn_id_is_fed_once() {
        let separator = vec![7, 1, IMAGE_TOKEN_INDEX, 2];
        assert_eq!(follow_up_ids(Some(7), true, separator.clone()), [7, 1, IMAGE_TOKEN_INDEX, 2]);
        assert_eq!(follow_up_ids(Some(7), false, separator.clone()), [7, 7, 1, IMAGE_TOKEN_INDEX, 2]);
        assert_eq!(follow_up_ids(Some(5), true, separator.clone()), [5, 7, 1, IMAGE_TOKEN_INDEX, 2]);
        assert_eq!(follow_up_ids(None, true, separator.clone()), separator);
    }
}

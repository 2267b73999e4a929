//! The decoding loop: one prefill over the prompt embeddings, then one token at a time through the
//! model's cache (never re-running the prompt), with streaming text and stop conditions.

use std::time::Instant;

use burn::prelude::*;
use viper_chat_template::Tokenizer;
use viper_ssm::SsmBackend;

use crate::error::{ModelError, Result};
use crate::lm::{LanguageModel, Logits};
use crate::sampling::{Sampler, SamplingConfig};
use crate::stats::{ms, GenerationStats};

/// What to generate and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Greedy or sampling.
    pub sampling: SamplingConfig,
    /// Stop after generating any of these (the token is kept, as transformers does).
    pub eos_token_ids: Vec<u32>,
    /// Stop when the decoded text contains one of these (the text is cut before it).
    pub stop_strings: Vec<String>,
    /// Generate exactly `max_new_tokens`, ignoring eos and stop strings.
    pub ignore_eos: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: SamplingConfig::default(),
            eos_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// An eos id was generated.
    Eos,
    /// A stop string appeared in the text.
    StopString,
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids (the eos id included when it ended the generation).
    pub ids: Vec<u32>,
    /// Decoded text, special tokens skipped, cut before a stop string.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// f32 logits at the last prompt position (the ones that chose `ids[0]`).
    pub prompt_logits: Vec<f32>,
    /// Prefill and decode timings ([`generate`] fills those; the pipeline adds the image stages and
    /// counts the time to first token from the start of the request).
    pub stats: GenerationStats,
}

fn host_logits<B: Backend>(logits: Tensor<B, 3>) -> Result<Vec<f32>> {
    logits.into_data().convert::<f32>().into_vec().map_err(|e| ModelError::Input(format!("cannot read logits: {e:?}")))
}

/// Generates after `prompt` (`[1, l, H]` embeddings) continuing from `cache`, streaming decoded
/// text pieces to `on_text`.
///
/// On return the cache holds the prompt and every generated token except the last one, which a
/// follow-up turn feeds first (see [`crate::ChatSession`]).
pub fn generate<B: SsmBackend, M: LanguageModel<B>>(
    model: &M,
    cache: &mut M::Cache,
    prompt: Tensor<B, 3>,
    config: &GenerationConfig,
    tokenizer: &Tokenizer,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    config.sampling.validate().map_err(ModelError::Input)?;
    if prompt.dims()[0] != 1 || prompt.dims()[1] == 0 {
        return Err(ModelError::Input(format!(
            "generation needs one non-empty sequence, got embeddings of shape {:?}",
            prompt.dims()
        )));
    }
    let device = prompt.device();
    let mut sampler = Sampler::new(config.sampling.clone());
    let mut stream = tokenizer.stream(true);
    let mut ids: Vec<u32> = Vec::new();
    let mut text = String::new();
    let mut finish = FinishReason::Length;
    let mut stats = GenerationStats { prefill_positions: prompt.dims()[1], ..GenerationStats::default() };

    let start = Instant::now();
    // Reading the logits back waits for the device: the prefill's clock stops there.
    let mut logits = host_logits(model.forward(prompt, cache, Logits::Last))?;
    stats.prefill_ms = ms(start.elapsed());
    let prompt_logits = logits.clone();
    let mut decode_start = None;
    while ids.len() < config.max_new_tokens {
        let id = sampler.sample(&mut logits, &ids);
        ids.push(id);
        if decode_start.is_none() {
            stats.ttft_ms = ms(start.elapsed());
            decode_start = Some(Instant::now());
        }
        if let Some(piece) = stream.step(id)? {
            text.push_str(&piece);
            on_text(&piece);
        }
        if !config.ignore_eos {
            if config.eos_token_ids.contains(&id) {
                finish = FinishReason::Eos;
                break;
            }
            if config.stop_strings.iter().any(|s| text.contains(s.as_str())) {
                finish = FinishReason::StopString;
                break;
            }
        }
        if ids.len() == config.max_new_tokens {
            break;
        }
        let next = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![i64::from(id)], [1, 1]), &device);
        logits = host_logits(model.forward(model.embed(next), cache, Logits::Last))?;
    }
    if let Some(t) = decode_start {
        stats.decode_ms = ms(t.elapsed());
    }
    stats.decode_tokens = ids.len().saturating_sub(1);
    stats.peak_device_bytes = B::device_memory_reserved(&device);
    if finish == FinishReason::Length {
        if let Some(rest) = stream.finish()? {
            on_text(&rest);
        }
    }
    // The streamed pieces are for display; the answer is the decode of all ids (cut at a stop string).
    let mut answer = tokenizer.decode(&ids, true)?;
    if finish == FinishReason::StopString {
        answer
            .truncate(config.stop_strings.iter().filter_map(|s| answer.find(s.as_str())).min().unwrap_or(answer.len()));
    }
    Ok(Generation { ids, text: answer, finish, prompt_logits, stats })
}

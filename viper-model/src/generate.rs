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
    /// Greedy tokens the device picks and feeds itself between two host reads ([`DECODE_BLOCK`] by
    /// default; `1` reads every token back before the next step is queued). Only greedy decoding without a
    /// repetition penalty runs on the device; the ids are the same either way (argmax, first index on ties).
    pub decode_block: usize,
}

/// Default [`GenerationConfig::decode_block`]: one host read per 8 greedy tokens. A read waits for the
/// device to finish, so reading every token leaves the GPU idle while the host queues the next step
/// (BENCHMARKS.md, "The product path on the H200": the CLI decoded at half the library's rate).
pub const DECODE_BLOCK: usize = 8;

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: SamplingConfig::default(),
            eos_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            decode_block: DECODE_BLOCK,
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

/// The argmax of `[1, 1, V]` logits on the device, the first index on ties as the host's `argmax` (the
/// smallest index among the maxima; a reduction's own argmax does not promise which tie it keeps).
/// `index` is `0..V` as `[1, 1, V]`.
fn device_argmax<B: Backend>(logits: Tensor<B, 3>, index: &Tensor<B, 3, Int>) -> Tensor<B, 2, Int> {
    let dims = logits.dims();
    let max = logits.clone().max_dim(2).expand(dims);
    let v = dims[2];
    index.clone().mask_fill(logits.not_equal(max), v as i64).min_dim(2).reshape([1, 1])
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
    let mut out = Output {
        config,
        stream: tokenizer.stream(true),
        ids: Vec::new(),
        text: String::new(),
        start: Instant::now(),
        decode_start: None,
        stats: GenerationStats { prefill_positions: prompt.dims()[1], ..GenerationStats::default() },
    };

    // Reading the logits back waits for the device: the prefill's clock stops there.
    let mut logits = host_logits(model.forward(prompt, cache, Logits::Last))?;
    out.stats.prefill_ms = ms(out.start.elapsed());
    let prompt_logits = logits.clone();
    let on_device = config.decode_block > 1 && config.sampling.is_greedy() && config.sampling.repetition_penalty == 1.0;
    let mut finish = Some(FinishReason::Length);
    if config.max_new_tokens > 0 {
        let id = sampler.sample(&mut logits, &out.ids);
        finish = out.accept(id, &mut on_text)?;
    }
    if on_device {
        let vocab = prompt_logits.len();
        let index = Tensor::<B, 1, Int>::arange(0..vocab as i64, &device).reshape([1, 1, vocab]);
        let last = out.ids.last().copied().unwrap_or_default();
        let mut feed = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![i64::from(last)], [1, 1]), &device);
        while finish.is_none() {
            // The device feeds its own argmax `n` times; `before[j]` is the cache that step `j` started from.
            let n = config.decode_block.min(config.max_new_tokens - out.ids.len());
            let mut before = Vec::with_capacity(n);
            let mut picked = Vec::with_capacity(n);
            for _ in 0..n {
                before.push(cache.clone());
                let logits = model.forward(model.embed(feed), cache, Logits::Last);
                feed = device_argmax(logits, &index);
                picked.push(feed.clone());
            }
            let block: Vec<i64> = Tensor::cat(picked, 1)
                .into_data()
                .convert::<i64>()
                .into_vec()
                .map_err(|e| ModelError::Input(format!("cannot read token ids: {e:?}")))?;
            for (j, &id) in block.iter().enumerate() {
                finish = out.accept(id as u32, &mut on_text)?;
                if finish.is_some() {
                    // Step `j` fed the id before this one; the cache that holds it (and not this one) is
                    // the one step `j + 1` started from, or the live cache after the block's last step.
                    if j + 1 < n {
                        *cache = before.swap_remove(j + 1);
                    }
                    break;
                }
            }
        }
    }
    while finish.is_none() {
        let last = out.ids.last().copied().unwrap_or_default();
        let next = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![i64::from(last)], [1, 1]), &device);
        logits = host_logits(model.forward(model.embed(next), cache, Logits::Last))?;
        let id = sampler.sample(&mut logits, &out.ids);
        finish = out.accept(id, &mut on_text)?;
    }
    let finish = finish.unwrap_or(FinishReason::Length); // unreachable: both loops end on `Some`
    let Output { stream, ids, mut stats, decode_start, .. } = out;
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

/// What has been generated so far, and the stop rules.
struct Output<'a, 't> {
    config: &'a GenerationConfig,
    stream: viper_chat_template::TextStream<'t>,
    ids: Vec<u32>,
    text: String,
    start: Instant,
    decode_start: Option<Instant>,
    stats: GenerationStats,
}

impl Output<'_, '_> {
    /// Takes the next id: streams its text and says whether generation ends with it.
    fn accept(&mut self, id: u32, on_text: &mut impl FnMut(&str)) -> Result<Option<FinishReason>> {
        self.ids.push(id);
        if self.decode_start.is_none() {
            self.stats.ttft_ms = ms(self.start.elapsed());
            self.decode_start = Some(Instant::now());
        }
        if let Some(piece) = self.stream.step(id)? {
            self.text.push_str(&piece);
            on_text(&piece);
        }
        let c = self.config;
        if !c.ignore_eos {
            if c.eos_token_ids.contains(&id) {
                return Ok(Some(FinishReason::Eos));
            }
            if c.stop_strings.iter().any(|s| self.text.contains(s.as_str())) {
                return Ok(Some(FinishReason::StopString));
            }
        }
        Ok((self.ids.len() >= c.max_new_tokens).then_some(FinishReason::Length))
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;

    use super::*;
    use crate::sampling::argmax;

    /// The device's pick is the host's: the first index among equal maxima, wherever they sit.
    #[test]
    fn device_argmax_keeps_the_first_of_equal_maxima() {
        let device = Default::default();
        let cases: [&[f32]; 5] = [
            &[1.0, 3.0, 3.0, 2.0],
            &[5.0, 5.0, 5.0, 5.0],
            &[-1.0, -2.0, -0.5, -0.5],
            &[0.0, 1.0, 2.0, 7.0],
            &[9.0, 1.0, 9.0, 9.0],
        ];
        for logits in cases {
            let v = logits.len();
            let t = Tensor::<NdArray, 3>::from_data(TensorData::new(logits.to_vec(), [1, 1, v]), &device);
            let index = Tensor::<NdArray, 1, Int>::arange(0..v as i64, &device).reshape([1, 1, v]);
            let got: Vec<i64> = device_argmax(t, &index).into_data().convert::<i64>().into_vec().unwrap();
            assert_eq!(got, vec![argmax(logits) as i64], "{logits:?}");
        }
    }
}

//! The engine: one thread that owns the model and schedules every request on it.
//!
//! Each tick of the scheduler loop
//! 1. drops the sequences whose client went away (their event channel is closed);
//! 2. admits waiting requests up to `max_batch` sequences: renders the conversation with the model's
//!    template (the same [`ChatTemplate::render`](viper_chat_template::ChatTemplate::render) and
//!    [`Tokenizer::encode_prompt`](viper_chat_template::Tokenizer::encode_prompt) as
//!    [`Viper::prepare`]), looks the prompt's prefix up in the [`StateCache`] and, on a miss, runs the
//!    images through the vision side;
//! 3. runs at most one prefill chunk (≤ `prefill_chunk` positions) of the oldest prefilling sequence, so
//!    a long prompt is prefilled over several ticks and never stalls the decode batch for its length;
//! 4. runs one decode step for every decoding sequence: FalconMamba caches are stacked along the batch
//!    dimension ([`ViperCache::cat`]), stepped by one `forward` over `[n, 1, H]` and split back; Jamba
//!    sequences are stepped one by one (their attention KV caches differ in length and would need a
//!    padding mask). Sampling stays on the host, one [`Sampler`] per sequence.
//!
//! A prompt is always prefilled in the same pieces, whether or not the state cache holds its prefix:
//! first the prefix (up to and including the last image, or without images the part before the last
//! turn), then the rest, each in chunks of `prefill_chunk` positions counted from the piece's start.
//! So a cache hit, a batch and a lone request all compute the same numbers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::prelude::*;
use tokio::sync::mpsc;
use viper_chat_template::{Conversation, TextStream, IMAGE_TOKEN_INDEX};
use viper_model::{
    FinishReason, GenerationConfig, LanguageModel, Logits, ModelError, Sampler, SsmBackend, Viper, ViperCache,
};
use viper_processor::RgbImage;

use crate::api::{ApiError, RequestStats, Usage};
use crate::metrics::Metrics;
use crate::state_cache::{cache_bytes, hash_images, PrefixKey, StateCache};
use crate::ServerError;

/// How the engine schedules.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences in flight (prefilling or decoding); more wait in the queue.
    pub max_batch: usize,
    /// Requests that may wait for a slot; beyond, the server answers 503.
    pub queue: usize,
    /// Byte budget of the state cache (0 turns it off).
    pub state_cache_bytes: usize,
    /// Most positions one prefill chunk runs.
    pub prefill_chunk: usize,
    /// Most prompt positions accepted (`None`: the checkpoint's `tokenizer_model_max_length`, if any).
    pub max_context: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { max_batch: 8, queue: 64, state_cache_bytes: 1 << 30, prefill_chunk: 512, max_context: None }
    }
}

impl EngineConfig {
    fn validate(&self) -> Result<(), ServerError> {
        if self.max_batch == 0 || self.queue == 0 || self.prefill_chunk == 0 {
            return Err(ServerError::Config("max_batch, queue and prefill_chunk must be positive".into()));
        }
        Ok(())
    }
}

/// A request for the engine.
#[derive(Debug)]
pub struct Job {
    /// The conversation (its images decoded).
    pub conversation: Conversation<RgbImage>,
    /// [`hash_images`] of the images' encoded bytes.
    pub image_hash: u64,
    /// What to generate (the model's eos ids are added by the engine).
    pub generation: GenerationConfig,
    /// Return the prompt's and the answer's ids in the stats.
    pub return_token_ids: bool,
    /// Where the engine reports.
    pub events: mpsc::UnboundedSender<Event>,
    /// When the server received it.
    pub received: Instant,
}

impl Job {
    /// A job and the receiver of its events.
    pub fn new(
        conversation: Conversation<RgbImage>,
        image_bytes: &[Vec<u8>],
        generation: GenerationConfig,
        return_token_ids: bool,
    ) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let image_hash = hash_images(image_bytes.iter().map(Vec::as_slice));
        (Self { conversation, image_hash, generation, return_token_ids, events, received: Instant::now() }, rx)
    }
}

/// What the engine reports about a job, in order: `Started` or `Error` first, then `Text` pieces, then
/// `Done` (or `Error`).
#[derive(Debug, Clone)]
pub enum Event {
    /// The prompt was accepted.
    Started {
        /// Its positions.
        prompt_tokens: usize,
    },
    /// New answer text (held back while it could be the start of a stop string).
    Text(String),
    /// The answer is complete.
    Done(Completion),
    /// The request failed.
    Error(ApiError),
}

/// A finished answer.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The answer, special tokens skipped, cut before a stop string.
    pub text: String,
    /// Generated ids.
    pub ids: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Timings and cache figures.
    pub stats: RequestStats,
}

/// What the handlers need to know about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// `FalconMamba` or `Jamba`.
    pub family: &'static str,
    /// The prompt limit the engine applies.
    pub max_context: Option<usize>,
}

/// The handle of a running engine: send [`Job`]s, read [`Metrics`]. Dropping every handle (and the
/// routers holding clones of its sender) ends the engine thread once its sequences are done.
#[derive(Debug)]
pub struct Engine {
    /// The request queue.
    pub jobs: mpsc::Sender<Job>,
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// The model.
    pub info: ModelInfo,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine thread, loads the model on it with `load`, and returns once it is loaded.
    pub fn spawn<B, F>(load: F, config: EngineConfig) -> Result<Self, ServerError>
    where
        B: SsmBackend,
        F: FnOnce() -> Result<Viper<B>, ModelError> + Send + 'static,
    {
        config.validate()?;
        let (jobs, rx) = mpsc::channel(config.queue);
        let metrics = Arc::new(Metrics::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_metrics = metrics.clone();
        let thread = std::thread::Builder::new().name("viper-engine".into()).spawn(move || {
            let viper = match load() {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let max_context = config.max_context.or(viper.model.config.llava.tokenizer_model_max_length);
            let family = if viper.model.new_cache(1).batches() { "FalconMamba" } else { "Jamba" };
            let _ = ready_tx.send(Ok(ModelInfo { family, max_context }));
            Scheduler::new(&viper, config, max_context, &thread_metrics).run(rx);
        })?;
        let info = match ready_rx.recv() {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => return Err(ServerError::Load(e)),
            Err(_) => return Err(ServerError::Load("the engine thread ended while loading".into())),
        };
        Ok(Self { jobs, metrics, info, thread: Some(thread) })
    }

    /// Closes the queue and waits for the engine to finish its sequences.
    pub fn shutdown(mut self) {
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.jobs, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prefill,
    Decode,
}

/// One request in flight.
struct Sequence<'v, B: SsmBackend> {
    events: mpsc::UnboundedSender<Event>,
    generation: GenerationConfig,
    cache: Option<ViperCache<B>>,
    /// `[1, L - embeds_start, H]`: the prompt positions from `embeds_start` on.
    embeds: Tensor<B, 3>,
    embeds_start: usize,
    /// Positions prefilled so far, and the prompt's.
    done: usize,
    total: usize,
    /// End of the cached prefix (0: none) and its key when it is to be stored after prefill.
    prefix_end: usize,
    store: Option<PrefixKey>,
    phase: Phase,
    sampler: Sampler,
    stream: TextStream<'v>,
    ids: Vec<u32>,
    /// The streamed text so far, and how much of it was sent.
    text: String,
    sent: usize,
    /// The last sampled id, fed at the next decode step.
    next: u32,
    stats: RequestStats,
    admitted: Instant,
}

struct Scheduler<'v, B: SsmBackend> {
    viper: &'v Viper<B>,
    config: EngineConfig,
    max_context: Option<usize>,
    eos: Vec<u32>,
    cache: StateCache<B>,
    metrics: &'v Metrics,
    seqs: Vec<Sequence<'v, B>>,
}

/// Model errors a client caused (bad prompt) are 400s; the rest are the server's.
fn model_error(e: ModelError) -> ApiError {
    match e {
        ModelError::Input(_) | ModelError::Prompt(_) | ModelError::Image(_) => ApiError::invalid(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl<'v, B: SsmBackend> Scheduler<'v, B> {
    fn new(viper: &'v Viper<B>, config: EngineConfig, max_context: Option<usize>, metrics: &'v Metrics) -> Self {
        let eos = viper.default_generation().eos_token_ids;
        let cache = StateCache::new(config.state_cache_bytes);
        Self { viper, config, max_context, eos, cache, metrics, seqs: Vec::new() }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut open = true;
        loop {
            if self.seqs.is_empty() {
                match rx.blocking_recv() {
                    Some(job) => self.admit(job),
                    None => break,
                }
            }
            while open && self.seqs.len() < self.config.max_batch {
                match rx.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            self.drop_cancelled();
            self.prefill_chunk();
            self.decode_step();
            self.set_active();
            if !open && self.seqs.is_empty() {
                break;
            }
        }
        log::info!("engine stopped");
    }

    fn set_active(&self) {
        self.metrics.active.store(self.seqs.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn drop_cancelled(&mut self) {
        let before = self.seqs.len();
        self.seqs.retain(|s| !s.events.is_closed());
        let gone = before - self.seqs.len();
        if gone > 0 {
            log::info!("{gone} sequence(s) dropped: the client went away");
            Metrics::add(&self.metrics.cancelled, gone as u64);
        }
    }

    fn admit(&mut self, job: Job) {
        if job.events.is_closed() {
            // The client left while its request waited: nothing to encode.
            Metrics::add(&self.metrics.cancelled, 1);
            return;
        }
        Metrics::add(&self.metrics.requests, 1);
        let events = job.events.clone();
        match self.prepare(job) {
            Ok(seq) => {
                let _ = seq.events.send(Event::Started { prompt_tokens: seq.total });
                self.seqs.push(seq);
            }
            Err(e) => {
                Metrics::add(&self.metrics.failed, 1);
                let _ = events.send(Event::Error(e));
            }
        }
        self.set_active();
    }

    /// Renders and tokenizes the conversation, finds its prefix, and embeds what must be prefilled.
    fn prepare(&mut self, job: Job) -> Result<Sequence<'v, B>, ApiError> {
        let admitted = Instant::now();
        let viper = self.viper;
        let special = viper.tokenizer.special_tokens();
        // What `Viper::prepare` does, so the ids are those of `viper generate` / `viper chat`.
        let prompt = viper.template.render(&job.conversation, special, true).map_err(|e| model_error(e.into()))?;
        let ids = viper.tokenizer.encode_prompt(&prompt).map_err(|e| model_error(e.into()))?.ids;
        let images: Vec<&RgbImage> = job.conversation.images().collect();
        let prefix_ids = self.prefix_len(&job.conversation, &ids);
        let key = (self.config.state_cache_bytes > 0 && prefix_ids > 0)
            .then(|| PrefixKey { ids: ids[..prefix_ids].to_vec(), images: job.image_hash });
        let hit = key.as_ref().and_then(|k| self.cache.get(k)).map(|e| (e.cache.clone(), e.positions));
        let mut stats = RequestStats {
            queue_ms: ms(admitted.duration_since(job.received)),
            prompt_ids: job.return_token_ids.then(|| ids.clone()),
            ..RequestStats::default()
        };
        let (cache, embeds, embeds_start, total, prefix_end, store) = match (hit, key) {
            (Some((cache, positions)), _) => {
                // The rest holds no image: every image is in the prefix.
                let rest = &ids[prefix_ids..];
                let total = positions + rest.len();
                self.check_context(total)?;
                let embeds = viper.model.embed_prompt(rest, &[]).map_err(model_error)?;
                Metrics::add(&self.metrics.cache_hits, 1);
                Metrics::add(&self.metrics.cache_positions_saved, positions as u64);
                stats.cache_hit = true;
                stats.cached_positions = positions;
                (cache, embeds, positions, total, positions, None)
            }
            (None, key) => {
                if key.is_some() {
                    Metrics::add(&self.metrics.cache_misses, 1);
                }
                // The text alone may be too long already: refuse before the images are encoded.
                self.check_context(ids.iter().filter(|&&id| id != IMAGE_TOKEN_INDEX).count())?;
                let prepared = viper.embed_ids(&ids, &images).map_err(model_error)?;
                let rows: Vec<usize> = prepared
                    .encoding
                    .as_ref()
                    .map(|e| e.image_features.iter().map(|f| f.dims()[0]).collect())
                    .unwrap_or_default();
                let positions = |ids: &[i64]| {
                    ids.iter().filter(|&&id| id != IMAGE_TOKEN_INDEX).count() + rows.iter().sum::<usize>()
                };
                let total = positions(&ids);
                self.check_context(total)?;
                let prefix_end = if prefix_ids > 0 { positions(&ids[..prefix_ids]) } else { 0 };
                (viper.model.new_cache(1), prepared.inputs_embeds, 0, total, prefix_end, key)
            }
        };
        stats.prompt_positions = total;
        stats.prepare_ms = ms(admitted.elapsed());
        let mut generation = job.generation;
        generation.eos_token_ids = self.eos.clone();
        Ok(Sequence {
            events: job.events,
            sampler: Sampler::new(generation.sampling.clone()),
            generation,
            cache: Some(cache),
            embeds,
            embeds_start,
            done: embeds_start,
            total,
            prefix_end,
            store,
            phase: Phase::Prefill,
            stream: viper.tokenizer.stream(true),
            ids: Vec::new(),
            text: String::new(),
            sent: 0,
            next: 0,
            stats,
            admitted,
        })
    }

    fn check_context(&self, total: usize) -> Result<(), ApiError> {
        match self.max_context {
            Some(max) if total > max => Err(ApiError::invalid(format!(
                "the prompt is {total} positions long (images counted as their features), beyond this model's context limit of {max}"
            ))
            .with_param("messages")
            .with_code("context_length_exceeded")),
            _ => Ok(()),
        }
    }

    /// Ids of the prefix whose state is kept: up to and including the last image; without images,
    /// what the conversation without its last turn renders to (the system prompt and earlier turns),
    /// as far as its ids agree with the prompt's. Never the whole prompt.
    fn prefix_len(&self, conversation: &Conversation<RgbImage>, ids: &[i64]) -> usize {
        let len = match ids.iter().rposition(|&id| id == IMAGE_TOKEN_INDEX) {
            Some(last_image) => last_image + 1,
            None => {
                let mut earlier = Conversation::<()> { system: conversation.system.clone(), turns: Vec::new() };
                earlier.turns = conversation.turns[..conversation.turns.len().saturating_sub(1)]
                    .iter()
                    .map(|t| viper_chat_template::Turn { role: t.role, text: t.text.clone(), images: Vec::new() })
                    .collect();
                let special = self.viper.tokenizer.special_tokens();
                let prefix = self
                    .viper
                    .template
                    .render(&earlier, special, false)
                    .ok()
                    .and_then(|p| self.viper.tokenizer.encode_prompt(&p).ok())
                    .map(|t| t.ids)
                    .unwrap_or_default();
                prefix.iter().zip(ids).take_while(|(a, b)| a == b).count()
            }
        };
        if len >= ids.len() {
            0
        } else {
            len
        }
    }

    /// One chunk of the oldest prefilling sequence (`seqs` is in admission order: sequences are
    /// removed with `remove`, never `swap_remove`, so a newer one cannot overtake and starve it).
    fn prefill_chunk(&mut self) {
        let chunk = self.config.prefill_chunk;
        let Some(i) = self.seqs.iter().position(|s| s.phase == Phase::Prefill) else { return };
        let viper = self.viper;
        let model = &viper.model;
        let seq = &mut self.seqs[i];
        let piece_end = if seq.done < seq.prefix_end { seq.prefix_end } else { seq.total };
        let end = piece_end.min(seq.done + chunk);
        let input = seq.embeds.clone().narrow(1, seq.done - seq.embeds_start, end - seq.done);
        let mut cache = seq.cache.take().expect("a sequence holds its cache between steps");
        let logits = model.forward(input, &mut cache, Logits::Last);
        Metrics::add(&self.metrics.prefill_positions, (end - seq.done) as u64);
        seq.stats.prefill_positions += end - seq.done;
        seq.stats.prefill_chunks += 1;
        seq.done = end;
        if end == seq.prefix_end {
            if let Some(key) = seq.store.take() {
                let bytes = cache_bytes(&cache, model.dtype());
                let inserted = self.cache.insert(key, cache.clone(), end, bytes);
                Metrics::add(&self.metrics.cache_evictions, inserted.evicted as u64);
                self.metrics.cache_entries.store(self.cache.len() as u64, std::sync::atomic::Ordering::Relaxed);
                self.metrics.cache_bytes.store(self.cache.bytes() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let seq = &mut self.seqs[i];
        seq.cache = Some(cache);
        if end < seq.total {
            return;
        }
        seq.phase = Phase::Decode;
        match host_logits(logits) {
            Ok(mut row) => {
                seq.stats.ttft_ms = ms(seq.admitted.elapsed());
                if let Some(finish) = self.sample(i, &mut row) {
                    self.finish(i, finish);
                }
            }
            Err(e) => self.fail(i, e),
        }
    }

    /// One decode step for every decoding sequence: one batch for FalconMamba, one by one for Jamba.
    fn decode_step(&mut self) {
        let ready: Vec<usize> = (0..self.seqs.len()).filter(|&i| self.seqs[i].phase == Phase::Decode).collect();
        if ready.is_empty() {
            return;
        }
        let batches = self.seqs[ready[0]].cache.as_ref().is_some_and(ViperCache::batches);
        let groups: Vec<Vec<usize>> =
            if batches { vec![ready.clone()] } else { ready.iter().map(|&i| vec![i]).collect() };
        let viper = self.viper;
        let model = &viper.model;
        let device = model.device().clone();
        let mut rows: Vec<(usize, Result<Vec<f32>, ApiError>)> = Vec::new();
        for group in groups {
            let n = group.len();
            let ids: Vec<i64> = group.iter().map(|&i| i64::from(self.seqs[i].next)).collect();
            let caches: Vec<ViperCache<B>> = group
                .iter()
                .map(|&i| self.seqs[i].cache.take().expect("a sequence holds its cache between steps"))
                .collect();
            let mut cache = if n == 1 {
                caches.into_iter().next().expect("one cache")
            } else {
                ViperCache::cat(caches).expect("FalconMamba caches stack")
            };
            let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, 1]), &device);
            let logits = model.forward(model.embed(input), &mut cache, Logits::Last);
            let parts = if n == 1 { vec![cache] } else { cache.split(&vec![1; n]) };
            for (&i, part) in group.iter().zip(parts) {
                self.seqs[i].cache = Some(part);
                self.seqs[i].stats.max_batch = self.seqs[i].stats.max_batch.max(n);
            }
            Metrics::add(&self.metrics.decode_steps, 1);
            Metrics::add(&self.metrics.decode_sequences, n as u64);
            for seq in self.seqs.iter_mut().filter(|s| s.phase == Phase::Prefill) {
                seq.stats.decoded_during_prefill += n;
            }
            match host_logits(logits) {
                Ok(all) => {
                    let v = all.len() / n;
                    for (k, &i) in group.iter().enumerate() {
                        rows.push((i, Ok(all[k * v..(k + 1) * v].to_vec())));
                    }
                }
                Err(e) => rows.extend(group.iter().map(|&i| (i, Err(e.clone())))),
            }
        }
        let mut ended: Vec<(usize, Result<FinishReason, ApiError>)> = Vec::new();
        for (i, row) in rows {
            match row {
                Ok(mut row) => {
                    if let Some(finish) = self.sample(i, &mut row) {
                        ended.push((i, Ok(finish)));
                    }
                }
                Err(e) => ended.push((i, Err(e))),
            }
        }
        // Remove from the back so the indices stay valid.
        ended.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, result) in ended {
            match result {
                Ok(finish) => self.finish(i, finish),
                Err(e) => self.fail(i, e),
            }
        }
    }

    /// Samples the next token of sequence `i` from `logits`, streams its text, and says whether the
    /// sequence ended (the stop rules of [`viper_model::generate`]).
    fn sample(&mut self, i: usize, logits: &mut [f32]) -> Option<FinishReason> {
        let seq = &mut self.seqs[i];
        let id = seq.sampler.sample(logits, &seq.ids);
        seq.ids.push(id);
        seq.next = id;
        Metrics::add(&self.metrics.generated_tokens, 1);
        match seq.stream.step(id) {
            Ok(Some(piece)) => seq.text.push_str(&piece),
            Ok(None) => {}
            Err(e) => log::warn!("streaming decode failed: {e}"),
        }
        let g = &seq.generation;
        let mut finish = None;
        if !g.ignore_eos {
            if g.eos_token_ids.contains(&id) {
                finish = Some(FinishReason::Eos);
            } else if g.stop_strings.iter().any(|s| seq.text.contains(s.as_str())) {
                finish = Some(FinishReason::StopString);
            }
        }
        if finish.is_none() && seq.ids.len() >= g.max_new_tokens {
            finish = Some(FinishReason::Length);
        }
        if finish.is_none() {
            // Hold back what could be the start of a stop string.
            let hold = g.stop_strings.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
            let mut upto = seq.text.len().saturating_sub(hold).max(seq.sent);
            while !seq.text.is_char_boundary(upto) {
                upto -= 1;
            }
            if upto > seq.sent {
                let _ = seq.events.send(Event::Text(seq.text[seq.sent..upto].to_string()));
                seq.sent = upto;
            }
        }
        finish
    }

    /// Sends the final text and the completion of sequence `i` and removes it.
    fn finish(&mut self, i: usize, finish: FinishReason) {
        let seq = self.seqs.remove(i);
        let tokenizer = &self.viper.tokenizer;
        let mut text = match tokenizer.decode(&seq.ids, true) {
            Ok(t) => t,
            Err(e) => {
                Metrics::add(&self.metrics.failed, 1);
                self.set_active();
                let _ = seq.events.send(Event::Error(ApiError::internal(e.to_string())));
                return;
            }
        };
        if finish == FinishReason::StopString {
            let cut = seq.generation.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min();
            text.truncate(cut.unwrap_or(text.len()));
        }
        // The rest of the answer past what was streamed.
        let sent = &seq.text[..seq.sent];
        let rest = text.strip_prefix(sent).map(str::to_string).unwrap_or_else(|| {
            let mut cut = seq.sent.min(text.len());
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text[cut..].to_string()
        });
        if !rest.is_empty() {
            let _ = seq.events.send(Event::Text(rest));
        }
        let mut stats = seq.stats;
        stats.total_ms = ms(seq.admitted.elapsed());
        if stats.prompt_ids.is_some() {
            stats.completion_ids = Some(seq.ids.clone());
        }
        let usage = Usage {
            prompt_tokens: seq.total,
            completion_tokens: seq.ids.len(),
            total_tokens: seq.total + seq.ids.len(),
        };
        Metrics::add(&self.metrics.completed, 1);
        self.set_active();
        let _ = seq.events.send(Event::Done(Completion { text, ids: seq.ids, finish, usage, stats }));
    }

    fn fail(&mut self, i: usize, e: ApiError) {
        let seq = self.seqs.remove(i);
        Metrics::add(&self.metrics.failed, 1);
        self.set_active();
        let _ = seq.events.send(Event::Error(e));
    }
}

fn host_logits<B: Backend>(logits: Tensor<B, 3>) -> Result<Vec<f32>, ApiError> {
    logits.into_data().convert::<f32>().into_vec().map_err(|e| ApiError::internal(format!("cannot read logits: {e:?}")))
}

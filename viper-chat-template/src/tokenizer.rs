//! The checkpoint tokenizer: `tokenizer.json` through the `tokenizers` crate, special tokens from
//! `tokenizer_config.json`, and upstream's `tokenizer_image_token` (docs/spec.md §5.4).

use std::path::Path;

use tokenizers::processors::template::TemplateProcessing;

use crate::config::{SpecialTokens, TokenizerConfig};
use crate::error::{Error, Result};
use crate::{IMAGE_TOKEN, IMAGE_TOKEN_INDEX};

/// Prompt ids with image placeholders, as returned by [`Tokenizer::encode_prompt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTokens {
    /// Token ids; every image is one [`IMAGE_TOKEN_INDEX`] (-200).
    pub ids: Vec<i64>,
    /// Index in `ids` of each image placeholder, in order.
    pub image_positions: Vec<usize>,
}

/// A checkpoint's tokenizer, encoding and decoding like transformers 4.45's
/// `AutoTokenizer.from_pretrained(dir)` (a `PreTrainedTokenizerFast`).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    clean_up_tokenization_spaces: bool,
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` plus the optional `tokenizer_config.json` and
    /// `special_tokens_map.json`.
    ///
    /// For the classes whose transformers constructor rebuilds the post-processor (`Llama`,
    /// `CodeLlama`, `Gemma`, `Cohere`, `GPTNeoX` tokenizers), the post-processor is rebuilt the same
    /// way from `add_bos_token` / `add_eos_token`, whatever `tokenizer.json` says.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        let json = crate::error::read_file(path.clone(), viper_io::MAX_TOKENIZER_BYTES)?;
        let mut inner =
            guarded(|| format!("cannot parse {}", path.display()), || tokenizers::Tokenizer::from_bytes(json))?;
        let config = TokenizerConfig::read(dir)?;

        if let Some((add_bos, add_eos)) = config.post_processor {
            let processor = template_processing(&inner, &config.special, add_bos, add_eos)
                .map_err(|message| Error::Config { path: dir.join("tokenizer_config.json"), message })?;
            log::debug!("rebuilt the post-processor: add_bos_token={add_bos}, add_eos_token={add_eos}");
            inner.with_post_processor(Some(processor));
        }

        let tokenizer =
            Self { inner, special: config.special, clean_up_tokenization_spaces: config.clean_up_tokenization_spaces };
        for (what, name) in
            [("bos", &tokenizer.special.bos), ("eos", &tokenizer.special.eos), ("pad", &tokenizer.special.pad)]
        {
            if let Some(name) = name.as_deref().filter(|n| tokenizer.token_to_id(n).is_none()) {
                log::warn!("{what} token {name:?} of {} is not in the vocabulary", dir.display());
            }
        }
        Ok(tokenizer)
    }

    /// The special-token names, as passed to chat templates.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// The id of `token` (vocabulary or added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id of the BOS token, if the checkpoint names one that exists.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.id_of(&self.special.bos)
    }

    /// The id of the EOS token, if the checkpoint names one that exists.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.id_of(&self.special.eos)
    }

    /// The id of the padding token, if the checkpoint names one that exists.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.id_of(&self.special.pad)
    }

    fn id_of(&self, token: &Option<String>) -> Option<u32> {
        self.token_to_id(token.as_deref()?)
    }

    /// Vocabulary size including added tokens (Python's `len(tokenizer)`), which is what
    /// upstream resizes the embeddings to.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes `text`; `add_special_tokens` applies the post-processor (e.g. a BOS), like
    /// `tokenizer(text, add_special_tokens=…).input_ids`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding =
            guarded(|| format!("cannot encode {:?}", Excerpt(text)), || self.inner.encode(text, add_special_tokens))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Upstream `tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX)`, exactly:
    ///
    /// 1. split `prompt` on `<image>` (k markers give k + 1 chunks, possibly empty);
    /// 2. encode every chunk with special tokens;
    /// 3. if chunk 0 starts with the BOS id, emit that BOS once and drop the **first id of every
    ///    chunk** (meant to drop auto-added BOS ids; a chunk without one loses a real token —
    ///    reproduced, and logged as a warning);
    /// 4. join the chunks with one [`IMAGE_TOKEN_INDEX`] each.
    pub fn encode_prompt(&self, prompt: &str) -> Result<PromptTokens> {
        let chunks = prompt.split(IMAGE_TOKEN).map(|chunk| self.encode(chunk, true)).collect::<Result<Vec<_>>>()?;
        let bos = self.bos_token_id();
        let first = chunks.first().and_then(|c| c.first()).copied();
        let offset = usize::from(first.is_some() && first == bos);

        let mut ids = Vec::new();
        if offset == 1 {
            ids.extend(first.map(i64::from));
        }
        let mut image_positions = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            if i > 0 {
                image_positions.push(ids.len());
                ids.push(IMAGE_TOKEN_INDEX);
                if offset == 1 && chunk.first().is_some_and(|&id| Some(id) != bos) {
                    log::warn!(
                        "tokenizer_image_token drops token {} after image {i}: the prompt starts \
                         with BOS but this chunk does not (upstream behaviour)",
                        chunk[0]
                    );
                }
            }
            ids.extend(chunk.iter().skip(offset).map(|&id| i64::from(id)));
        }
        Ok(PromptTokens { ids, image_positions })
    }

    /// Decodes `ids` like `tokenizer.decode(ids, skip_special_tokens=…)`, including the
    /// checkpoint's `clean_up_tokenization_spaces`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self.decode_raw(ids, skip_special_tokens)?;
        Ok(if self.clean_up_tokenization_spaces { clean_up_tokenization(&text) } else { text })
    }

    fn decode_raw(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        guarded(|| format!("cannot decode {} ids", ids.len()), || self.inner.decode(ids, skip_special_tokens))
    }

    /// An incremental decoder for streaming generated tokens.
    pub fn stream(&self, skip_special_tokens: bool) -> TextStream<'_> {
        TextStream { tokenizer: self, skip_special_tokens, ids: Vec::new(), prefix: String::new(), pending: 0 }
    }
}

/// Runs a call into `tokenizers`, its error or any panic inside it (its regex engine, Oniguruma,
/// panics when a search fails, e.g. past its retry limit on a pathological pre-tokenizer pattern)
/// becoming a typed error with `context`.
fn guarded<T>(context: impl Fn() -> String, call: impl FnOnce() -> tokenizers::Result<T>) -> Result<T> {
    // Unwind safety: a panic leaves at most a poisoned cache lock, which `tokenizers` treats as a miss.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Error::Tokenizer { context: context(), source }),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic without a message".into());
            Err(Error::TokenizerPanic { context: context(), message })
        }
    }
}

/// A text shown in an error message: the first 100 characters and the length of the rest.
struct Excerpt<'a>(&'a str);

impl std::fmt::Debug for Excerpt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(100) {
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
            None => write!(f, "{:?}", self.0),
        }
    }
}

/// transformers' `update_post_processor`: single `[bos:0] $A:0 [eos:0]`, pair the same followed
/// by `[bos:1] $B:1 [eos:1]`, each special token only if configured.
fn template_processing(
    tokenizer: &tokenizers::Tokenizer,
    special: &SpecialTokens,
    add_bos: bool,
    add_eos: bool,
) -> std::result::Result<TemplateProcessing, String> {
    let token = |wanted: bool, what: &str, name: &Option<String>| {
        if !wanted {
            return Ok(None);
        }
        let name = name.as_deref().ok_or_else(|| format!("add_{what}_token is true but there is no {what}_token"))?;
        let id =
            tokenizer.token_to_id(name).ok_or_else(|| format!("{what}_token {name:?} is not in the vocabulary"))?;
        Ok::<_, String>(Some((name.to_owned(), id)))
    };
    let (bos, eos) = (token(add_bos, "bos", &special.bos)?, token(add_eos, "eos", &special.eos)?);
    let sequence = |seq: &str, type_id: u32| -> Vec<String> {
        let piece = |t: &Option<(String, u32)>| t.as_ref().map(|(name, _)| format!("{name}:{type_id}"));
        [piece(&bos), Some(format!("${seq}:{type_id}")), piece(&eos)].into_iter().flatten().collect()
    };
    TemplateProcessing::builder()
        .try_single(sequence("A", 0))?
        .try_pair([sequence("A", 0), sequence("B", 1)].concat())?
        .special_tokens(bos.iter().chain(&eos).cloned().collect::<Vec<_>>())
        .build()
        .map_err(|e| e.to_string())
}

/// transformers' `clean_up_tokenization`: removes spaces before punctuation and contractions.
fn clean_up_tokenization(text: &str) -> String {
    [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ]
    .iter()
    .fold(text.to_owned(), |s, (from, to)| s.replace(from, to))
}

/// Turns generated ids into text chunks as they arrive, never splitting a multi-byte UTF-8
/// character: while the decoded text ends in U+FFFD (an incomplete byte sequence) the ids are
/// buffered. Concatenating every chunk and [`TextStream::finish`] gives
/// [`Tokenizer::decode`] of all ids (without `clean_up_tokenization_spaces`), except where
/// byte-fallback pieces rewrite already emitted characters (see `new_text`).
///
/// Each step decodes only the ids of the previous chunk plus the new ones, so the context
/// that decoders such as Metaspace need is kept without re-decoding the whole text.
#[derive(Debug)]
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    /// The ids of the last emitted chunk followed by the `pending` ids not yet emitted.
    ids: Vec<u32>,
    /// Decoded text of the last emitted chunk's ids.
    prefix: String,
    pending: usize,
}

impl TextStream<'_> {
    /// Adds one id; returns the new text it completes, or `None` while it must wait.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        self.pending += 1;
        let text = self.tokenizer.decode_raw(&self.ids, self.skip_special_tokens)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let chunk = self.new_text(&text);
        self.ids.drain(..self.ids.len() - self.pending);
        self.pending = 0;
        self.prefix = self.tokenizer.decode_raw(&self.ids, self.skip_special_tokens)?;
        Ok(Some(chunk))
    }

    /// Returns what is still buffered (possibly ending in U+FFFD), or `None` if nothing is.
    pub fn finish(self) -> Result<Option<String>> {
        let text = self.tokenizer.decode_raw(&self.ids, self.skip_special_tokens)?;
        let chunk = self.new_text(&text);
        Ok(Some(chunk).filter(|c| !c.is_empty()))
    }

    /// The part of `text` after the already emitted prefix. Byte-fallback pieces can make a longer
    /// decode rewrite earlier characters; then, like transformers' `TextStreamer`, the text past the
    /// emitted length is taken as new (the full `decode` stays the source of truth).
    fn new_text(&self, text: &str) -> String {
        if let Some(rest) = text.strip_prefix(self.prefix.as_str()) {
            return rest.to_owned();
        }
        let mut cut = self.prefix.len().min(text.len());
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        log::debug!("streaming decode rewrote emitted text ({:?} → {text:?})", self.prefix);
        text[cut..].to_owned()
    }
}

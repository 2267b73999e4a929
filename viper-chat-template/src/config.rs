//! `tokenizer_config.json`, `special_tokens_map.json` and `chat_template.jinja`, read the way
//! transformers 4.45 `AutoTokenizer.from_pretrained` reads them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{read_file, Error, Result};

/// Names of the special tokens a checkpoint declares; the chat template sees them as
/// `bos_token`, `eos_token`, `pad_token`, `unk_token` and `additional_special_tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning-of-sequence token, e.g. `<|startoftext|>`.
    pub bos: Option<String>,
    /// End-of-sequence token, e.g. `<|im_end|>`.
    pub eos: Option<String>,
    /// Padding token.
    pub pad: Option<String>,
    /// Unknown-token placeholder.
    pub unk: Option<String>,
    /// Further special tokens (`additional_special_tokens`).
    pub additional: Vec<String>,
}

/// A token written either as a string or as a serialised `AddedToken` object.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenName {
    Plain(String),
    Added { content: String },
}

impl From<TokenName> for String {
    fn from(t: TokenName) -> Self {
        match t {
            TokenName::Plain(s) | TokenName::Added { content: s } => s,
        }
    }
}

/// `chat_template` is a string or a list of `{name, template}` objects.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawChatTemplate {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// The fields of both JSON files that matter here; everything else is ignored.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConfig {
    bos_token: Option<TokenName>,
    eos_token: Option<TokenName>,
    pad_token: Option<TokenName>,
    unk_token: Option<TokenName>,
    additional_special_tokens: Option<Vec<TokenName>>,
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
    tokenizer_class: Option<String>,
    clean_up_tokenization_spaces: Option<bool>,
    chat_template: Option<RawChatTemplate>,
    added_tokens_decoder: Option<serde::de::IgnoredAny>,
}

impl RawConfig {
    /// Parses `path`, or returns the empty config when the file does not exist.
    fn read_optional(path: PathBuf) -> Result<Self> {
        match read_file(path.clone(), viper_io::MAX_CONFIG_BYTES) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| Error::Json { path, source }),
            Err(Error::MissingFile { path }) => {
                log::debug!("{} not found, using defaults", path.display());
                Ok(Self::default())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves the special-token names out.
    fn take_special(&mut self) -> SpecialTokens {
        let name = |t: &mut Option<TokenName>| t.take().map(String::from);
        SpecialTokens {
            bos: name(&mut self.bos_token),
            eos: name(&mut self.eos_token),
            pad: name(&mut self.pad_token),
            unk: name(&mut self.unk_token),
            additional: self
                .additional_special_tokens
                .take()
                .unwrap_or_default()
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

impl SpecialTokens {
    /// Each token of `self`, or of `fallback` where `self` has none.
    fn or(self, fallback: SpecialTokens) -> SpecialTokens {
        SpecialTokens {
            bos: self.bos.or(fallback.bos),
            eos: self.eos.or(fallback.eos),
            pad: self.pad.or(fallback.pad),
            unk: self.unk.or(fallback.unk),
            additional: if self.additional.is_empty() { fallback.additional } else { self.additional },
        }
    }
}

/// What a checkpoint directory says about its tokenizer besides `tokenizer.json`.
#[derive(Debug)]
pub(crate) struct TokenizerConfig {
    pub special: SpecialTokens,
    /// `Some((add_bos, add_eos))` for the tokenizer classes whose transformers constructor
    /// replaces `tokenizer.json`'s post-processor (`update_post_processor`).
    pub post_processor: Option<(bool, bool)>,
    pub clean_up_tokenization_spaces: bool,
    /// The template source and where it came from.
    pub chat_template: Option<(String, String)>,
}

/// Tokenizer classes (without `Fast`) that rebuild the post-processor from `add_bos_token` /
/// `add_eos_token` in transformers 4.45, with their default `add_bos_token`.
const POST_PROCESSOR_CLASSES: [(&str, bool); 5] = [
    ("LlamaTokenizer", true),
    ("CodeLlamaTokenizer", true),
    ("GemmaTokenizer", true),
    ("CohereTokenizer", true),
    ("GPTNeoXTokenizer", false),
];

impl TokenizerConfig {
    /// Reads the optional `tokenizer_config.json`, `special_tokens_map.json` and
    /// `chat_template.jinja` of `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let mut config = RawConfig::read_optional(config_path.clone())?;
        // transformers reads special_tokens_map.json only for legacy configs (no
        // `added_tokens_decoder`), and then lets it override tokenizer_config.json.
        let special = if config.added_tokens_decoder.is_some() {
            config.take_special()
        } else {
            let mut map = RawConfig::read_optional(dir.join("special_tokens_map.json"))?;
            map.take_special().or(config.take_special())
        };

        let post_processor = config.tokenizer_class.as_deref().and_then(|class| {
            let class = class.strip_suffix("Fast").unwrap_or(class);
            let (_, default_bos) = POST_PROCESSOR_CLASSES.iter().find(|(c, _)| *c == class)?;
            Some((config.add_bos_token.unwrap_or(*default_bos), config.add_eos_token.unwrap_or(false)))
        });

        let jinja_path = dir.join("chat_template.jinja");
        // `exists`, not `is_file`: a FIFO or directory in its place is an error, not silently skipped.
        let chat_template = if jinja_path.exists() {
            // newer transformers give this file precedence over tokenizer_config.json
            Some((read_file(jinja_path.clone(), viper_io::MAX_TEMPLATE_BYTES)?, jinja_path.display().to_string()))
        } else {
            let origin = config_path.display().to_string();
            match config.chat_template.take() {
                None => None,
                Some(RawChatTemplate::One(source)) => Some((source, origin)),
                Some(RawChatTemplate::Named(list)) => {
                    let default = list.into_iter().find(|t| t.name == "default");
                    let Some(t) = default else {
                        return Err(Error::Config {
                            path: config_path,
                            message: "chat_template lists named templates but none is named \"default\"".into(),
                        });
                    };
                    Some((t.template, format!("{origin} (\"default\")")))
                }
            }
        };

        Ok(Self {
            special,
            post_processor,
            clean_up_tokenization_spaces: config.clean_up_tokenization_spaces.unwrap_or(false),
            chat_template,
        })
    }
}

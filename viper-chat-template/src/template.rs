//! Jinja chat templates rendered like transformers' `apply_chat_template` (4.45), and the
//! built-in templates of upstream `conversation.py`.

use std::fmt::Write as _;
use std::path::Path;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Output, State, Value};
use serde::Serialize;

use crate::config::{SpecialTokens, TokenizerConfig};
use crate::conversation::Conversation;
use crate::error::{Error, Result};
use crate::IMAGE_TOKEN;

/// Conversation templates of upstream `conversation.py`, for checkpoints without a
/// `chat_template` of their own. Their Jinja sources live in `templates/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinTemplate {
    /// `system_falcon_mamba` (Viper-Mamba-7B): ChatML, docs/spec.md §5.2.
    SystemFalconMamba,
    /// `system_jamba` (Viper-Jamba-52B): AI21 Jamba-1.5, docs/spec.md §5.3.
    SystemJamba,
    /// LLaVA `plain`: messages separated by newlines (pre-training format).
    Plain,
    /// LLaVA `llava_v1`: Vicuna v1 `USER: … ASSISTANT:` format.
    LlavaV1,
    /// LLaVA `chatml_direct`: ChatML without newlines between messages.
    ChatmlDirect,
}

impl BuiltinTemplate {
    /// All built-in templates.
    pub const ALL: [Self; 5] =
        [Self::SystemFalconMamba, Self::SystemJamba, Self::Plain, Self::LlavaV1, Self::ChatmlDirect];

    /// The upstream `conv_templates` key, e.g. `"system_jamba"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::SystemFalconMamba => "system_falcon_mamba",
            Self::SystemJamba => "system_jamba",
            Self::Plain => "plain",
            Self::LlavaV1 => "llava_v1",
            Self::ChatmlDirect => "chatml_direct",
        }
    }

    /// Looks a template up by its upstream `conv_templates` key.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The system prompt upstream's `Conversation` object carries for this template.
    pub fn default_system(self) -> &'static str {
        match self {
            Self::SystemFalconMamba | Self::SystemJamba => crate::VIPER_SYSTEM_PROMPT,
            Self::Plain => "",
            Self::LlavaV1 => {
                "A chat between a curious human and an artificial intelligence assistant. \
                 The assistant gives helpful, detailed, and polite answers to the human's questions."
            }
            Self::ChatmlDirect => "Answer the questions.",
        }
    }

    /// The Jinja source of the template.
    pub fn source(self) -> &'static str {
        match self {
            Self::SystemFalconMamba => include_str!("../templates/system_falcon_mamba.jinja"),
            Self::SystemJamba => include_str!("../templates/system_jamba.jinja"),
            Self::Plain => include_str!("../templates/plain.jinja"),
            Self::LlavaV1 => include_str!("../templates/llava_v1.jinja"),
            Self::ChatmlDirect => include_str!("../templates/chatml_direct.jinja"),
        }
    }
}

/// Default instruction budget of one render ([`RenderBudget::fuel`]): a thousand-turn conversation
/// through the Jamba template uses well under a tenth of it, and it runs out in about a second.
pub const DEFAULT_TEMPLATE_FUEL: u64 = 10_000_000;

/// Default cap on a rendered prompt ([`RenderBudget::max_output_bytes`]), 16 MiB: millions of tokens.
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 16 << 20;

/// What one render of a [`ChatTemplate`] may spend, so that a hostile template (nested loops, a loop
/// printing a huge string) fails with a typed error instead of running for hours or filling memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderBudget {
    /// minijinja's fuel: roughly one unit per executed template instruction. Exhausting it is
    /// [`Error::TemplateBudget`].
    pub fuel: u64,
    /// Largest rendered prompt in bytes; more is [`Error::PromptTooLarge`].
    pub max_output_bytes: usize,
}

impl Default for RenderBudget {
    fn default() -> Self {
        Self { fuel: DEFAULT_TEMPLATE_FUEL, max_output_bytes: DEFAULT_MAX_PROMPT_BYTES }
    }
}

/// A compiled Jinja chat template.
///
/// The environment matches transformers' `apply_chat_template`: `trim_blocks` and
/// `lstrip_blocks` on, one trailing newline of the source dropped (`keep_trailing_newline`
/// off), loop controls, Python string/dict/list methods (`.strip()`, `.startswith()`,
/// `.items()`, …), Python's printing of `True`/`False`/`None`, `raise_exception(msg)`,
/// `strftime_now(fmt)`, `namespace` and a `tojson` that writes like Python's `json.dumps`
/// (no HTML escaping). Each render runs on a [`RenderBudget`] ([`RenderBudget::default`] unless
/// [`with_budget`](Self::with_budget) says otherwise).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
    budget: RenderBudget,
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names it in errors (a file path, a built-in name, …).
    pub fn new(source: impl Into<String>, origin: impl Into<String>) -> Result<Self> {
        let origin = origin.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let budget = RenderBudget::default();
        env.set_fuel(Some(budget.fuel));
        match env.add_template_owned(origin.clone(), source.into()) {
            Ok(()) => Ok(Self { env, origin, budget }),
            Err(source) => Err(Error::Template { template: origin, source }),
        }
    }

    /// A built-in template.
    pub fn builtin(template: BuiltinTemplate) -> Self {
        Self::new(template.source(), format!("builtin:{}", template.name()))
            .expect("built-in templates compile (checked by the tests)")
    }

    /// The checkpoint's own template: `chat_template.jinja` in `dir` if present, else the
    /// `chat_template` of `dir/tokenizer_config.json` (for the list form, the one named
    /// `"default"`). `Ok(None)` when the checkpoint has none.
    pub fn from_checkpoint(dir: impl AsRef<Path>) -> Result<Option<Self>> {
        TokenizerConfig::read(dir.as_ref())?.chat_template.map(|(source, origin)| Self::new(source, origin)).transpose()
    }

    /// The same template rendering on `budget`.
    pub fn with_budget(mut self, budget: RenderBudget) -> Self {
        self.env.set_fuel(Some(budget.fuel));
        self.budget = budget;
        self
    }

    /// What one render may spend.
    pub fn budget(&self) -> RenderBudget {
        self.budget
    }

    /// Where the template came from, as used in error messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Renders `conversation` like `tokenizer.apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=…)`. The messages are the system prompt (if any) followed by the
    /// turns, `{"role", "content"}` each; `special` provides `bos_token`, `eos_token`, ….
    ///
    /// Fails with [`Error::ImageCount`] when a user turn, or the rendered prompt, has a number of
    /// `<image>` markers different from its attached images, and with [`Error::TemplateBudget`] or
    /// [`Error::PromptTooLarge`] past the [`RenderBudget`].
    pub fn render<I>(
        &self,
        conversation: &Conversation<I>,
        special: &SpecialTokens,
        add_generation_prompt: bool,
    ) -> Result<String> {
        conversation.check_images()?;

        #[derive(Serialize)]
        struct Message<'a> {
            role: &'a str,
            content: &'a str,
        }
        let system = conversation.system.as_deref().map(|content| Message { role: "system", content });
        let turns = conversation.turns.iter().map(|t| Message { role: t.role.as_str(), content: &t.text });
        let messages: Vec<Message> = system.into_iter().chain(turns).collect();

        let mut ctx = vec![
            ("messages", Value::from_serialize(&messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        let tokens = [
            ("bos_token", &special.bos),
            ("eos_token", &special.eos),
            ("pad_token", &special.pad),
            ("unk_token", &special.unk),
        ];
        ctx.extend(tokens.into_iter().filter_map(|(k, v)| Some((k, Value::from(v.clone()?)))));
        if !special.additional.is_empty() {
            ctx.push(("additional_special_tokens", Value::from_serialize(&special.additional)));
        }

        let mut out = CappedOutput { bytes: Vec::new(), cap: self.budget.max_output_bytes, exceeded: false };
        let rendered = self
            .env
            .get_template(&self.origin)
            .and_then(|t| t.render_captured_to(Value::from_iter(ctx), &mut out).map(drop));
        if out.exceeded {
            return Err(Error::PromptTooLarge { template: self.origin.clone(), limit: self.budget.max_output_bytes });
        }
        rendered.map_err(|e| self.render_error(e))?;
        // minijinja writes whole `str` pieces
        let prompt = String::from_utf8(out.bytes).map_err(|e| Error::Template {
            template: self.origin.clone(),
            source: minijinja::Error::new(ErrorKind::BadSerialization, e.to_string()),
        })?;

        let markers = prompt.matches(IMAGE_TOKEN).count();
        let images = conversation.images().count();
        if markers != images {
            return Err(Error::ImageCount { location: format!("prompt rendered by {}", self.origin), markers, images });
        }
        Ok(prompt)
    }

    fn render_error(&self, e: minijinja::Error) -> Error {
        let template = self.origin.clone();
        let chain = || std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| e.source());
        if chain().filter_map(|e| e.downcast_ref::<minijinja::Error>()).any(|e| e.kind() == ErrorKind::OutOfFuel) {
            return Error::TemplateBudget { template, fuel: self.budget.fuel };
        }
        match chain().find_map(|e| e.downcast_ref::<TemplateException>()) {
            Some(TemplateException(message)) => Error::TemplateException { template, message: message.clone() },
            None => Error::Template { template, source: e },
        }
    }
}

/// The render's output, refusing to grow past `cap` bytes.
struct CappedOutput {
    bytes: Vec<u8>,
    cap: usize,
    exceeded: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > self.cap {
            self.exceeded = true;
            return Err(std::io::Error::other("the rendered prompt is too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Prints booleans and none the way Python does (`True`, `False`, `None`).
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), minijinja::Error> {
    let text = match (value.kind(), value.is_true()) {
        (ValueKind::Bool, true) => "True",
        (ValueKind::Bool, false) => "False",
        (ValueKind::None, _) => "None",
        _ => return minijinja::escape_formatter(out, state, value),
    };
    out.write_str(text).map_err(minijinja::Error::from)
}

/// The payload of `raise_exception`, recognised again in [`ChatTemplate::render`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TemplateException(String);

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(TemplateException(message)))
}

/// `datetime.now().strftime(format)` (local time).
fn strftime_now(format: &str) -> Result<String, minijinja::Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(format)).map_err(|_| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("invalid strftime format {format:?}"))
    })?;
    Ok(out)
}

/// Largest `tojson(indent=…)` accepted.
const MAX_TOJSON_INDENT: usize = 256;
/// Largest output of one `tojson` (the prompt cap's default): `tojson` of `tojson` doubles every
/// backslash, so a chain of them grows exponentially.
const MAX_TOJSON_BYTES: usize = DEFAULT_MAX_PROMPT_BYTES;

/// `json.dumps(value, ensure_ascii=False, indent=indent)`: Python's separators (`", "` and
/// `": "`, or `","` at line ends when indenting), no HTML escaping. Other keyword arguments of
/// transformers' `tojson` (`separators`, `sort_keys`, …) are rejected as unknown. An indent beyond
/// [`MAX_TOJSON_INDENT`] or an output beyond [`MAX_TOJSON_BYTES`] is an error.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    if let Some(n) = indent.filter(|&n| n > MAX_TOJSON_INDENT) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson indent {n} is beyond the limit of {MAX_TOJSON_INDENT}"),
        ));
    }
    let mut out = CappedOutput { bytes: Vec::new(), cap: MAX_TOJSON_BYTES, exceeded: false };
    let result = match indent {
        Some(n) => {
            let indent = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&indent);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, formatter))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonFormatter)),
    };
    if out.exceeded {
        let message = format!("tojson output is beyond the limit of {MAX_TOJSON_BYTES} bytes");
        return Err(minijinja::Error::new(ErrorKind::InvalidOperation, message));
    }
    result.map_err(|e| minijinja::Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    // serde_json writes valid UTF-8
    Ok(Value::from(String::from_utf8_lossy(&out.bytes).into_owned()))
}

/// serde_json formatter with Python's default `json.dumps` separators.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

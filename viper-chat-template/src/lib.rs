//! Conversation templates and `<image>`-aware prompt tokenisation for Viper
//! (Viper-Mamba-7B, Viper-Jamba-52B), mirroring upstream `viper/conversation.py` and
//! `viper/mm_utils.py::tokenizer_image_token` (docs/spec.md §5).
//!
//! Data flows one way: a [`Conversation`] is rendered by a [`ChatTemplate`] (the checkpoint's
//! own Jinja template, or a [`BuiltinTemplate`]) into a prompt string, which
//! [`Tokenizer::encode_prompt`] turns into ids with one [`IMAGE_TOKEN_INDEX`] per image.
//! Generated ids come back through [`Tokenizer::decode`] or a streaming [`TextStream`].
//!
//! ```no_run
//! use viper_chat_template::{BuiltinTemplate, ChatTemplate, Conversation, Tokenizer};
//!
//! # fn main() -> viper_chat_template::Result<()> {
//! let dir = "checkpoints/Viper-Jamba-52B";
//! let tokenizer = Tokenizer::from_dir(dir)?;
//! let template = ChatTemplate::from_checkpoint(dir)?
//!     .unwrap_or_else(|| ChatTemplate::builtin(BuiltinTemplate::SystemJamba));
//! let conv = Conversation::new()
//!     .with_system(viper_chat_template::VIPER_SYSTEM_PROMPT)
//!     .user_with_images("What is shown here?", ["photo.png"]);
//! let prompt = template.render(&conv, tokenizer.special_tokens(), true)?;
//! let tokens = tokenizer.encode_prompt(&prompt)?;
//! assert_eq!(tokens.image_positions.len(), 1);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod config;
mod conversation;
mod error;
mod template;
mod tokenizer;

pub use config::SpecialTokens;
pub use conversation::{Conversation, Role, Turn};
pub use error::{Error, Result};
pub use template::{BuiltinTemplate, ChatTemplate, RenderBudget, DEFAULT_MAX_PROMPT_BYTES, DEFAULT_TEMPLATE_FUEL};
pub use tokenizer::{PromptTokens, TextStream, Tokenizer};

/// The id standing for one image in prompt ids (upstream `constants.IMAGE_TOKEN_INDEX`).
pub const IMAGE_TOKEN_INDEX: i64 = -200;

/// The marker that places an image in a prompt (upstream `DEFAULT_IMAGE_TOKEN`).
pub const IMAGE_TOKEN: &str = "<image>";

/// The system prompt of upstream `system_falcon_mamba` and `system_jamba` (trailing space included).
pub const VIPER_SYSTEM_PROMPT: &str = "You are a helpful language and vision assistant. ";

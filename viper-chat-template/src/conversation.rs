//! A conversation: optional system prompt, user/assistant turns, images attached to user turns.

use crate::error::{Error, Result};
use crate::IMAGE_TOKEN;

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The person asking; may attach images.
    User,
    /// The model's reply.
    Assistant,
}

impl Role {
    /// The role name the chat template sees: `"user"` or `"assistant"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One message of a [`Conversation`].
#[derive(Debug, Clone, PartialEq)]
pub struct Turn<I> {
    /// Who speaks.
    pub role: Role,
    /// The message text exactly as the template receives it, `<image>` markers included.
    pub text: String,
    /// The images of this turn, in the order of its `<image>` markers.
    pub images: Vec<I>,
}

/// A chat as upstream `Conversation` keeps it, minus the template: the system prompt and the
/// turns. `I` is whatever the caller uses for an image (a decoded image, a path, `()`…); this
/// crate only counts them.
///
/// ```
/// use viper_chat_template::{BuiltinTemplate, Conversation};
///
/// let conv = Conversation::new()
///     .with_system(BuiltinTemplate::SystemJamba.default_system())
///     .user_with_images("What is in this picture?", ["cat.png"])
///     .assistant("A cat.")
///     .user("What colour is it?");
/// assert_eq!(conv.turns[0].text, "<image>\nWhat is in this picture?");
/// assert_eq!(conv.images().collect::<Vec<_>>(), [&"cat.png"]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation<I = ()> {
    /// The system prompt, rendered as a leading `{"role": "system"}` message when present.
    pub system: Option<String>,
    /// The turns in order.
    pub turns: Vec<Turn<I>>,
}

impl<I> Default for Conversation<I> {
    fn default() -> Self {
        Self { system: None, turns: Vec::new() }
    }
}

impl<I> Conversation<I> {
    /// An empty conversation without system prompt.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the system prompt.
    #[must_use]
    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// Appends a user turn without images; `text` is used verbatim.
    #[must_use]
    pub fn user(self, text: impl Into<String>) -> Self {
        self.user_inline_images(text, [])
    }

    /// Appends a user turn with `images`, prepending one `"<image>\n"` per image to `text` (the
    /// upstream README's `DEFAULT_IMAGE_TOKEN + "\n" + question`).
    #[must_use]
    pub fn user_with_images(self, text: impl Into<String>, images: impl IntoIterator<Item = I>) -> Self {
        let images: Vec<I> = images.into_iter().collect();
        let text = format!("{}{}", format!("{IMAGE_TOKEN}\n").repeat(images.len()), text.into());
        self.user_inline_images(text, images)
    }

    /// Appends a user turn whose `text` already holds one `<image>` marker per image, in order.
    #[must_use]
    pub fn user_inline_images(mut self, text: impl Into<String>, images: impl IntoIterator<Item = I>) -> Self {
        self.turns.push(Turn { role: Role::User, text: text.into(), images: images.into_iter().collect() });
        self
    }

    /// Appends an assistant reply.
    #[must_use]
    pub fn assistant(mut self, text: impl Into<String>) -> Self {
        self.turns.push(Turn { role: Role::Assistant, text: text.into(), images: Vec::new() });
        self
    }

    /// All images in prompt order (the order of their `<image>` markers).
    pub fn images(&self) -> impl Iterator<Item = &I> {
        self.turns.iter().flat_map(|t| &t.images)
    }

    /// Checks that every turn has as many `<image>` markers as images.
    pub fn check_images(&self) -> Result<()> {
        for (i, turn) in self.turns.iter().enumerate() {
            let markers = turn.text.matches(IMAGE_TOKEN).count();
            if markers != turn.images.len() {
                return Err(Error::ImageCount {
                    location: format!("turn {i} ({})", turn.role.as_str()),
                    markers,
                    images: turn.images.len(),
                });
            }
        }
        Ok(())
    }
}

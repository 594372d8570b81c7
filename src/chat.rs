//! Chat templates (Jinja, rendered with minijinja) and messages.
//!
//! A model's chat template turns a list of [`Message`]s into the prompt text it was trained
//! on. Templates come from the model (GGUF `tokenizer.chat_template`, `tokenizer_config.json`)
//! or are built in ([`ChatTemplate::named`]: `chatml`, `llama3`). They are rendered like
//! Hugging Face `transformers` does (`trim_blocks` and `lstrip_blocks` on, variables
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, the function
//! `raise_exception`), with Python string and dict methods (`.strip()`, `.startswith()`,
//! `.items()`, ...) from `minijinja-contrib`'s `pycompat`, plus `strftime_now` and `tojson`.
//!
//! # Template text and message content
//!
//! The rendered prompt must be tokenized in two ways: control tokens written by the template
//! (`<|im_start|>`) are control tokens, while the same strings typed in a message are plain
//! text. So [`ChatTemplate::render`] returns [`Segment`]s. Technique: before rendering, each
//! message's content is wrapped in the private-use characters U+E000 and U+E001; after
//! rendering, the output is split on them, and each marked stretch becomes a
//! [`Segment::Content`]. Messages that contain these two characters are rejected.
//!
//! Limit: a template that transforms the content acts on the wrapped text. Trimming
//! (`content | trim`, `.strip()`) leaves whitespace next to the markers in place, comparisons
//! like `content == ''` are false for empty messages, and a template that cuts the content
//! (slicing, `.split(...)[-1]`) can drop a marker: text whose marker pair is broken is treated
//! as template text (its control-token strings are then parsed as control tokens).
//!
//! [`encode_chat`] turns segments into ids.
//!
//! # Budgets
//!
//! A template from a model file (or any file) is code written by a stranger, so every
//! rendering runs with a [`Budget`]: minijinja's fuel (a cap on the steps it executes, so
//! endless and nested loops stop) and a cap on the rendered size. Fuel cannot bound memory: a
//! string doubled 30 times is 1 GiB after about a hundred steps, and minijinja has no memory
//! hook. So where a [`sandbox`] is enabled (the `morphkv` binary enables one), untrusted
//! templates render in a child process with an address-space limit, a CPU limit and a
//! wall-clock timeout; the built-in templates, our own code, always render in-process. Every
//! error names the template's [`TemplateSource`] and how to use a built-in template instead.
//!
//! The pieces: `template` (compiling, picking and rendering a template), `segments` (template
//! text versus message content, and encoding them), `render` (the minijinja environment and
//! its budgets, shared with the [`sandbox`]).

mod render;
pub mod sandbox;
mod segments;
mod template;

use serde::{Deserialize, Serialize};

pub(crate) use render::civil_from_days;
pub use sandbox::Sandbox;
pub use segments::{encode_chat, segments_to_string, Segment};
pub use template::{
    Budget, ChatTemplate, Renderer, TemplateSource, BUILTIN_TEMPLATES, DEFAULT_FUEL,
    DEFAULT_MAX_OUTPUT,
};

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The person chatting.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role's name as templates see it: `system`, `user` or `assistant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

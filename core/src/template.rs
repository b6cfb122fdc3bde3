//! The model's own Jinja chat template, rendered with minijinja.

use minijinja::{context, Environment};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Who says a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A message of `role` saying `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into() }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source` (Jinja, Hugging Face `chat_template` conventions).
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.add_template_owned(NAME, source.to_string()).map_err(|e| Error::Template(e.to_string()))?;
        Ok(ChatTemplate { env })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's reply
    /// starts.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(NAME).map_err(|e| Error::Template(e.to_string()))?;
        template
            .render(context! { messages => messages, add_generation_prompt => add_generation_prompt })
            .map_err(|e| Error::Template(e.to_string()))
    }
}

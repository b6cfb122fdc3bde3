//! Summarisation: a task prompt for the instruct model on top of chat + generation.

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::generate::{generate, Completion, GenerateParams};
use crate::session::Session;
use crate::template::{Message, Role};

const SYSTEM: &str = "You are a precise assistant that writes short, faithful summaries.";
const INSTRUCTION: &str = "Summarize the following text in a few sentences. Keep the key facts.";

/// The chat messages that ask the model to summarise `text`.
pub fn summary_messages(text: &str) -> Vec<Message> {
    vec![Message::new(Role::System, SYSTEM), Message::new(Role::User, format!("{INSTRUCTION}\n\n{}", text.trim()))]
}

/// Summarises `text` on `session` (which is reset first), streaming the summary to `on_text`.
///
/// The whole text must fit in the context together with `params.max_tokens` of summary;
/// otherwise [`Error::ContextOverflow`] (chunked summarisation of long documents is not done here).
pub fn summarize(
    session: &mut Session,
    text: &str,
    params: &GenerateParams,
    cancel: &CancelToken,
    on_text: &mut dyn FnMut(&str),
) -> Result<Completion> {
    if text.trim().is_empty() {
        return Err(Error::param("text", "nothing to summarise: the text is empty"));
    }
    let model = session.model().clone();
    let prompt = model.chat_template().render(&summary_messages(text), true)?;
    let ids = model.tokenizer().encode(&prompt)?;
    let needed = ids.len() + params.max_tokens;
    if needed > session.context_size() {
        return Err(Error::ContextOverflow { needed, limit: session.context_size() });
    }
    session.reset()?;
    generate(session, &ids, params, cancel, on_text)
}

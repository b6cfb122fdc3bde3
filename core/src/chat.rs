//! Multi-turn chat on one session, reusing the KV cache of earlier turns.

use crate::cancel::CancelToken;
use crate::error::Result;
use crate::generate::{generate, Completion, GenerateParams};
use crate::session::Session;
use crate::template::{Message, Role};

/// A conversation: its messages and the session that has evaluated them.
#[derive(Debug)]
pub struct Chat {
    session: Session,
    messages: Vec<Message>,
}

impl Chat {
    /// A conversation on `session` (which is reset), optionally starting with a system message.
    pub fn new(mut session: Session, system: Option<&str>) -> Result<Self> {
        session.reset()?;
        let messages = system.map(|s| vec![Message::new(Role::System, s)]).unwrap_or_default();
        Ok(Chat { session, messages })
    }

    /// The messages so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The underlying session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Sends a user message and generates the assistant's reply, streaming it to `on_text`.
    /// Only the tokens after the longest prefix already in the cache are evaluated. On error the
    /// conversation is left as it was before the call.
    pub fn send(
        &mut self,
        user: &str,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion> {
        self.messages.push(Message::new(Role::User, user));
        match self.reply(params, cancel, on_text) {
            Ok(done) => {
                self.messages.push(Message::new(Role::Assistant, done.text.clone()));
                Ok(done)
            }
            Err(e) => {
                self.messages.pop();
                Err(e)
            }
        }
    }

    fn reply(
        &mut self,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion> {
        let model = self.session.model().clone();
        let text = model.chat_template().render(&self.messages, true)?;
        let ids = model.tokenizer().encode(&text)?;
        let cached = self.session.tokens();
        let mut common = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        // At least one token must be evaluated to get next-token logits.
        common = common.min(ids.len().saturating_sub(1));
        self.session.check_fits(ids.len() - common)?;
        self.session.rewind(common)?;
        generate(&mut self.session, &ids[common..], params, cancel, on_text)
    }
}

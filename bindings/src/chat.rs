//! `ChatSession`: a multi-turn conversation that keeps its KV cache between turns.

use std::sync::{Arc, Mutex, TryLockError};

use pocketlm::{CancelToken, Chat, GenerateParams, Session};

use crate::error::PocketError;
use crate::records::{ChatMessage, Completion, GenerationParams};
use crate::stream::{run_blocking, spawn, GenerationHandle, GenerationListener};

/// A conversation. One reply at a time: sending while a reply is running is `InvalidState`.
/// A failed or cancelled turn leaves the conversation as it was (a cancelled reply is kept as
/// far as it got, like any other finished reply).
#[derive(uniffi::Object)]
pub struct ChatSession {
    chat: Mutex<Chat>,
}

impl ChatSession {
    pub(crate) fn new(session: Session, system: Option<&str>) -> Result<Self, PocketError> {
        Ok(ChatSession { chat: Mutex::new(Chat::new(session, system)?) })
    }

    fn turn(
        &self,
        message: &str,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<pocketlm::Completion, PocketError> {
        let mut chat = match self.chat.try_lock() {
            Ok(chat) => chat,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(PocketError::InvalidState { reason: "this chat is already replying".into() })
            }
        };
        Ok(chat.send(message, params, cancel, on_text)?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chat> {
        self.chat.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[uniffi::export]
impl ChatSession {
    /// Sends a user message and returns the assistant's reply, blocking until done. Only the new
    /// tokens are evaluated: earlier turns stay in the cache.
    pub fn send(&self, message: String, params: GenerationParams) -> Result<Completion, PocketError> {
        let params = params.to_core()?;
        run_blocking(|cancel, on_text| self.turn(&message, &params, cancel, on_text))
    }

    /// As `send`, streaming the reply to `listener` on a pocketlm thread.
    pub fn send_stream(
        self: Arc<Self>,
        message: String,
        params: GenerationParams,
        listener: Arc<dyn GenerationListener>,
    ) -> Result<Arc<GenerationHandle>, PocketError> {
        let params = params.to_core()?;
        spawn(listener, move |cancel, on_text| self.turn(&message, &params, cancel, on_text))
    }

    /// The conversation so far (system message first, if any). Waits for a running reply.
    pub fn messages(&self) -> Vec<ChatMessage> {
        self.lock().messages().iter().map(ChatMessage::from).collect()
    }

    /// Tokens held in this conversation's context.
    pub fn token_count(&self) -> u32 {
        self.lock().session().token_count() as u32
    }

    /// Bytes this conversation's KV cache holds (grows with its tokens; see `KvCache`).
    pub fn cache_bytes(&self) -> u64 {
        self.lock().session().cache_bytes() as u64
    }
}

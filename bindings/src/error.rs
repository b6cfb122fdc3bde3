//! The one public error of the bindings: a small, stable set of kinds mapped from the engine's
//! detailed [`pocketlm::Error`] (which stays in the message). It becomes `PocketException` in
//! Kotlin and a thrown `PocketError` in Swift; the C ABI reports its code and message.

use std::any::Any;

/// Why a pocketlm call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum PocketError {
    /// The model directory is missing, unreadable, corrupt (checksum) or not a pocketlm model.
    #[error("model error: {reason}")]
    Model {
        /// What is wrong, with the file concerned.
        reason: String,
    },
    /// A parameter, prompt or text was rejected (out of range, invalid UTF-8, empty, ...).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was rejected and why.
        reason: String,
    },
    /// The prompt plus the requested output does not fit the context window.
    #[error("context overflow: {needed} tokens needed, the context holds {limit}")]
    ContextOverflow {
        /// Tokens that would be in the context.
        needed: u64,
        /// The context size.
        limit: u64,
    },
    /// The object is busy or in a state where the call cannot run (e.g. a chat already replying).
    #[error("invalid state: {reason}")]
    InvalidState {
        /// Why the call cannot run now.
        reason: String,
    },
    /// Inference failed, or a bug in pocketlm was caught (a panic never crosses the boundary).
    #[error("internal error: {reason}")]
    Internal {
        /// What failed.
        reason: String,
    },
}

impl From<pocketlm::Error> for PocketError {
    fn from(e: pocketlm::Error) -> Self {
        use pocketlm::Error as E;
        let reason = e.to_string();
        match e {
            E::Io { .. } | E::Config { .. } | E::Checksum { .. } | E::Graph(_) | E::Tokenizer(_) => {
                PocketError::Model { reason }
            }
            E::InvalidParameter { .. } | E::InvalidToken { .. } | E::Template(_) | E::InvalidUtf8(_) => {
                PocketError::InvalidInput { reason }
            }
            E::ContextOverflow { needed, limit } => {
                PocketError::ContextOverflow { needed: needed as u64, limit: limit as u64 }
            }
            E::State(_) => PocketError::InvalidState { reason },
            E::Inference(_) => PocketError::Internal { reason },
        }
    }
}

impl PocketError {
    /// The error for a caught panic, with its message when it has one.
    pub(crate) fn from_panic(payload: Box<dyn Any + Send>) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        log::error!("caught a panic at the bindings boundary: {what}");
        PocketError::Internal { reason: format!("pocketlm panicked: {what}") }
    }

    pub(crate) fn input(message: impl Into<String>) -> Self {
        PocketError::InvalidInput { reason: message.into() }
    }
}

/// Runs `f`, turning a panic inside it into [`PocketError::Internal`].
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, PocketError>) -> Result<T, PocketError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| Err(PocketError::from_panic(p)))
}

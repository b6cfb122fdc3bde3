//! The engine's one detailed error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine. Bindings map this to a smaller public error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the model directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `config.json` is missing a field, has a wrong type, or describes an unsupported model.
    #[error("invalid model config {path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A model file's sha256 does not match the one recorded in `config.json`.
    #[error("checksum mismatch for {path}: expected sha256 {expected}, found {actual} (file corrupt or replaced)")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// sha256 recorded in the config.
        expected: String,
        /// sha256 of the file on disk.
        actual: String,
    },
    /// The ONNX graph is not a causal LM with the expected inputs/outputs, or tract cannot load it.
    #[error("invalid model graph: {0}")]
    Graph(String),
    /// The tokenizer file cannot be loaded or used.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A generation or model parameter is out of range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// The prompt (plus what is already in the session) does not fit the context window.
    #[error("context overflow: {needed} tokens needed but the context holds {limit}")]
    ContextOverflow {
        /// Tokens that would be in the context.
        needed: usize,
        /// The context limit.
        limit: usize,
    },
    /// A token id outside the vocabulary was fed.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    InvalidToken {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab_size: usize,
    },
    /// The chat template failed to render.
    #[error("chat template error: {0}")]
    Template(String),
    /// Input bytes are not valid UTF-8.
    #[error("input is not valid UTF-8: {0}")]
    InvalidUtf8(String),
    /// Inference failed inside tract.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The session is in a state where the request cannot be honoured (e.g. rewinding past the start).
    #[error("invalid session state: {0}")]
    State(String),
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParameter { name, reason: reason.into() }
    }

    pub(crate) fn inference(e: impl std::fmt::Display) -> Self {
        Error::Inference(format!("{e:#}"))
    }
}

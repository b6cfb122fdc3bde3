//! `Session`: one conversation's state on a shared model — tokens, KV cache, prefill and decode.

use std::sync::Arc;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::graph::GraphState;
use crate::model::Model;

/// Per-session settings.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Maximum tokens this session holds (prompt + generated). 0 = the model's context length.
    pub context_size: usize,
    /// Prompt tokens evaluated per graph call during prefill (bounds memory; at least 1).
    pub prefill_chunk: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { context_size: 0, prefill_chunk: 128 }
    }
}

/// One sequence being evaluated: the tokens so far and their KV cache (held in `state`).
#[derive(Debug)]
pub struct Session {
    model: Arc<Model>,
    state: GraphState,
    tokens: Vec<u32>,
    context_size: usize,
    prefill_chunk: usize,
}

impl Session {
    pub(crate) fn new(model: Arc<Model>, options: SessionOptions) -> Result<Self> {
        let limit = model.config().context_length;
        let context_size = if options.context_size == 0 { limit } else { options.context_size };
        if context_size > limit {
            return Err(Error::param(
                "context_size",
                format!("{context_size} exceeds the model's context length {limit}"),
            ));
        }
        if options.prefill_chunk == 0 {
            return Err(Error::param("prefill_chunk", "must be at least 1"));
        }
        let state = model.graph().state()?;
        Ok(Session { model, state, tokens: Vec::new(), context_size, prefill_chunk: options.prefill_chunk })
    }

    /// The model this session runs on.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Tokens evaluated so far (their keys/values are cached).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Number of tokens in the context.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Maximum tokens this session can hold.
    pub fn context_size(&self) -> usize {
        self.context_size
    }

    /// Bytes held by the KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.state.cache_bytes()
    }

    /// A new session holding the same tokens and a copy of the cache, without re-evaluating
    /// anything: evaluate a long system prompt once, then fork one session per conversation.
    pub fn fork(&self) -> Result<Session> {
        Ok(Session {
            model: self.model.clone(),
            state: self.state.clone(),
            tokens: self.tokens.clone(),
            context_size: self.context_size,
            prefill_chunk: self.prefill_chunk,
        })
    }

    /// Forgets everything after the first `keep` tokens (the cache is cut, nothing re-evaluated).
    pub fn rewind(&mut self, keep: usize) -> Result<()> {
        if keep > self.tokens.len() {
            return Err(Error::State(format!(
                "cannot rewind to {keep} tokens: the session holds {}",
                self.tokens.len()
            )));
        }
        self.state.truncate(keep);
        self.tokens.truncate(keep);
        Ok(())
    }

    /// Empties the session.
    pub fn reset(&mut self) -> Result<()> {
        self.rewind(0)
    }

    /// Checks that `extra` more tokens fit the context.
    pub fn check_fits(&self, extra: usize) -> Result<()> {
        let needed = self.tokens.len() + extra;
        if needed > self.context_size {
            return Err(Error::ContextOverflow { needed, limit: self.context_size });
        }
        Ok(())
    }

    /// Evaluates `ids` after the current tokens, in chunks, and returns the logits of the last one.
    /// Returns `Ok(None)` if `cancel` fired between chunks. On error or cancellation the session is
    /// rewound to where it was: no partial prompt stays in the context.
    pub fn prefill(&mut self, ids: &[u32], cancel: &CancelToken) -> Result<Option<Vec<f32>>> {
        if ids.is_empty() {
            return Err(Error::param("prompt", "no tokens to evaluate"));
        }
        self.check_fits(ids.len())?;
        let vocab_size = self.model.config().hparams.vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::InvalidToken { id, vocab_size });
        }
        let start = self.tokens.len();
        let mut last = None;
        for chunk in ids.chunks(self.prefill_chunk) {
            if cancel.is_cancelled() {
                self.rewind(start)?;
                return Ok(None);
            }
            match self.eval(chunk) {
                Ok(logits) => last = Some(logits),
                Err(e) => {
                    self.rewind(start)?;
                    return Err(e);
                }
            }
        }
        Ok(last)
    }

    /// Evaluates one token (decode step) and returns the next-token logits.
    pub fn decode(&mut self, id: u32) -> Result<Vec<f32>> {
        self.check_fits(1)?;
        let vocab_size = self.model.config().hparams.vocab_size;
        if id as usize >= vocab_size {
            return Err(Error::InvalidToken { id, vocab_size });
        }
        self.eval(&[id])
    }

    fn eval(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        match self.model.graph().step(&mut self.state, self.tokens.len(), ids) {
            Ok(logits) => {
                self.tokens.extend_from_slice(ids);
                Ok(logits)
            }
            Err(e) => {
                // Layers that ran before the failure appended to their caches: cut them back.
                self.state.truncate(self.tokens.len());
                Err(e)
            }
        }
    }
}

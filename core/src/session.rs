//! `Session`: one conversation's state on a shared model — tokens, KV cache, prefill and decode.

use std::sync::Arc;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::graph::GraphState;
use crate::kv_cache::KvPrecision;
use crate::model::Model;

/// Per-session settings.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Maximum tokens this session holds (prompt + generated). 0 = the model's context length.
    pub context_size: usize,
    /// Prompt tokens evaluated per graph call during prefill (bounds memory; at least 1).
    pub prefill_chunk: usize,
    /// Element type of the KV cache (default f16: half the memory of f32).
    pub kv_precision: KvPrecision,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { context_size: 0, prefill_chunk: 128, kv_precision: KvPrecision::default() }
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
        let mut state = model.graph().state()?;
        state.set_kv_precision(options.kv_precision);
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
        let mut last = Vec::new();
        let done = self.eval_chunks(ids, cancel, |_, logits| last = logits)?;
        Ok(done.then(|| self.last_row(last)))
    }

    /// Evaluates one token (decode step) and returns the next-token logits.
    pub fn decode(&mut self, id: u32) -> Result<Vec<f32>> {
        self.check_fits(1)?;
        let vocab_size = self.model.config().hparams.vocab_size;
        if id as usize >= vocab_size {
            return Err(Error::InvalidToken { id, vocab_size });
        }
        self.eval(&[id]).map(|logits| self.last_row(logits))
    }

    /// Scores `ids` as a continuation of the current tokens: returns, for each `i ≥ 1`, the
    /// natural-log probability the model gives `ids[i]` after everything before it (`ids.len() - 1`
    /// values; perplexity is `exp(-mean)`). The tokens stay in the context, like a prefill.
    /// Needs a model loaded with [`ModelOptions::all_logits`](crate::ModelOptions). Returns
    /// `Ok(None)` if cancelled between chunks; on error or cancellation the session is rewound.
    pub fn score(&mut self, ids: &[u32], cancel: &CancelToken) -> Result<Option<Vec<f32>>> {
        if !self.model.all_logits() {
            return Err(Error::State("scoring needs a model loaded with all_logits".into()));
        }
        if ids.len() < 2 {
            return Err(Error::param("ids", "scoring needs at least 2 tokens"));
        }
        let vocab_size = self.model.config().hparams.vocab_size;
        let mut scores = Vec::with_capacity(ids.len() - 1);
        let done = self.eval_chunks(ids, cancel, |offset, logits| {
            // Row r predicts the token after ids[offset + r].
            for (row, &target) in logits.chunks_exact(vocab_size).zip(&ids[offset + 1..]) {
                scores.push(log_softmax_at(row, target as usize));
            }
        })?;
        Ok(done.then_some(scores))
    }

    /// Checks `ids` (they fit the context, every id is in the vocabulary), then evaluates them in
    /// chunks, handing each chunk's offset in `ids` and logits to `on_chunk`. Returns `false` if
    /// `cancel` fired between chunks. On error or cancellation the session is rewound to where
    /// it was.
    fn eval_chunks(
        &mut self,
        ids: &[u32],
        cancel: &CancelToken,
        mut on_chunk: impl FnMut(usize, Vec<f32>),
    ) -> Result<bool> {
        self.check_fits(ids.len())?;
        let vocab_size = self.model.config().hparams.vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::InvalidToken { id, vocab_size });
        }
        let start = self.tokens.len();
        for (c, chunk) in ids.chunks(self.prefill_chunk).enumerate() {
            if cancel.is_cancelled() {
                self.rewind(start)?;
                return Ok(false);
            }
            match self.eval(chunk) {
                Ok(logits) => on_chunk(c * self.prefill_chunk, logits),
                Err(e) => {
                    self.rewind(start)?;
                    return Err(e);
                }
            }
        }
        Ok(true)
    }

    /// The last position's logits out of what the graph returned (one row, or all of them).
    fn last_row(&self, mut logits: Vec<f32>) -> Vec<f32> {
        let vocab_size = self.model.config().hparams.vocab_size;
        logits.split_off(logits.len() - vocab_size)
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

/// `ln softmax(row)[index]`, computed stably in f64.
fn log_softmax_at(row: &[f32], index: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    (row[index] as f64 - max - sum.ln()) as f32
}

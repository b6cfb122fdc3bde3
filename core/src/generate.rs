//! The generation loop: prefill, then sample / stream / stop, one token at a time.

use std::time::Instant;

use serde::Serialize;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::sampler::{Sampler, SamplingParams};
use crate::session::Session;
use crate::stop::{StopMatcher, StopOutcome};
use crate::text_stream::Utf8Stream;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Upper bound on generated tokens (at least 1).
    pub max_tokens: usize,
    /// Token choice.
    pub sampling: SamplingParams,
    /// Generation ends at the first of these strings (which is not part of the output).
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams { max_tokens: 256, sampling: SamplingParams::default(), stop: Vec::new() }
    }
}

impl GenerateParams {
    /// Rejects out-of-range values with [`Error::InvalidParameter`]: what [`generate`] checks
    /// before it evaluates anything, for callers that must fail before starting (e.g. streams).
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == 0 {
            return Err(Error::param("max_tokens", "must be at least 1"));
        }
        self.sampling.validate()?;
        StopMatcher::new(&self.stop).map(drop)
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop string appeared.
    Stop,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The session's context is full.
    ContextFull,
    /// Cancelled through the [`CancelToken`].
    Cancelled,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Evaluating the prompt tokens.
    pub prefill_ms: f64,
    /// Evaluating generated tokens after the first.
    pub decode_ms: f64,
    /// From the call to the first generated token.
    pub ttft_ms: f64,
    /// Prompt tokens actually evaluated (excludes tokens reused from the cache).
    pub prefill_tokens: usize,
    /// Decode steps run.
    pub decode_tokens: usize,
}

/// Result of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// Generated text (stop string and special tokens excluded).
    pub text: String,
    /// Tokens this call evaluated as prompt.
    pub prompt_token_ids: Vec<u32>,
    /// Tokens already in the session's cache before this call (reused, not re-evaluated).
    pub cached_tokens: usize,
    /// Generated token ids (an end-of-sequence token included).
    pub token_ids: Vec<u32>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// The stop string that ended generation, if any.
    pub stop_string: Option<String>,
    /// Timings.
    pub timings: Timings,
}

/// Appends `prompt` to `session`, then generates, calling `on_text` with each new piece of text
/// (whole UTF-8 characters, never part of a stop string).
pub fn generate(
    session: &mut Session,
    prompt: &[u32],
    params: &GenerateParams,
    cancel: &CancelToken,
    on_text: &mut dyn FnMut(&str),
) -> Result<Completion> {
    params.validate()?;
    let mut sampler = Sampler::new(&params.sampling)?;
    let mut stops = StopMatcher::new(&params.stop)?;
    let started = Instant::now();
    let cached_tokens = session.token_count();
    let mut out = Completion {
        text: String::new(),
        prompt_token_ids: prompt.to_vec(),
        cached_tokens,
        token_ids: Vec::new(),
        finish_reason: FinishReason::Cancelled,
        stop_string: None,
        timings: Timings { prefill_tokens: prompt.len(), ..Timings::default() },
    };
    let Some(mut logits) = session.prefill(prompt, cancel)? else {
        out.timings.prefill_ms = ms_since(started);
        return Ok(out);
    };
    out.timings.prefill_ms = ms_since(started);
    let decode_started = Instant::now();
    let model = session.model().clone();
    let tokenizer = model.tokenizer();
    let eos = &model.config().eos_token_ids;
    let mut utf8 = Utf8Stream::default();
    let mut emit = |text: &str, out: &mut Completion| {
        if !text.is_empty() {
            out.text.push_str(text);
            on_text(text);
        }
    };
    let reason = loop {
        if cancel.is_cancelled() {
            break FinishReason::Cancelled;
        }
        let token = sampler.sample(&logits, session.tokens());
        out.token_ids.push(token);
        if out.token_ids.len() == 1 {
            out.timings.ttft_ms = ms_since(started);
        }
        if eos.contains(&token) {
            break FinishReason::Eos;
        }
        if !tokenizer.is_special(token) {
            let text = utf8.push(&tokenizer.bytes(&[token])?);
            match stops.push(&text) {
                StopOutcome::Continue(safe) => emit(&safe, &mut out),
                StopOutcome::Stopped(before, stop) => {
                    emit(&before, &mut out);
                    out.stop_string = Some(stop);
                    break FinishReason::Stop;
                }
            }
        }
        if out.token_ids.len() >= params.max_tokens {
            break FinishReason::MaxTokens;
        }
        if session.token_count() >= session.context_size() {
            break FinishReason::ContextFull;
        }
        logits = session.decode(token)?;
        out.timings.decode_tokens += 1;
    };
    if reason != FinishReason::Stop {
        let tail = utf8.finish();
        match stops.push(&tail) {
            StopOutcome::Continue(safe) => {
                emit(&safe, &mut out);
                let rest = stops.finish();
                emit(&rest, &mut out);
            }
            StopOutcome::Stopped(before, stop) => {
                emit(&before, &mut out);
                out.stop_string = Some(stop);
            }
        }
    }
    out.finish_reason = reason;
    out.timings.decode_ms = if out.timings.decode_tokens > 0 { ms_since(decode_started) } else { 0.0 };
    Ok(out)
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

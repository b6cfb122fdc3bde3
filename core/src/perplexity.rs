//! Perplexity of a token sequence with a sliding window: how well the model predicts a text.

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::session::Session;

/// Sliding-window settings: each window holds at most `window` tokens and starts `stride` tokens
/// after the previous one; every token is scored once, in the first window that has it as a
/// target, with up to `window - stride` tokens of context carried over from the previous window.
#[derive(Debug, Clone, Copy)]
pub struct PerplexityOptions {
    /// Tokens per window (at least 2, at most the session's context size).
    pub window: usize,
    /// Tokens between window starts (1..=window).
    pub stride: usize,
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        PerplexityOptions { window: 512, stride: 256 }
    }
}

/// The result of [`perplexity`].
#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Mean negative log-likelihood per scored token (nats).
    pub mean_nll: f64,
    /// Tokens scored (all but the first).
    pub scored_tokens: usize,
    /// Windows evaluated.
    pub windows: usize,
}

/// Perplexity of `ids` on `session`'s model (loaded with `all_logits`). The session is reset
/// before each window and left holding the last one. `on_window(scored, total)` reports progress
/// after each window. Returns `Ok(None)` if `cancel` fires.
pub fn perplexity(
    session: &mut Session,
    ids: &[u32],
    options: PerplexityOptions,
    cancel: &CancelToken,
    on_window: &mut dyn FnMut(usize, usize),
) -> Result<Option<Perplexity>> {
    let PerplexityOptions { window, stride } = options;
    if window < 2 || window > session.context_size() {
        return Err(Error::param("window", format!("{window} is not in 2..={}", session.context_size())));
    }
    if stride == 0 || stride > window {
        return Err(Error::param("stride", format!("{stride} is not in 1..={window}")));
    }
    if ids.len() < 2 {
        return Err(Error::param("text", format!("{} token(s): at least 2 are needed", ids.len())));
    }
    let (mut nll, mut scored, mut windows) = (0f64, 0usize, 0usize);
    let (mut begin, mut done) = (0usize, 1usize); // ids[..done] are scored (ids[0] never is)
    loop {
        let end = (begin + window).min(ids.len());
        session.reset()?;
        let Some(scores) = session.score(&ids[begin..end], cancel)? else { return Ok(None) };
        // scores[j] is the log-probability of ids[begin + j + 1].
        for target in done.max(begin + 1)..end {
            nll -= scores[target - begin - 1] as f64;
            scored += 1;
        }
        done = end;
        windows += 1;
        on_window(scored, ids.len() - 1);
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    let mean_nll = nll / scored as f64;
    Ok(Some(Perplexity { perplexity: mean_nll.exp(), mean_nll, scored_tokens: scored, windows }))
}

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
    /// Standard error of `mean_nll`: the sample standard deviation of the per-token values over
    /// the square root of their count (0 with one token). Two models scored on the same text are
    /// compared more tightly by the standard error of their per-token differences
    /// ([`Perplexity::token_nll`]).
    pub std_error: f64,
    /// Tokens scored (all but the first).
    pub scored_tokens: usize,
    /// Windows evaluated.
    pub windows: usize,
    /// Negative log-likelihood of each scored token (nats), in text order: `token_nll[i]` is
    /// that of `ids[i + 1]`.
    pub token_nll: Vec<f32>,
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
    let (mut token_nll, mut windows) = (Vec::with_capacity(ids.len() - 1), 0usize);
    let (mut begin, mut done) = (0usize, 1usize); // ids[..done] are scored (ids[0] never is)
    loop {
        let end = (begin + window).min(ids.len());
        session.reset()?;
        let Some(scores) = session.score(&ids[begin..end], cancel)? else { return Ok(None) };
        // scores[j] is the log-probability of ids[begin + j + 1].
        token_nll.extend(scores[done.max(begin + 1) - begin - 1..end - begin - 1].iter().map(|s| -s));
        done = end;
        windows += 1;
        on_window(token_nll.len(), ids.len() - 1);
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    let scored = token_nll.len();
    let mean_nll = token_nll.iter().map(|&v| v as f64).sum::<f64>() / scored as f64;
    let variance = token_nll.iter().map(|&v| (v as f64 - mean_nll).powi(2)).sum::<f64>() / (scored.max(2) - 1) as f64;
    let std_error = (variance / scored as f64).sqrt();
    Ok(Some(Perplexity { perplexity: mean_nll.exp(), mean_nll, std_error, scored_tokens: scored, windows, token_nll }))
}

//! Scoring and sliding-window perplexity, checked against log-probabilities computed from the
//! ordinary next-token logits of decode steps.

mod common;

use pocketlm::{perplexity, CancelToken, Error, Model, ModelOptions, PerplexityOptions, Session, SessionOptions};

fn scoring_model() -> std::sync::Arc<Model> {
    Model::load(common::tiny_dir(), &ModelOptions { threads: 1, all_logits: true }).unwrap()
}

fn ids() -> Vec<u32> {
    let text = "The lighthouse keeper wrote the weather down every four hours, for forty years, in a small hand.";
    common::tiny().tokenizer().encode(text).unwrap()
}

/// ln P(ids[i] | ids[..i]) for i >= 1, from one decode step per token on a fresh session.
fn reference_scores(session: &mut Session, ids: &[u32]) -> Vec<f64> {
    session.reset().unwrap();
    let mut out = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let logits = session.decode(id).unwrap();
        if let Some(&next) = ids.get(i + 1) {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
            out.push(logits[next as usize] as f64 - max - sum.ln());
        }
    }
    out
}

#[test]
fn score_matches_decode_step_log_probabilities_across_chunks() {
    let ids = ids();
    assert!(ids.len() > 12, "{} tokens", ids.len());
    let tiny = common::tiny();
    let expected = reference_scores(&mut tiny.session(SessionOptions::default()).unwrap(), &ids);
    // Chunks of 5 make rows from several graph calls line up with their targets.
    let mut session = scoring_model().session(SessionOptions { prefill_chunk: 5, ..Default::default() }).unwrap();
    let scores = session.score(&ids, &CancelToken::new()).unwrap().unwrap();
    assert_eq!(scores.len(), ids.len() - 1);
    for (i, (s, e)) in scores.iter().zip(&expected).enumerate() {
        assert!((*s as f64 - e).abs() < 1e-3, "token {i}: score {s} vs decode {e}");
    }
    assert_eq!(session.tokens(), &ids[..], "scored tokens stay in the context");
}

#[test]
fn last_position_logits_of_the_split_head_match_all_positions() {
    // tiny-q4's head is split, its 4-bit rows with a low-rank part: decoding slices every part of
    // it to the last position (rewrite::last_position_logits), scoring runs it on every position.
    let ids = ids();
    let dir = common::tiny_q4_dir();
    let decoding = Model::load(&dir, &ModelOptions { threads: 1, all_logits: false }).unwrap();
    let expected = reference_scores(&mut decoding.session(SessionOptions::default()).unwrap(), &ids);
    let scoring = Model::load(&dir, &ModelOptions { threads: 1, all_logits: true }).unwrap();
    let mut session = scoring.session(SessionOptions { prefill_chunk: 5, ..Default::default() }).unwrap();
    let scores = session.score(&ids, &CancelToken::new()).unwrap().unwrap();
    for (i, (s, e)) in scores.iter().zip(&expected).enumerate() {
        assert!((*s as f64 - e).abs() < 1e-4, "token {i}: score {s} vs decode {e}");
    }
}

#[test]
fn perplexity_with_whole_window_is_exp_of_mean_nll() {
    let ids = ids();
    let tiny = common::tiny();
    let expected = reference_scores(&mut tiny.session(SessionOptions::default()).unwrap(), &ids);
    let mean_nll = -expected.iter().sum::<f64>() / expected.len() as f64;
    let mut session = scoring_model().session(SessionOptions::default()).unwrap();
    let options = PerplexityOptions { window: 256, stride: 128 };
    let p = perplexity(&mut session, &ids, options, &CancelToken::new(), &mut |_, _| {}).unwrap().unwrap();
    assert_eq!((p.scored_tokens, p.windows), (ids.len() - 1, 1));
    assert!((p.mean_nll - mean_nll).abs() < 1e-4, "{} vs {mean_nll}", p.mean_nll);
    assert!((p.perplexity - mean_nll.exp()).abs() < 1e-3 * p.perplexity);
}

#[test]
fn sliding_windows_score_every_token_once_with_carried_context() {
    let ids = ids();
    let n = ids.len();
    let tiny = common::tiny();
    let mut reference = tiny.session(SessionOptions::default()).unwrap();
    let (window, stride) = (8, 3);
    // Expected: each target t is scored in the first window [b, b + 8) with t in (b, b + 8), b = 3j.
    let mut expected = Vec::new();
    let (mut begin, mut done) = (0, 1);
    let mut windows = 0;
    loop {
        let end = (begin + window).min(n);
        let s = reference_scores(&mut reference, &ids[begin..end]);
        for t in done.max(begin + 1)..end {
            expected.push(-s[t - begin - 1]);
        }
        windows += 1;
        done = end;
        if end == n {
            break;
        }
        begin += stride;
    }
    let mut session = scoring_model().session(SessionOptions::default()).unwrap();
    let mut reports = Vec::new();
    let p = perplexity(&mut session, &ids, PerplexityOptions { window, stride }, &CancelToken::new(), &mut |d, t| {
        reports.push((d, t))
    })
    .unwrap()
    .unwrap();
    assert_eq!((p.scored_tokens, p.windows, p.token_nll.len()), (n - 1, windows, n - 1));
    for (i, (got, want)) in p.token_nll.iter().zip(&expected).enumerate() {
        assert!((*got as f64 - want).abs() < 1e-3, "token {}: {got} vs {want}", i + 1);
    }
    let mean = expected.iter().sum::<f64>() / (n - 1) as f64;
    assert!((p.mean_nll - mean).abs() < 1e-4);
    // The standard error of the mean, from the per-token spread.
    let variance = expected.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 2) as f64;
    let std_error = (variance / (n - 1) as f64).sqrt();
    assert!(std_error > 0.0 && (p.std_error - std_error).abs() < 1e-3 * std_error, "{} vs {std_error}", p.std_error);
    assert_eq!(reports.len(), windows);
    assert_eq!(*reports.last().unwrap(), (n - 1, n - 1));
    assert!(reports.windows(2).all(|w| w[0].0 < w[1].0), "progress grows: {reports:?}");
}

#[test]
fn bad_scoring_requests_are_typed_errors() {
    let ids = ids();
    let cancel = CancelToken::new();
    let mut plain = common::tiny().session(SessionOptions::default()).unwrap();
    assert!(matches!(plain.score(&ids, &cancel), Err(Error::State(_))));
    let mut session = scoring_model().session(SessionOptions { context_size: 16, ..Default::default() }).unwrap();
    assert!(matches!(session.score(&ids[..1], &cancel), Err(Error::InvalidParameter { .. })));
    assert!(matches!(session.score(&ids, &cancel), Err(Error::ContextOverflow { .. })));
    assert!(matches!(session.score(&[1, 999_999], &cancel), Err(Error::InvalidToken { .. })));
    assert_eq!(session.token_count(), 0, "failed requests leave nothing behind");
    for (window, stride) in [(1, 1), (17, 4), (8, 0), (8, 9)] {
        let r = perplexity(&mut session, &ids, PerplexityOptions { window, stride }, &cancel, &mut |_, _| {});
        assert!(matches!(r, Err(Error::InvalidParameter { .. })), "window {window} stride {stride}: {r:?}");
    }
    cancel.cancel();
    let r = perplexity(&mut session, &ids, PerplexityOptions { window: 8, stride: 4 }, &cancel, &mut |_, _| {});
    assert!(matches!(r, Ok(None)));
    assert_eq!(session.token_count(), 0, "a cancelled window leaves nothing behind");
}

//! Stop strings: end generation at the first occurrence, never leaking a partial match.

use crate::error::{Error, Result};

/// Watches streamed text for stop strings. Text that could be the start of a stop string is held
/// back until it is known not to be one.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What the matcher lets through for one piece of text.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit; generation goes on.
    Continue(String),
    /// A stop string was found: text before it, and which stop string.
    Stopped(String, String),
}

impl StopMatcher {
    /// A matcher for `stops` (none may be empty).
    pub fn new(stops: &[String]) -> Result<Self> {
        if stops.iter().any(String::is_empty) {
            return Err(Error::param("stop", "stop strings must not be empty"));
        }
        Ok(StopMatcher { stops: stops.to_vec(), held: String::new() })
    }

    /// Feeds newly generated text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.held.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, s)| (*at, std::cmp::Reverse(s.len())));
        if let Some((at, stop)) = first {
            let before = self.held[..at].to_string();
            let stop = stop.clone();
            self.held.clear();
            return StopOutcome::Stopped(before, stop);
        }
        let keep = self.partial_suffix_len();
        let emit_len = self.held.len() - keep;
        let emit = self.held[..emit_len].to_string();
        self.held.drain(..emit_len);
        StopOutcome::Continue(emit)
    }

    /// Ends the stream: held-back text was not a stop string after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of the held text that is a proper prefix of some stop string
    /// (always on a char boundary).
    fn partial_suffix_len(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (i, _) in self.held.char_indices() {
                let suffix = &self.held[i..];
                if suffix.len() < stop.len() && stop.starts_with(suffix) {
                    best = best.max(suffix.len());
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::{StopMatcher, StopOutcome};

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut m = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped(t, s) => {
                    out.push_str(&t);
                    return (out, Some(s));
                }
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    #[test]
    fn stop_split_across_pieces_is_not_leaked() {
        let mut m = StopMatcher::new(&["\nUser:".to_string()]).unwrap();
        assert_eq!(m.push("Hello\nUs"), StopOutcome::Continue("Hello".into()));
        assert_eq!(m.push("er: hi"), StopOutcome::Stopped(String::new(), "\nUser:".into()));
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(run(&["END"], &["the E", "N", "d"]), ("the ENd".to_string(), None));
    }

    #[test]
    fn earliest_stop_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".to_string(), Some("b".to_string())));
    }

    #[test]
    fn multibyte_text_around_stops() {
        assert_eq!(run(&["世界"], &["你好世", "界!"]), ("你好".to_string(), Some("世界".to_string())));
        assert_eq!(run(&["🦀x"], &["a🦀", "y"]), ("a🦀y".to_string(), None));
    }

    #[test]
    fn empty_stop_is_rejected() {
        assert!(StopMatcher::new(&[String::new()]).is_err());
    }
}

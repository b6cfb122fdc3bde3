//! Incremental detokenization: token bytes in, whole UTF-8 text out (never half a character).

/// Buffers token bytes and releases the longest valid UTF-8 prefix.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns the text they complete (possibly empty). Bytes that can never be valid
    /// UTF-8 come out as U+FFFD; an incomplete trailing character waits for the next push.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("checked valid prefix"));
                    match e.error_len() {
                        // Incomplete character at the end: keep it for later.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: any incomplete trailing bytes become U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn splits_multibyte_characters_across_pushes() {
        let text = "héllo 世界 🦀!";
        for split in 1..4 {
            let mut s = Utf8Stream::default();
            let mut out = String::new();
            for chunk in text.as_bytes().chunks(split) {
                let piece = s.push(chunk);
                assert!(text.starts_with(&(out.clone() + &piece)), "never emits a partial character");
                out.push_str(&piece);
            }
            out.push_str(&s.finish());
            assert_eq!(out, text);
        }
    }

    #[test]
    fn holds_back_incomplete_character() {
        let crab = "🦀".as_bytes();
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&crab[..2]), "");
        assert_eq!(s.push(&crab[2..3]), "");
        assert_eq!(s.push(&crab[3..]), "🦀");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(s.push(&"é".as_bytes()[..1]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}

//! Checking text that comes from outside (files, FFI buffers) before it reaches the engine.

use crate::error::{Error, Result};

/// `bytes` as a `String`, or [`Error::InvalidUtf8`] saying where the first bad byte is.
pub fn text_from_bytes(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        Error::InvalidUtf8(format!("invalid byte sequence at offset {at}"))
    })
}

#[cfg(test)]
mod tests {
    use super::text_from_bytes;
    use crate::Error;

    #[test]
    fn rejects_invalid_utf8_with_offset() {
        assert_eq!(text_from_bytes(b"ok".to_vec()).unwrap(), "ok");
        match text_from_bytes(b"ab\xff".to_vec()) {
            Err(Error::InvalidUtf8(msg)) => assert!(msg.contains("offset 2"), "{msg}"),
            other => panic!("expected InvalidUtf8, got {other:?}"),
        }
    }
}

//! Text <-> token ids, with the byte-exact token pieces streaming needs.

use std::path::Path;

use crate::error::{Error, Result};

/// The model's tokenizer (a Hugging Face `tokenizer.json`, byte-level BPE).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    /// Bytes of every token id (special tokens: their text).
    pieces: Vec<Box<[u8]>>,
    special: Vec<bool>,
}

impl Tokenizer {
    /// Loads `tokenizer.json`; `vocab_size` is the model's, every id must fit in it.
    pub fn load(path: &Path, vocab_size: usize) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let own = inner.get_vocab_size(true);
        if own > vocab_size {
            return Err(Error::Tokenizer(format!(
                "tokenizer has {own} tokens but the model's vocabulary is {vocab_size}"
            )));
        }
        let added = inner.get_added_vocabulary();
        let mut pieces = Vec::with_capacity(own);
        let mut special = Vec::with_capacity(own);
        for id in 0..own as u32 {
            let piece = inner.id_to_token(id).unwrap_or_default();
            let is_special = added.is_special_token(&piece);
            let bytes =
                if is_special {
                    piece.as_bytes().to_vec()
                } else {
                    piece.chars().map(byte_of_char).collect::<Option<Vec<u8>>>().ok_or_else(|| {
                        Error::Tokenizer(format!("token {id} ({piece:?}) is not a byte-level BPE piece"))
                    })?
                };
            pieces.push(bytes.into_boxed_slice());
            special.push(is_special);
        }
        Ok(Tokenizer { inner, vocab_size, pieces, special })
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>`) are
    /// recognised; no BOS/EOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, special tokens included verbatim. Invalid UTF-8 sequences become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.bytes(ids)?).into_owned())
    }

    /// The exact bytes `ids` stand for (a token can be part of a UTF-8 character).
    pub fn bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for &id in ids {
            self.token_bytes(id, &mut out)?;
        }
        Ok(out)
    }

    fn token_bytes(&self, id: u32, out: &mut Vec<u8>) -> Result<()> {
        let piece = self.pieces.get(id as usize).ok_or(Error::InvalidToken { id, vocab_size: self.vocab_size })?;
        out.extend_from_slice(piece);
        Ok(())
    }

    /// True for control tokens such as `<|im_end|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Id of a token string, if it is one token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size of the model this tokenizer serves.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

/// Inverse of GPT-2's byte -> printable-char table used by byte-level BPE.
fn byte_of_char(ch: char) -> Option<u8> {
    let c = ch as u32;
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    if c < 256 && printable(c) {
        return Some(c as u8);
    }
    // Non-printable bytes were mapped, in increasing order, to 256, 257, ...
    let n = c.checked_sub(256)?;
    (0u32..256).filter(|&b| !printable(b)).nth(n as usize).map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::byte_of_char;

    #[test]
    fn byte_table_round_trips() {
        assert_eq!(byte_of_char('A'), Some(b'A'));
        assert_eq!(byte_of_char('Ġ'), Some(b' '));
        assert_eq!(byte_of_char('Ċ'), Some(b'\n'));
        let mut seen = [false; 256];
        for c in (0u32..512).filter_map(char::from_u32) {
            if let Some(b) = byte_of_char(c) {
                assert!(!seen[b as usize], "byte {b} mapped twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "every byte has a char");
    }
}

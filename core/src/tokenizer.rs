//! Text <-> token ids, with the byte-exact token pieces streaming needs.

use std::path::Path;

use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// The sections of a byte-level BPE `tokenizer.json`, unparsed.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BpeParts<'a> {
    #[serde(borrow)]
    version: &'a RawValue,
    #[serde(borrow)]
    truncation: &'a RawValue,
    #[serde(borrow)]
    padding: &'a RawValue,
    added_tokens: Vec<AddedToken>,
    #[serde(borrow)]
    normalizer: &'a RawValue,
    #[serde(borrow)]
    pre_tokenizer: &'a RawValue,
    #[serde(borrow)]
    post_processor: &'a RawValue,
    #[serde(borrow)]
    decoder: &'a RawValue,
    #[serde(borrow)]
    model: &'a RawValue,
}

/// An added token's id and text (the other fields stay in the JSON `BpeParts::build` writes).
#[derive(serde::Deserialize, serde::Serialize)]
struct AddedToken {
    id: u32,
    content: String,
    #[serde(flatten)]
    options: serde_json::Map<String, serde_json::Value>,
}

/// `text` split into its sections if it is a BPE tokenizer with exactly the standard ones.
fn bpe_parts(text: &str) -> Option<BpeParts<'_>> {
    let parts: BpeParts = serde_json::from_str(text).ok()?;
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        r#type: &'a str,
    }
    let kind: Kind = serde_json::from_str(parts.model.get()).ok()?;
    (kind.r#type == "BPE").then_some(parts)
}

impl BpeParts<'_> {
    /// The tokenizer, its BPE model deserialized on its own. The library's loader buffers the
    /// whole model section in a generic form first (to pick the model type): ~50 ms and a ~40 MB
    /// peak for this vocabulary, against ~25 ms and ~20 MB this way, on the thread that loads
    /// beside the graph while load memory peaks. The rest is read by the library from a copy of
    /// the file whose model is a placeholder holding just the added tokens, then the real model
    /// is put in.
    fn build(self) -> tokenizers::Result<tokenizers::Tokenizer> {
        let bpe: tokenizers::models::bpe::BPE = serde_json::from_str(self.model.get())?;
        let vocab: serde_json::Map<String, serde_json::Value> =
            self.added_tokens.iter().map(|t| (t.content.clone(), t.id.into())).collect();
        let placeholder = serde_json::json!({"type": "BPE", "vocab": vocab, "merges": []});
        let rest = format!(
            r#"{{"version":{},"truncation":{},"padding":{},"added_tokens":{},"normalizer":{},"pre_tokenizer":{},"post_processor":{},"decoder":{},"model":{}}}"#,
            self.version,
            self.truncation,
            self.padding,
            serde_json::to_string(&self.added_tokens)?,
            self.normalizer,
            self.pre_tokenizer,
            self.post_processor,
            self.decoder,
            placeholder
        );
        let mut tokenizer: tokenizers::Tokenizer = rest.parse()?;
        tokenizer.with_model(bpe);
        Ok(tokenizer)
    }
}

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
        let text = std::fs::read_to_string(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let inner = match bpe_parts(&text) {
            Some(parts) => parts.build(),
            // Not the layout `bpe_parts` reads: the library's own loader decides.
            None => text.parse::<tokenizers::Tokenizer>(),
        }
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
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
    use super::*;

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

    fn tiny_json() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny/tokenizer.json");
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_sectioned_load_builds_the_same_tokenizer_as_the_library() {
        let text = tiny_json();
        let ours = bpe_parts(&text).expect("the pipeline's layout").build().unwrap();
        let library: tokenizers::Tokenizer = text.parse().unwrap();
        assert_eq!(ours.get_vocab(true), library.get_vocab(true));
        let sample = "<|im_start|>user\nPrices rose 12.5% in 2024 — naïve café, 東京!<|im_end|>\n";
        let (a, b) = (ours.encode(sample, false).unwrap(), library.encode(sample, false).unwrap());
        assert_eq!(a.get_ids(), b.get_ids());
        assert_eq!(ours.decode(a.get_ids(), false).unwrap(), library.decode(b.get_ids(), false).unwrap());
    }

    #[test]
    fn other_layouts_go_to_the_library_loader() {
        let text = tiny_json();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        // Sections the library defaults when absent.
        for section in ["truncation", "padding"] {
            json.as_object_mut().unwrap().remove(section);
        }
        let shorter = json.to_string();
        assert!(bpe_parts(&shorter).is_none());
        let dir = tempfile::Builder::new().prefix("pocketlm-tokenizer-").tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), &shorter).unwrap();
        let loaded = Tokenizer::load(&dir.path().join("tokenizer.json"), 1 << 20).unwrap();
        let library: tokenizers::Tokenizer = text.parse().unwrap();
        let sample = "hello world, 42 times";
        assert_eq!(loaded.encode(sample).unwrap(), library.encode(sample, false).unwrap().get_ids());
        json["model"]["type"] = "WordPiece".into();
        assert!(bpe_parts(&json.to_string()).is_none(), "only BPE models are split");
    }
}

//! The tokenizer matches the GGUF's own tokenization (golden ids from models/golden.py).

mod common;

use pocketlm::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn golden() -> Golden {
    let path = common::tiny_dir().join("../golden/tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn ids_match_gguf_reference_tokenization() {
    let tok = Tokenizer::load(&common::tiny_dir().join("tokenizer.json"), 49152).unwrap();
    let golden = golden();
    assert!(golden.cases.len() >= 25);
    let mut failures = Vec::new();
    for case in &golden.cases {
        let ids = tok.encode(&case.text).unwrap();
        if ids != case.ids {
            failures.push(format!("{:?}: got {ids:?}, want {:?}", case.text, case.ids));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn decoding_round_trips_text() {
    let tok = Tokenizer::load(&common::tiny_dir().join("tokenizer.json"), 49152).unwrap();
    for case in golden().cases {
        assert_eq!(tok.decode(&case.ids).unwrap(), case.text);
    }
}

#[test]
fn chat_special_tokens_have_their_ids() {
    let tok = Tokenizer::load(&common::tiny_dir().join("tokenizer.json"), 49152).unwrap();
    assert_eq!(tok.token_id("<|endoftext|>"), Some(0));
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert!(tok.is_special(2) && !tok.is_special(504));
}

#[test]
fn token_by_token_streaming_never_splits_a_character() {
    // Emoji, CJK and accented text are split by byte-level BPE inside characters; the stream must
    // hold those bytes back until the character is complete.
    let tok = Tokenizer::load(&common::tiny_dir().join("tokenizer.json"), 49152).unwrap();
    let mut split_inside_a_char = 0;
    for case in golden().cases {
        let mut stream = pocketlm::Utf8Stream::default();
        let mut out = String::new();
        for &id in &case.ids {
            let bytes = tok.bytes(&[id]).unwrap();
            if std::str::from_utf8(&bytes).is_err() {
                split_inside_a_char += 1;
            }
            let piece = stream.push(&bytes);
            assert!(case.text.starts_with(&(out.clone() + &piece)), "{:?}: emitted {piece:?} after {out:?}", case.text);
            out.push_str(&piece);
        }
        out.push_str(&stream.finish());
        assert_eq!(out, case.text);
    }
    assert!(split_inside_a_char > 5, "the corpus exercises tokens that end inside a character");
}

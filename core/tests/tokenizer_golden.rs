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

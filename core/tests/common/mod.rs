//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use pocketlm::{Model, ModelOptions};

/// The committed tiny random-weight model.
pub fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny")
}

/// The tiny model, loaded on one thread.
pub fn tiny() -> Arc<Model> {
    Model::load(tiny_dir(), &ModelOptions { threads: 1, all_logits: false }).expect("tiny model loads")
}

/// A copy of the tiny model directory in a fresh temp dir, for tests that damage files.
pub fn tiny_copy(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pocketlm-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.onnx", "tokenizer.json"] {
        std::fs::copy(tiny_dir().join(f), dir.join(f)).unwrap();
    }
    dir
}

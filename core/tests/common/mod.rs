//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use tempfile::TempDir;

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
pub fn tiny_copy(tag: &str) -> TempDir {
    copy_model(&tiny_dir(), tag)
}

/// The committed tiny 4-bit model (`MatMulNBits` weights in external data).
pub fn tiny_q4_dir() -> PathBuf {
    tiny_dir().with_file_name("tiny-q4")
}

/// A copy of every file of the model directory `source` in a fresh temp dir, removed when the
/// returned handle drops (also when the test fails).
pub fn copy_model(source: &std::path::Path, tag: &str) -> TempDir {
    let dir = tempfile::Builder::new().prefix(&format!("pocketlm-test-{tag}-")).tempdir().unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

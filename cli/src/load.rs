//! Loading the model for a command, with a spinner on the terminal.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use pocketlm::{Model, ModelOptions, Session, SessionOptions};

use crate::args::ModelArgs;
use crate::fetch;

/// Loads the model named by `args` (the default model if none), showing progress on stderr.
pub fn load(args: &ModelArgs) -> anyhow::Result<Arc<Model>> {
    load_with(args, false)
}

/// [`load`], with every position's logits kept when `all_logits` (scoring).
pub fn load_with(args: &ModelArgs, all_logits: bool) -> anyhow::Result<Arc<Model>> {
    let dir = match &args.model {
        Some(dir) => dir.clone(),
        None => fetch::ensure_default_model(args.weights.as_deref())?,
    };
    let spinner = ProgressBar::new_spinner().with_message(format!("loading model from {}", dir.display()));
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")?);
    spinner.enable_steady_tick(Duration::from_millis(100));
    let model = Model::load(&dir, &ModelOptions { threads: args.threads, all_logits });
    spinner.finish_and_clear();
    Ok(model?)
}

/// A fresh session with the context size from `args`.
pub fn session(model: &Arc<Model>, args: &ModelArgs) -> anyhow::Result<Session> {
    let options = SessionOptions {
        context_size: args.context_size,
        prefill_chunk: args.prefill_chunk,
        kv_precision: args.kv_precision(),
    };
    Ok(model.session(options)?)
}

/// Writes one streamed piece of text to stdout at once (no line buffering).
pub fn print_piece(piece: &str) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) must not abort generation.
    let _ = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush());
}

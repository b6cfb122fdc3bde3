//! How a generation job runs: blocking on the caller's thread ([`run_blocking`]), or streamed
//! ([`spawn`]) to a listener the app implements, with a handle that cancels the work when asked or
//! dropped (so an abandoned stream never keeps a core busy).
//!
//! Each stream runs on its own thread: listener calls never run on the caller's thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use pocketlm::CancelToken;

use crate::error::{guarded, PocketError};
use crate::records::Completion;

/// Receives a streamed generation, on a pocketlm thread (not the caller's). Exactly one of
/// `on_complete` and `on_error` ends every stream, after all its `on_token` calls.
#[uniffi::export(with_foreign)]
pub trait GenerationListener: Send + Sync {
    /// The next piece of text: whole UTF-8 characters, never part of a stop string.
    fn on_token(&self, text: String);
    /// Generation ended normally (also when cancelled: `finish_reason` says so).
    fn on_complete(&self, completion: Completion);
    /// Generation failed; no more calls follow.
    fn on_error(&self, error: PocketError);
}

/// A running stream. `cancel()` stops it at the next token; dropping (or closing) the handle
/// cancels it too, so keep the handle for as long as you want the stream.
#[derive(uniffi::Object)]
pub struct GenerationHandle {
    cancel: CancelToken,
    finished: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[uniffi::export]
impl GenerationHandle {
    /// Asks the stream to stop; its listener then gets `on_complete` with `Cancelled`.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// True once the listener has received its final call.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Blocks until the stream has ended (its final listener call has returned).
    pub fn join(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for GenerationHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Runs a generation `job` (given a cancel token and a text sink) here, to its end: nothing
/// streamed, never cancelled, a panic becoming `Internal`.
pub(crate) fn run_blocking(
    job: impl FnOnce(&CancelToken, &mut dyn FnMut(&str)) -> Result<pocketlm::Completion, PocketError>,
) -> Result<Completion, PocketError> {
    guarded(|| job(&CancelToken::new(), &mut |_| {}).map(Into::into))
}

/// Runs `job` on a new thread, streaming its text to `listener` and ending with exactly one of
/// `on_complete` / `on_error` (a panic in `job` or in the listener becomes `on_error`).
pub(crate) fn spawn(
    listener: Arc<dyn GenerationListener>,
    job: impl FnOnce(&CancelToken, &mut dyn FnMut(&str)) -> Result<pocketlm::Completion, PocketError> + Send + 'static,
) -> Result<Arc<GenerationHandle>, PocketError> {
    let cancel = CancelToken::new();
    let finished = Arc::new(AtomicBool::new(false));
    let (token, done) = (cancel.clone(), finished.clone());
    let thread = std::thread::Builder::new()
        .name("pocketlm-stream".into())
        .spawn(move || {
            let result = guarded(|| job(&token, &mut |piece| listener.on_token(piece.to_string())));
            let end = guarded(|| {
                match result {
                    Ok(c) => listener.on_complete(c.into()),
                    Err(e) => listener.on_error(e),
                }
                Ok(())
            });
            if let Err(e) = end {
                log::error!("stream listener failed in its final call: {e}");
            }
            done.store(true, Ordering::Release);
        })
        .map_err(|e| PocketError::Internal { reason: format!("cannot start a stream thread: {e}") })?;
    Ok(Arc::new(GenerationHandle { cancel, finished, thread: Mutex::new(Some(thread)) }))
}

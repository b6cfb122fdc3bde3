//! C ABI for firmware and other C callers: load, generate with a streaming callback, cancel,
//! free, error codes and messages. The header is generated (`cargo xtask c-header`,
//! `bindings/include/pocketlm.h`).
//!
//! Conventions: every object made here is freed by its `*_free` function (NULL is accepted);
//! strings in are NUL-terminated UTF-8 (anything else is `POCKETLM_INVALID_INPUT`); strings out
//! are owned by the caller and freed with `pocketlm_string_free`; a failing call returns a non-OK
//! status or NULL and, if `error` is not NULL, stores an error to read and free. No panic
//! crosses this boundary: one is reported as `POCKETLM_INTERNAL`.

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::Arc;

use pocketlm::CancelToken;

use crate::error::{guarded, PocketError};
use crate::model::PocketModel;
use crate::records::{Completion, FinishReason, GenerationParams, KvCache, LoadOptions};

/// Result of a call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PocketlmStatus {
    /// Success.
    Ok = 0,
    /// The model directory is missing, unreadable, corrupt or not a pocketlm model.
    Model = 1,
    /// A parameter, pointer or string was rejected.
    InvalidInput = 2,
    /// The prompt and output do not fit the context.
    ContextOverflow = 3,
    /// The call cannot run in the current state.
    InvalidState = 4,
    /// Inference failed or a bug was caught.
    Internal = 5,
}

/// Why generation ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PocketlmFinishReason {
    /// The model ended its answer.
    EndOfText = 0,
    /// A stop string appeared.
    Stop = 1,
    /// `max_tokens` were generated.
    MaxTokens = 2,
    /// The context is full.
    ContextFull = 3,
    /// Cancelled through a `PocketlmCancel`.
    Cancelled = 4,
}

/// Element type of each conversation's KV cache (`pocketlm_model_load`'s `kv_cache`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PocketlmKvCache {
    /// Half precision (the default): 23 KB per token of context for the default model.
    F16 = 0,
    /// Single precision: exactly the graph's arithmetic, twice f16's memory.
    F32 = 1,
    /// int8 with one scale per position and head: about half f16's memory.
    Q8 = 2,
}

impl PocketlmKvCache {
    /// The value a C caller passed, if it is one of the enum's.
    fn from_raw(raw: u32) -> Result<KvCache, PocketError> {
        Ok(match raw {
            x if x == Self::F16 as u32 => KvCache::F16,
            x if x == Self::F32 as u32 => KvCache::F32,
            x if x == Self::Q8 as u32 => KvCache::Q8,
            other => return Err(PocketError::input(format!("kv_cache {other} is not a PocketlmKvCache"))),
        })
    }
}

/// Generation parameters; start from `pocketlm_params_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PocketlmParams {
    /// Most tokens to generate (at least 1).
    pub max_tokens: u32,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: u32,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f32,
    /// Drop tokens below this fraction of the top probability (0 = off).
    pub min_p: f32,
    /// Penalty for recently seen tokens (1 = off).
    pub repeat_penalty: f32,
    /// Tokens looked back for the penalty.
    pub repeat_window: u32,
    /// Random seed, used when `has_seed` is true.
    pub seed: u64,
    /// Whether `seed` is set (else a random seed is drawn).
    pub has_seed: bool,
}

/// A loaded model (opaque).
pub struct PocketlmModel(Arc<PocketModel>);

/// An error: a status code and a message (opaque).
pub struct PocketlmError {
    status: PocketlmStatus,
    message: CString,
}

/// A cancellation flag, shareable between threads (opaque).
pub struct PocketlmCancel(CancelToken);

/// Called with each piece of generated text: `len` bytes of whole UTF-8 characters at `text`,
/// also NUL-terminated; valid only during the call.
pub type PocketlmTokenCallback = Option<unsafe extern "C" fn(text: *const c_char, len: usize, user_data: *mut c_void)>;

impl From<&PocketError> for PocketlmStatus {
    fn from(e: &PocketError) -> Self {
        match e {
            PocketError::Model { .. } => PocketlmStatus::Model,
            PocketError::InvalidInput { .. } => PocketlmStatus::InvalidInput,
            PocketError::ContextOverflow { .. } => PocketlmStatus::ContextOverflow,
            PocketError::InvalidState { .. } => PocketlmStatus::InvalidState,
            PocketError::Internal { .. } => PocketlmStatus::Internal,
        }
    }
}

impl From<FinishReason> for PocketlmFinishReason {
    fn from(r: FinishReason) -> Self {
        match r {
            FinishReason::EndOfText => PocketlmFinishReason::EndOfText,
            FinishReason::Stop => PocketlmFinishReason::Stop,
            FinishReason::MaxTokens => PocketlmFinishReason::MaxTokens,
            FinishReason::ContextFull => PocketlmFinishReason::ContextFull,
            FinishReason::Cancelled => PocketlmFinishReason::Cancelled,
        }
    }
}

/// Stores `e` in `*error` (when given) and returns its status.
unsafe fn fail(e: PocketError, error: *mut *mut PocketlmError) -> PocketlmStatus {
    let status = PocketlmStatus::from(&e);
    if !error.is_null() {
        let message = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
        *error = Box::into_raw(Box::new(PocketlmError { status, message }));
    }
    status
}

/// A Rust string from a C one: NULL and invalid UTF-8 are `InvalidInput`.
unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, PocketError> {
    if ptr.is_null() {
        return Err(PocketError::input(format!("{what} is NULL")));
    }
    CStr::from_ptr(ptr).to_str().map_err(|e| PocketError::input(format!("{what} is not valid UTF-8: {e}")))
}

/// The default generation parameters.
#[no_mangle]
pub extern "C" fn pocketlm_params_default() -> PocketlmParams {
    let p = GenerationParams::default();
    PocketlmParams {
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        repeat_window: p.repeat_window,
        seed: p.seed.unwrap_or(0),
        has_seed: p.seed.is_some(),
    }
}

/// Loads and verifies a model directory. `threads` 0 = this device's cores (at most 4);
/// `context_size` 0 = the model's context; `kv_cache` a `PocketlmKvCache` value (anything else
/// is `POCKETLM_INVALID_INPUT`). Returns NULL on failure.
///
/// # Safety
/// `model_dir` is NULL or a NUL-terminated string; `error` is NULL or points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn pocketlm_model_load(
    model_dir: *const c_char,
    threads: u32,
    context_size: u32,
    kv_cache: u32,
    error: *mut *mut PocketlmError,
) -> *mut PocketlmModel {
    let loaded = guarded(|| {
        let model_dir = text(model_dir, "model_dir")?.to_string();
        let kv_cache = PocketlmKvCache::from_raw(kv_cache)?;
        PocketModel::load(LoadOptions { model_dir, threads, context_size, kv_cache: Some(kv_cache) })
    });
    match loaded {
        Ok(m) => Box::into_raw(Box::new(PocketlmModel(m))),
        Err(e) => {
            fail(e, error);
            std::ptr::null_mut()
        }
    }
}

/// Frees a model (NULL is ignored). Generations running on it must have returned.
///
/// # Safety
/// `model` is NULL or was returned by `pocketlm_model_load` and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn pocketlm_model_free(model: *mut PocketlmModel) {
    if !model.is_null() {
        drop(Box::from_raw(model));
    }
}

/// Answers one user `prompt` (with the model's chat template), calling `on_token` (if not NULL)
/// with each piece of text on the calling thread. `params` NULL means the defaults; `cancel`
/// (may be NULL) stops it from another thread or from the callback. On success stores the whole
/// text in `*out_text` (if not NULL; free with `pocketlm_string_free`) and why it ended in
/// `*out_finish` (if not NULL).
///
/// # Safety
/// Pointers are NULL (where allowed) or valid for the call; `prompt` is NUL-terminated;
/// `on_token` must not unwind.
#[no_mangle]
pub unsafe extern "C" fn pocketlm_generate(
    model: *const PocketlmModel,
    prompt: *const c_char,
    params: *const PocketlmParams,
    on_token: PocketlmTokenCallback,
    user_data: *mut c_void,
    cancel: *const PocketlmCancel,
    out_text: *mut *mut c_char,
    out_finish: *mut PocketlmFinishReason,
    error: *mut *mut PocketlmError,
) -> PocketlmStatus {
    let result = guarded(|| {
        let model = model.as_ref().ok_or_else(|| PocketError::input("model is NULL"))?;
        let prompt = text(prompt, "prompt")?;
        let params = params.as_ref().map_or_else(GenerationParams::default, |p| GenerationParams {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            repeat_window: p.repeat_window,
            seed: p.has_seed.then_some(p.seed),
            stop: Vec::new(),
        });
        let token = cancel.as_ref().map_or_else(CancelToken::new, |c| c.0.clone());
        let mut emit = |piece: &str| {
            if let (Some(f), Ok(c)) = (on_token, CString::new(piece)) {
                f(c.as_ptr(), piece.len(), user_data);
            }
        };
        model.0.answer(prompt, &params.to_core()?, &token, &mut emit).map(Completion::from)
    });
    match result {
        Ok(done) => {
            if !out_text.is_null() {
                *out_text = CString::new(done.text.replace('\0', " ")).unwrap_or_default().into_raw();
            }
            if !out_finish.is_null() {
                *out_finish = done.finish_reason.into();
            }
            PocketlmStatus::Ok
        }
        Err(e) => fail(e, error),
    }
}

/// A new cancellation flag.
#[no_mangle]
pub extern "C" fn pocketlm_cancel_new() -> *mut PocketlmCancel {
    Box::into_raw(Box::new(PocketlmCancel(CancelToken::new())))
}

/// Raises the flag: generations using it stop at their next token (thread-safe).
///
/// # Safety
/// `cancel` is NULL or a live flag from `pocketlm_cancel_new`.
#[no_mangle]
pub unsafe extern "C" fn pocketlm_cancel(cancel: *const PocketlmCancel) {
    if let Some(c) = cancel.as_ref() {
        c.0.cancel();
    }
}

/// Frees a cancellation flag (NULL is ignored) once no generation uses it.
///
/// # Safety
/// `cancel` is NULL or was returned by `pocketlm_cancel_new` and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn pocketlm_cancel_free(cancel: *mut PocketlmCancel) {
    if !cancel.is_null() {
        drop(Box::from_raw(cancel));
    }
}

/// The status of an error (`POCKETLM_INTERNAL` for NULL).
///
/// # Safety
/// `error` is NULL or a live error.
#[no_mangle]
pub unsafe extern "C" fn pocketlm_error_status(error: *const PocketlmError) -> PocketlmStatus {
    error.as_ref().map_or(PocketlmStatus::Internal, |e| e.status)
}

/// The message of an error, valid until the error is freed ("" for NULL).
///
/// # Safety
/// `error` is NULL or a live error.
#[no_mangle]
pub unsafe extern "C" fn pocketlm_error_message(error: *const PocketlmError) -> *const c_char {
    error.as_ref().map_or(c"".as_ptr(), |e| e.message.as_ptr())
}

/// Frees an error (NULL is ignored).
///
/// # Safety
/// `error` is NULL or a live error not freed yet.
#[no_mangle]
pub unsafe extern "C" fn pocketlm_error_free(error: *mut PocketlmError) {
    if !error.is_null() {
        drop(Box::from_raw(error));
    }
}

/// Frees a string returned by pocketlm (NULL is ignored).
///
/// # Safety
/// `s` is NULL or a string pocketlm returned and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn pocketlm_string_free(s: *mut c_char) {
    if !s.is_null() {
        drop(CString::from_raw(s));
    }
}

/// A static name for a status ("ok", "model", "invalid_input", ...).
#[no_mangle]
pub extern "C" fn pocketlm_status_name(status: PocketlmStatus) -> *const c_char {
    match status {
        PocketlmStatus::Ok => c"ok",
        PocketlmStatus::Model => c"model",
        PocketlmStatus::InvalidInput => c"invalid_input",
        PocketlmStatus::ContextOverflow => c"context_overflow",
        PocketlmStatus::InvalidState => c"invalid_state",
        PocketlmStatus::Internal => c"internal",
    }
    .as_ptr()
}

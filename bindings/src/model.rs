//! `PocketModel`: a loaded model that many conversations share (one copy of the weights).

use std::sync::Arc;

use pocketlm::{CancelToken, GenerateParams, Message, Model, ModelOptions, Role, Session, SessionOptions};

use crate::chat::ChatSession;
use crate::error::{guarded, PocketError};
use crate::records::{Completion, GenerationParams, KvCache, LoadOptions, ModelInfo};
use crate::stream::{run_blocking, spawn, GenerationHandle, GenerationListener};

/// A loaded, verified model. Thread-safe: share one per app; every call runs on its own session.
#[derive(uniffi::Object)]
pub struct PocketModel {
    model: Arc<Model>,
    context_size: usize,
    kv_cache: KvCache,
}

#[uniffi::export]
impl PocketModel {
    /// Loads and verifies (sha256 of every file) a model directory. Blocking: ~0.3 s for the
    /// default model on a desktop core; call it off the UI thread.
    #[uniffi::constructor]
    pub fn load(options: LoadOptions) -> Result<Arc<Self>, PocketError> {
        #[cfg(target_os = "android")]
        crate::android::init_logging();
        guarded(|| {
            let threads = match options.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(4),
                n => n as usize,
            };
            let model = Model::load(&options.model_dir, &ModelOptions { threads, ..ModelOptions::default() })?;
            let context_size = match options.context_size as usize {
                0 => model.config().context_length,
                n if n > model.config().context_length => {
                    return Err(PocketError::input(format!(
                        "context_size {n} exceeds the model's context length {}",
                        model.config().context_length
                    )))
                }
                n => n,
            };
            Ok(Arc::new(PocketModel { model, context_size, kv_cache: options.kv_cache.unwrap_or_default() }))
        })
    }

    /// What this model is.
    pub fn info(&self) -> ModelInfo {
        let c = self.model.config();
        ModelInfo {
            model_id: c.model_id.clone(),
            model_dir: self.model.dir().display().to_string(),
            context_length: c.context_length as u32,
            context_size: self.context_size as u32,
            kv_cache: self.kv_cache,
            vocab_size: c.hparams.vocab_size as u32,
            num_layers: c.kv_cache.num_layers as u32,
            hidden_size: c.hparams.hidden_size as u32,
            threads: self.model.threads() as u32,
            weight_bytes_per_token: self.model.weight_bytes_per_token() as u64,
            load_time_ms: self.model.load_time_ms(),
        }
    }

    /// Answers one user `prompt` (formatted with the model's chat template), blocking until done.
    pub fn generate(&self, prompt: String, params: GenerationParams) -> Result<Completion, PocketError> {
        let params = params.to_core()?;
        run_blocking(|cancel, on_text| self.answer(&prompt, &params, cancel, on_text))
    }

    /// As `generate`, streaming the answer to `listener` on a pocketlm thread.
    pub fn generate_stream(
        self: Arc<Self>,
        prompt: String,
        params: GenerationParams,
        listener: Arc<dyn GenerationListener>,
    ) -> Result<Arc<GenerationHandle>, PocketError> {
        let params = params.to_core()?;
        spawn(listener, move |cancel, on_text| self.answer(&prompt, &params, cancel, on_text))
    }

    /// Summarises `text` in a few sentences, blocking until done. The text and the summary must
    /// fit the context together, else `ContextOverflow`.
    pub fn summarize(&self, text: String, params: GenerationParams) -> Result<Completion, PocketError> {
        let params = params.to_core()?;
        run_blocking(|cancel, on_text| self.summary(&text, &params, cancel, on_text))
    }

    /// As `summarize`, streaming the summary to `listener` on a pocketlm thread.
    pub fn summarize_stream(
        self: Arc<Self>,
        text: String,
        params: GenerationParams,
        listener: Arc<dyn GenerationListener>,
    ) -> Result<Arc<GenerationHandle>, PocketError> {
        let params = params.to_core()?;
        spawn(listener, move |cancel, on_text| self.summary(&text, &params, cancel, on_text))
    }

    /// A new multi-turn conversation, optionally with a system message. Conversations are
    /// independent and may run on different threads at the same time.
    pub fn chat(&self, system: Option<String>) -> Result<Arc<ChatSession>, PocketError> {
        guarded(|| ChatSession::new(self.session()?, system.as_deref()).map(Arc::new))
    }
}

impl PocketModel {
    fn session(&self) -> Result<Session, PocketError> {
        let options = SessionOptions {
            context_size: self.context_size,
            kv_precision: self.kv_cache.into(),
            ..SessionOptions::default()
        };
        Ok(self.model.session(options)?)
    }

    pub(crate) fn answer(
        &self,
        prompt: &str,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<pocketlm::Completion, PocketError> {
        let text = self.model.chat_template().render(&[Message::new(Role::User, prompt)], true)?;
        let ids = self.model.tokenizer().encode(&text)?;
        let mut session = self.session()?;
        Ok(pocketlm::generate(&mut session, &ids, params, cancel, on_text)?)
    }

    fn summary(
        &self,
        text: &str,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<pocketlm::Completion, PocketError> {
        Ok(pocketlm::summarize(&mut self.session()?, text, params, cancel, on_text)?)
    }
}

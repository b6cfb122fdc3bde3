//! Plain records and enums crossing the boundary, with defaults, and their conversions to and
//! from the engine's types.

use crate::error::PocketError;

/// How to load a model. Only `model_dir` is required.
#[derive(Debug, Clone, uniffi::Record)]
pub struct LoadOptions {
    /// Directory with model.onnx, tokenizer.json and config.json (`pocketlm fetch` makes one).
    pub model_dir: String,
    /// Threads per inference step; 0 picks this device's cores, at most 4.
    #[uniffi(default = 0)]
    pub threads: u32,
    /// Tokens each conversation may hold (prompt + output); 0 means the model's full context.
    /// Smaller contexts use less memory (the KV cache grows with the tokens actually held).
    #[uniffi(default = 0)]
    pub context_size: u32,
    /// Element type of each conversation's KV cache (memory per token of context); none means
    /// `KvCache::F16`.
    #[uniffi(default = None)]
    pub kv_cache: Option<KvCache>,
}

/// Element type of a conversation's KV cache: memory per token of context against exactness.
/// For the default model a token of context takes 23 KB at `F16`, 46 KB at `F32`, 12.2 KB at
/// `Q8`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, uniffi::Enum)]
pub enum KvCache {
    /// Half precision (llama.cpp's default).
    #[default]
    F16,
    /// Single precision: exactly the graph's arithmetic, twice f16's memory.
    F32,
    /// int8 with one scale per position and head: about half f16's memory; measured perplexity
    /// within noise of f16's.
    Q8,
}

impl From<KvCache> for pocketlm::KvPrecision {
    fn from(kv: KvCache) -> Self {
        match kv {
            KvCache::F16 => pocketlm::KvPrecision::F16,
            KvCache::F32 => pocketlm::KvPrecision::F32,
            KvCache::Q8 => pocketlm::KvPrecision::Q8,
        }
    }
}

/// How to generate. Every field has a default; `temperature` 0 is greedy (deterministic).
#[derive(Debug, Clone, uniffi::Record)]
pub struct GenerationParams {
    /// Most tokens to generate.
    #[uniffi(default = 256)]
    pub max_tokens: u32,
    /// Softmax temperature; 0 picks the most likely token.
    #[uniffi(default = 0.3)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    #[uniffi(default = 40)]
    pub top_k: u32,
    /// Nucleus sampling mass (1 = off).
    #[uniffi(default = 0.9)]
    pub top_p: f32,
    /// Drop tokens below this fraction of the top probability (0 = off).
    #[uniffi(default = 0.05)]
    pub min_p: f32,
    /// Penalty for tokens seen in the last `repeat_window` tokens (1 = off).
    #[uniffi(default = 1.1)]
    pub repeat_penalty: f32,
    /// Tokens looked back for `repeat_penalty`.
    #[uniffi(default = 64)]
    pub repeat_window: u32,
    /// Random seed; none draws one (different output each call).
    #[uniffi(default = None)]
    pub seed: Option<u64>,
    /// Strings that end generation; they are not part of the output.
    #[uniffi(default = [])]
    pub stop: Vec<String>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        let core = pocketlm::GenerateParams::default();
        GenerationParams {
            max_tokens: core.max_tokens as u32,
            temperature: core.sampling.temperature,
            top_k: core.sampling.top_k as u32,
            top_p: core.sampling.top_p,
            min_p: core.sampling.min_p,
            repeat_penalty: core.sampling.repeat_penalty,
            repeat_window: core.sampling.repeat_window as u32,
            seed: core.sampling.seed,
            stop: core.stop,
        }
    }
}

impl GenerationParams {
    /// The engine's parameters, validated.
    pub(crate) fn to_core(&self) -> Result<pocketlm::GenerateParams, PocketError> {
        let params = pocketlm::GenerateParams {
            max_tokens: self.max_tokens as usize,
            sampling: pocketlm::SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k as usize,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_window: self.repeat_window as usize,
                seed: self.seed,
            },
            stop: self.stop.clone(),
        };
        params.validate()?;
        Ok(params)
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum FinishReason {
    /// The model ended its answer.
    EndOfText,
    /// A stop string appeared.
    Stop,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The conversation's context is full.
    ContextFull,
    /// Cancelled by the caller.
    Cancelled,
}

impl From<pocketlm::FinishReason> for FinishReason {
    fn from(r: pocketlm::FinishReason) -> Self {
        match r {
            pocketlm::FinishReason::Eos => FinishReason::EndOfText,
            pocketlm::FinishReason::Stop => FinishReason::Stop,
            pocketlm::FinishReason::MaxTokens => FinishReason::MaxTokens,
            pocketlm::FinishReason::ContextFull => FinishReason::ContextFull,
            pocketlm::FinishReason::Cancelled => FinishReason::Cancelled,
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Completion {
    /// The generated text (what was streamed, concatenated).
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Prompt tokens evaluated for this call (tokens already cached are not counted).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Milliseconds until the first generated token.
    pub time_to_first_token_ms: f64,
    /// Generated tokens per second after the first.
    pub tokens_per_second: f64,
}

impl From<pocketlm::Completion> for Completion {
    fn from(c: pocketlm::Completion) -> Self {
        let t = &c.timings;
        let tokens_per_second = if t.decode_ms > 0.0 { t.decode_tokens as f64 * 1e3 / t.decode_ms } else { 0.0 };
        Completion {
            prompt_tokens: (c.prompt_token_ids.len() - c.cached_tokens.min(c.prompt_token_ids.len())) as u32,
            completion_tokens: c.token_ids.len() as u32,
            time_to_first_token_ms: t.ttft_ms,
            tokens_per_second,
            finish_reason: c.finish_reason.into(),
            text: c.text,
        }
    }
}

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ChatRole {
    /// Instructions for the assistant.
    System,
    /// The person chatting.
    User,
    /// The model.
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: ChatRole,
    /// What it says.
    pub content: String,
}

impl From<&pocketlm::Message> for ChatMessage {
    fn from(m: &pocketlm::Message) -> Self {
        let role = match m.role {
            pocketlm::Role::System => ChatRole::System,
            pocketlm::Role::User => ChatRole::User,
            pocketlm::Role::Assistant => ChatRole::Assistant,
        };
        ChatMessage { role, content: m.content.clone() }
    }
}

/// What a loaded model is.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ModelInfo {
    /// Model id from its config.
    pub model_id: String,
    /// Directory it was loaded from.
    pub model_dir: String,
    /// The model's maximum context, in tokens.
    pub context_length: u32,
    /// Context each conversation gets (LoadOptions.context_size, or the model's).
    pub context_size: u32,
    /// Element type of each conversation's KV cache (LoadOptions.kv_cache).
    pub kv_cache: KvCache,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// Decoder layers.
    pub num_layers: u32,
    /// Hidden size.
    pub hidden_size: u32,
    /// Threads per inference step.
    pub threads: u32,
    /// Bytes of weights read per generated token.
    pub weight_bytes_per_token: u64,
    /// Milliseconds the load took.
    pub load_time_ms: f64,
}

//! Command-line options shared by several subcommands.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use pocketlm::{GenerateParams, SamplingParams};

/// Which model to load and how.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model directory (default: the default model, made ready by `pocketlm fetch`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weight format of the default model when --model is not given (q4, q4-head8, q8, f32, q4-pruned; default: the
    /// manifest's default).
    #[arg(long, conflicts_with = "model")]
    pub weights: Option<String>,
    /// Threads per inference step (default: this machine's cores, at most 4).
    #[arg(long, default_value_t = pocketlm::ModelOptions::default().threads)]
    pub threads: usize,
    /// Tokens of context for the session (0 = the model's full context).
    #[arg(long, default_value_t = 0)]
    pub context_size: usize,
    /// Prompt tokens evaluated per step during prefill (bounds memory).
    #[arg(long, default_value_t = pocketlm::SessionOptions::default().prefill_chunk)]
    pub prefill_chunk: usize,
    /// KV cache precision: f16 (half the memory of f32), f32 (exactly the ONNX graph's
    /// arithmetic) or q8 (int8, about half the memory of f16).
    #[arg(long, value_enum, default_value_t = KvCache::F16)]
    pub kv_cache: KvCache,
}

/// `--kv-cache` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KvCache {
    /// Half precision.
    F16,
    /// Single precision.
    F32,
    /// 8-bit, one scale per position and head (about half the memory of f16).
    Q8,
}

impl ModelArgs {
    /// The KV cache precision `--kv-cache` names.
    pub fn kv_precision(&self) -> pocketlm::KvPrecision {
        match self.kv_cache {
            KvCache::F16 => pocketlm::KvPrecision::F16,
            KvCache::F32 => pocketlm::KvPrecision::F32,
            KvCache::Q8 => pocketlm::KvPrecision::Q8,
        }
    }
}

/// Token sampling and stopping.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Always pick the most likely token.
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed"])]
    pub greedy: bool,
    /// Softmax temperature (0 = greedy).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass (1 = off).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Drop tokens below this fraction of the best one's probability (0 = off).
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Penalty for recently generated tokens (1 = off).
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// How many recent tokens the penalty considers.
    #[arg(long)]
    pub repeat_window: Option<usize>,
    /// Random seed, for reproducible sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Stop when this string is generated (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The engine's parameters for these options.
    pub fn params(&self) -> GenerateParams {
        let mut s = if self.greedy { SamplingParams::greedy() } else { SamplingParams::default() };
        if let Some(v) = self.temperature {
            s.temperature = v;
        }
        if let Some(v) = self.top_k {
            s.top_k = v;
        }
        if let Some(v) = self.top_p {
            s.top_p = v;
        }
        if let Some(v) = self.min_p {
            s.min_p = v;
        }
        if let Some(v) = self.repeat_penalty {
            s.repeat_penalty = v;
        }
        if let Some(v) = self.repeat_window {
            s.repeat_window = v;
        }
        s.seed = self.seed;
        GenerateParams { max_tokens: self.max_tokens, sampling: s, stop: self.stop.clone() }
    }
}

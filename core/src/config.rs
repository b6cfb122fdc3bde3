//! `config.json` of a model directory: what the converter recorded about the model.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The only config format version this engine reads.
pub const CONFIG_FORMAT_VERSION: u32 = 1;

/// Size and checksum of one file of the model directory.
#[derive(Debug, Clone, Deserialize)]
pub struct FileEntry {
    /// Hex sha256 of the file.
    pub sha256: String,
    /// File size in bytes.
    pub bytes: u64,
}

/// KV-cache geometry, layout `[batch, kv_heads, sequence, head_dim]`.
#[derive(Debug, Clone, Deserialize)]
pub struct KvCacheConfig {
    /// Number of decoder layers (one key and one value cache each).
    pub num_layers: usize,
    /// Key/value heads per layer.
    pub num_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
}

/// Names of the graph's inputs and outputs (`{}` stands for the layer index).
#[derive(Debug, Clone, Deserialize)]
pub struct IoNames {
    /// Token ids input, `[batch, sequence]` i64.
    pub input_ids: String,
    /// Positions input, `[batch, sequence]` i64.
    pub position_ids: String,
    /// Logits output, `[batch, sequence, vocab]` f32.
    pub logits: String,
    /// Past keys input pattern.
    pub past_key: String,
    /// Past values input pattern.
    pub past_value: String,
    /// Present keys output pattern.
    pub present_key: String,
    /// Present values output pattern.
    pub present_value: String,
    /// Tensor entering each layer's attention block: queries `[1, kv_heads, group * seq, head_dim]`
    /// (optional: when present with `attention_output`, the block is replaced by a fused op).
    #[serde(default)]
    pub attention_query: Option<String>,
    /// Tensor leaving each layer's attention block, same shape as the queries.
    #[serde(default)]
    pub attention_output: Option<String>,
    /// Outputs of the rotary embeddings (`x * cos + rotate_half(x) * sin`); each one's input is
    /// named `{output}.in`. Optional: when given with `rope_cos` and `rope_sin`, fused at load.
    #[serde(default)]
    pub rope_outputs: Vec<String>,
    /// The cos table `[1, 1, seq, head_dim]`.
    #[serde(default)]
    pub rope_cos: Option<String>,
    /// The sin table `[1, 1, seq, head_dim]`.
    #[serde(default)]
    pub rope_sin: Option<String>,
}

/// Architecture numbers recorded by the converter.
#[derive(Debug, Clone, Deserialize)]
pub struct HParams {
    /// Vocabulary size (rows of the LM head).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
}

/// Parsed `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    /// Must be `pocketlm-model`.
    pub format: String,
    /// Must be 1 (the only config format this engine reads).
    pub format_version: u32,
    /// Human-readable model id.
    pub model_id: String,
    /// Architecture numbers.
    pub hparams: HParams,
    /// Maximum tokens in the context window.
    pub context_length: usize,
    /// KV cache geometry.
    pub kv_cache: KvCacheConfig,
    /// Graph input/output names.
    pub io: IoNames,
    /// Tokens that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Token to prepend to prompts, if the model wants one.
    pub bos_token_id: Option<u32>,
    /// Jinja chat template.
    pub chat_template: String,
    /// Files of the model directory with their checksums.
    pub files: BTreeMap<String, FileEntry>,
}

impl ModelConfig {
    /// Reads and checks `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let config: ModelConfig =
            serde_json::from_str(&text).map_err(|e| Error::Config { path: path.clone(), reason: e.to_string() })?;
        config.check(&path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let fail = |reason: String| Err(Error::Config { path: path.to_path_buf(), reason });
        if self.format != "pocketlm-model" {
            return fail(format!("format is {:?}, expected \"pocketlm-model\"", self.format));
        }
        if self.format_version != CONFIG_FORMAT_VERSION {
            return fail(format!(
                "format_version {} is not supported (this engine reads {CONFIG_FORMAT_VERSION})",
                self.format_version
            ));
        }
        for name in ["model.onnx", "tokenizer.json"] {
            if !self.files.contains_key(name) {
                return fail(format!("files has no entry for {name}"));
            }
        }
        if self.context_length == 0 || self.hparams.vocab_size == 0 || self.kv_cache.num_layers == 0 {
            return fail("context_length, vocab_size and num_layers must be positive".into());
        }
        if let Some(bad) = self.eos_token_ids.iter().find(|&&id| id as usize >= self.hparams.vocab_size) {
            return fail(format!("eos token id {bad} is outside the vocabulary"));
        }
        Ok(())
    }
}

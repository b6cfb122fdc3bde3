//! `Model`: a verified, loaded model directory, shared by many sessions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::graph::DecoderGraph;
use crate::integrity;
use crate::memory;
use crate::session::{Session, SessionOptions};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Threads used by one inference step (tract's multithread executor). At least 1.
    pub threads: usize,
    /// Compute the logits of every evaluated position, which [`Session::score`] (perplexity)
    /// needs. Off by default: generation needs only the last position's, and the others cost
    /// prefill time and a `[chunk, vocab]` buffer.
    pub all_logits: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        ModelOptions { threads: cores.min(4), all_logits: false }
    }
}

/// A loaded model: graph, tokenizer, chat template and config. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Model {
    dir: PathBuf,
    config: ModelConfig,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    graph: DecoderGraph,
    threads: usize,
    all_logits: bool,
    load_time_ms: f64,
}

impl Model {
    /// Loads the model directory `dir` (config.json, model.onnx, tokenizer.json), verifying
    /// every file's sha256 against config.json. The checksums and the tokenizer are computed on
    /// a second thread while the graph is parsed and optimised (parsing is memory-safe on any
    /// bytes); nothing is returned unless every checksum matches, and a mismatch is reported as
    /// [`Error::Checksum`] even if the damaged file also failed to parse.
    pub fn load(dir: impl AsRef<Path>, options: &ModelOptions) -> Result<Arc<Model>> {
        let started = Instant::now();
        let dir = dir.as_ref();
        if options.threads == 0 || options.threads > 256 {
            return Err(Error::param("threads", format!("{} is not in 1..=256", options.threads)));
        }
        let config = ModelConfig::load(dir)?;
        let (checked, graph) = std::thread::scope(|scope| {
            let checks = scope.spawn(|| -> Result<Tokenizer> {
                // The tokenizer is verified and parsed first, while few of the weights read beside
                // it are in: parsing tokenizer.json takes ~14 MiB beyond the ~4 the tokenizer
                // keeps (freed at once), and after the checksums it met the weights at their full
                // size (default model: anonymous-memory peak of a load 116–118 -> 115–117 MiB).
                let tokenizer_json = dir.join("tokenizer.json");
                integrity::verify(&tokenizer_json, &config.files["tokenizer.json"])?;
                let tokenizer = Tokenizer::load(&tokenizer_json, config.hparams.vocab_size);
                memory::release_freed_heap();
                for (name, entry) in config.files.iter().filter(|(name, _)| *name != "tokenizer.json") {
                    integrity::verify(&dir.join(name), entry)?;
                }
                log::info!("verified {} files in {:.0} ms", config.files.len(), started.elapsed().as_secs_f64() * 1e3);
                tokenizer
            });
            let graph = DecoderGraph::load(&dir.join("model.onnx"), &config, options.threads, options.all_logits);
            let checked = checks.join().unwrap_or_else(|_| Err(Error::Inference("file verification panicked".into())));
            (checked, graph)
        });
        let tokenizer = checked?;
        let graph = graph?;
        let template = ChatTemplate::new(&config.chat_template)?;
        memory::release_freed_heap();
        let load_time_ms = started.elapsed().as_secs_f64() * 1e3;
        log::info!("loaded {} from {} in {load_time_ms:.0} ms", config.model_id, dir.display());
        Ok(Arc::new(Model {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            template,
            graph,
            threads: options.threads,
            all_logits: options.all_logits,
            load_time_ms,
        }))
    }

    /// A new, empty session (its own KV cache) on this model.
    pub fn session(self: &Arc<Self>, options: SessionOptions) -> Result<Session> {
        Session::new(self.clone(), options)
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model's chat template.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Threads per inference step.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether every position's logits are computed (see [`ModelOptions::all_logits`]).
    pub fn all_logits(&self) -> bool {
        self.all_logits
    }

    /// Bytes of weights one decoded token reads (the memory-bandwidth floor of decode).
    pub fn weight_bytes_per_token(&self) -> usize {
        self.graph.weight_bytes()
    }

    /// Wall time `load` took (verify + parse + optimise), in milliseconds.
    pub fn load_time_ms(&self) -> f64 {
        self.load_time_ms
    }

    pub(crate) fn graph(&self) -> &DecoderGraph {
        &self.graph
    }
}

//! pocketlm: an offline small-language-model runtime on tract.
//!
//! Data flows one way: model directory -> [`Model`] (verified, shared) -> [`Session`] (tokens +
//! KV cache) -> [`Sampler`] -> text stream -> caller. [`generate()`], [`Chat`] and [`summarize()`]
//! are the tasks on top; [`perplexity()`] measures a model on a text.
//!
//! ```no_run
//! use pocketlm::{CancelToken, GenerateParams, Model, ModelOptions, SessionOptions};
//! let model = Model::load("model-dir", &ModelOptions::default())?;
//! let mut session = model.session(SessionOptions::default())?;
//! let prompt = model.tokenizer().encode("The capital of France is")?;
//! let done = pocketlm::generate(&mut session, &prompt, &GenerateParams::default(),
//!     &CancelToken::new(), &mut |piece| print!("{piece}"))?;
//! println!("\n{:?}", done.finish_reason);
//! # Ok::<(), pocketlm::Error>(())
//! ```

#![warn(missing_docs)]

mod attention;
mod attention_layout;
#[cfg(target_arch = "x86_64")]
mod attention_x86;
mod cancel;
mod chat;
mod config;
mod embed;
mod error;
mod external;
mod filled;
mod generate;
mod graph;
mod input;
mod integrity;
mod interface;
mod kv_cache;
mod memory;
mod model;
mod nbits;
mod norm;
mod offsets;
mod perplexity;
#[cfg(test)]
mod proto_test;
mod q4;
mod q8;
mod qblock;
mod qlinear;
mod rewrite;
mod rope;
mod sampler;
mod session;
#[cfg(target_arch = "aarch64")]
mod simd_neon;
#[cfg(target_arch = "x86_64")]
mod simd_x86;
mod stop;
mod summarize;
mod swiglu;
mod table;
mod template;
mod text_stream;
mod tokenizer;
mod weights;

pub use cancel::CancelToken;
pub use chat::Chat;
pub use config::ModelConfig;
pub use error::{Error, Result};
pub use generate::{generate, Completion, FinishReason, GenerateParams, Timings};
pub use input::text_from_bytes;
pub use integrity::sha256_file;
pub use kv_cache::KvPrecision;
pub use model::{Model, ModelOptions};
pub use perplexity::{perplexity, Perplexity, PerplexityOptions};
pub use q4::kernel_name as q4_kernel_name;
pub use q8::kernel_name as q8_kernel_name;
pub use sampler::{argmax, Sampler, SamplingParams};
pub use session::{Session, SessionOptions};
pub use stop::{StopMatcher, StopOutcome};
pub use summarize::{summarize, summary_messages};
pub use template::{ChatTemplate, Message, Role};
pub use text_stream::Utf8Stream;
pub use tokenizer::Tokenizer;

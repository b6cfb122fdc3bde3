//! The decoder graph in tract: load, check its interface, optimise, and run one step.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::interface::{check_interface, find_slots, Slots};
use crate::kv_cache::KvCache;
use crate::rewrite::{fuse_attention, fuse_rope, last_position_logits, untie_shared_constants};

/// The optimised, runnable decoder, shared by all sessions of a model.
#[derive(Debug)]
pub struct DecoderGraph {
    plan: Arc<TypedRunnableModel>,
    slots: Slots,
    vocab_size: usize,
}

/// Per-session tract state (scratch buffers of the plan).
#[derive(Debug)]
pub struct GraphState(TypedSimpleState);

impl DecoderGraph {
    /// Loads `path`, checks it is a causal LM matching `config`, and prepares it to run on
    /// `threads` threads.
    pub fn load(path: &Path, config: &ModelConfig, threads: usize) -> Result<Self> {
        let graph_err = |what: &str, e: TractError| Error::Graph(format!("{what}: {e:#}"));
        let inference = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| graph_err(&format!("cannot parse {} as ONNX", path.display()), e))?;
        check_interface(&inference, config)?;
        let mut typed = inference.into_typed().map_err(|e| graph_err("type analysis failed", e))?;
        last_position_logits(&mut typed, &config.io.logits).map_err(|e| graph_err("slicing logits", e))?;
        let attention = fuse_attention(&mut typed, config).map_err(|e| graph_err("fusing attention", e))?;
        let rope = fuse_rope(&mut typed, config).map_err(|e| graph_err("fusing rope", e))?;
        log::debug!("fused attention in {attention} layers, {rope} rotary embeddings");
        // Measured on this graph (decode, 1 thread, ~20 ms/token): tract's `transformers_detect_all`
        // with its in-state KV cache, or unfolded back to a caller-fed one, gains nothing over the
        // plain optimiser. So: plain optimiser, caller-fed cache (rewind = slicing plain tensors,
        // and the same interface onnxruntime runs in the parity tests).
        let mut optimized = typed.into_optimized().map_err(|e| graph_err("optimisation failed", e))?;
        untie_shared_constants(&mut optimized).map_err(|e| graph_err("packing shared weights", e))?;
        let slots = find_slots(&optimized, config)?;
        let executor = if threads > 1 {
            tract_linalg::multithread::Executor::multithread_with_name(threads, "pocketlm")
        } else {
            tract_linalg::multithread::Executor::SingleThread
        };
        let options = RunOptions { executor: Some(executor), ..Default::default() };
        let plan = optimized.into_runnable_with_options(&options).map_err(|e| graph_err("cannot plan the model", e))?;
        let vocab_size = config.hparams.vocab_size;
        log::info!("decoder graph ready: {} layers, vocab {vocab_size}, {threads} thread(s)", slots.past.len());
        Ok(DecoderGraph { plan, slots, vocab_size })
    }

    /// Fresh per-session state.
    pub fn state(&self) -> Result<GraphState> {
        Ok(GraphState(self.plan.spawn().map_err(Error::inference)?))
    }

    /// Runs `ids` at positions `cache.len()..`, appending their keys/values to `cache`.
    /// Returns the logits of the last position. The cache changes only on success.
    pub fn step(&self, state: &mut GraphState, cache: &mut KvCache, ids: &[u32]) -> Result<Vec<f32>> {
        let s = &self.slots;
        let n = ids.len();
        let start = cache.len() as i64;
        let mut inputs: Vec<Option<TValue>> = vec![None; self.plan.model().inputs.len()];
        let ids64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let pos: Vec<i64> = (start..start + n as i64).collect();
        inputs[s.input_ids] = Some(tensor_2d(ids64)?);
        inputs[s.position_ids] = Some(tensor_2d(pos)?);
        for (layer, (k, v)) in s.past.iter().enumerate() {
            let (key, value) = cache.layer(layer);
            inputs[*k] = Some(key.clone());
            inputs[*v] = Some(value.clone());
        }
        let inputs: TVec<TValue> = inputs.into_iter().map(|t| t.expect("every input slot is filled")).collect();
        let mut outputs = state.0.run(inputs).map_err(Error::inference)?;
        let logits = std::mem::replace(&mut outputs[s.logits], tensor0(0f32).into_tvalue());
        let view = logits.to_plain_array_view::<f32>().map_err(Error::inference)?;
        let flat = view.as_slice().ok_or_else(|| Error::Inference("logits are not contiguous".into()))?;
        if flat.len() != self.vocab_size {
            return Err(Error::Inference(format!("logits have {} values, expected {}", flat.len(), self.vocab_size)));
        }
        let present = s.present.iter().map(|&(k, v)| (outputs[k].clone(), outputs[v].clone())).collect();
        cache.replace(present, cache.len() + n)?;
        Ok(flat.to_vec())
    }
}

fn tensor_2d(values: Vec<i64>) -> Result<TValue> {
    let n = values.len();
    Ok(Tensor::from_shape(&[1, n], &values).map_err(Error::inference)?.into_tvalue())
}

//! The decoder graph in tract: load, check its interface, optimise, and run one step.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{ensure, TractErrorContext};
use tract_onnx::tract_core::ops::array::Slice;
use tract_onnx::tract_core::ops::konst::Const;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;

/// Where each tensor the engine feeds or reads sits in the optimised plan.
#[derive(Debug, Clone)]
struct Slots {
    input_ids: usize,
    position_ids: usize,
    /// Plan input index of (key, value) past cache per layer.
    past: Vec<(usize, usize)>,
    logits: usize,
    /// Plan output index of (key, value) present cache per layer.
    present: Vec<(usize, usize)>,
}

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

/// Makes the LM head run on the last position only: a slice on its hidden-state input. Generation
/// needs just the next-token logits, and computing the others costs a fifth of prefill and a
/// `[sequence, vocab]` buffer (50 MB for a 256-token chunk).
fn last_position_logits(model: &mut TypedModel, logits: &str) -> TractResult<()> {
    let output = *model
        .outputs
        .iter()
        .find(|o| model.outlet_label(**o) == Some(logits) || model.node(o.node).name == logits)
        .with_context(|| format!("no output {logits}"))?;
    let head = model.node(output.node);
    let hidden = head.inputs[0];
    let fact = model.outlet_fact(hidden)?;
    ensure!(fact.rank() == 3, "LM head input has shape {:?}, expected [batch, sequence, hidden]", fact.shape);
    let seq = fact.shape[1].clone();
    let mut patch = TypedModelPatch::new("last-position logits");
    let mut inputs = tvec![patch.tap_model(model, hidden)?];
    inputs[0] = patch.wire_node(format!("{}.last", head.name), Slice::new(1, seq.clone() - 1, seq), &inputs)?[0];
    for input in &head.inputs[1..] {
        inputs.push(patch.tap_model(model, *input)?);
    }
    let sliced = patch.wire_node(format!("{}.sliced", head.name), head.op.clone(), &inputs)?[0];
    patch.shunt_outside(model, output, sliced)?;
    patch.apply(model)?;
    let new_output = *model
        .outputs
        .iter()
        .find(|o| o.node != output.node && model.node(o.node).name.ends_with(".sliced"))
        .context("sliced logits output")?;
    model.set_outlet_label(new_output, logits.to_string())
}

/// Gives every extra consumer of a shared constant its own `Const` node (the tensor data stays
/// shared, `Arc`), then folds constants again. tract pre-packs a matmul weight only when its
/// constant has a single consumer: the tied embedding feeds both the token lookup and the LM
/// head, and without this it was re-packed at every step (measured: 50 of 79 ms per decoded
/// token; 21.5 ms per token after).
fn untie_shared_constants(model: &mut TypedModel) -> TractResult<()> {
    let shared: Vec<(usize, Arc<Tensor>, Vec<InletId>)> = model
        .nodes()
        .iter()
        .filter_map(|node| {
            let konst = node.op_as::<Const>()?;
            let successors = &node.outputs[0].successors;
            (successors.len() > 1).then(|| (node.id, konst.val().clone(), successors[1..].to_vec()))
        })
        .collect();
    for (id, tensor, inlets) in shared {
        for (i, inlet) in inlets.into_iter().enumerate() {
            let name = format!("{}.consumer{}", model.node(id).name, i + 1);
            // Not `add_const`: it would hand back the existing node holding the same tensor.
            let fact = TypedFact::try_from(tensor.clone())?;
            let node = model.add_node(name, Const::new(tensor.clone())?, tvec!(fact))?;
            model.add_edge(node.into(), inlet)?;
        }
    }
    model.prop_consts()
}

fn tensor_2d(values: Vec<i64>) -> Result<TValue> {
    let n = values.len();
    Ok(Tensor::from_shape(&[1, n], &values).map_err(Error::inference)?.into_tvalue())
}

/// Checks the ONNX graph has the inputs and outputs of a causal LM with a KV cache.
fn check_interface(model: &InferenceModel, config: &ModelConfig) -> Result<()> {
    let io = &config.io;
    let names =
        |outlets: &[OutletId]| -> Vec<String> { outlets.iter().map(|o| model.node(o.node).name.clone()).collect() };
    let inputs = names(&model.inputs);
    let outputs: Vec<String> = model
        .outputs
        .iter()
        .map(|o| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()))
        .collect();
    let mut want_in = vec![io.input_ids.clone(), io.position_ids.clone()];
    let mut want_out = vec![io.logits.clone()];
    for layer in 0..config.kv_cache.num_layers {
        want_in.push(io.past_key.replace("{}", &layer.to_string()));
        want_in.push(io.past_value.replace("{}", &layer.to_string()));
        want_out.push(io.present_key.replace("{}", &layer.to_string()));
        want_out.push(io.present_value.replace("{}", &layer.to_string()));
    }
    let missing_in: Vec<_> = want_in.iter().filter(|n| !inputs.contains(n)).collect();
    let missing_out: Vec<_> = want_out.iter().filter(|n| !outputs.contains(n)).collect();
    let extra_in: Vec<_> = inputs.iter().filter(|n| !want_in.contains(n)).collect();
    if !missing_in.is_empty() || !missing_out.is_empty() || !extra_in.is_empty() {
        return Err(Error::Graph(format!(
            "not a causal LM with the KV-cache interface in config.json: missing inputs {missing_in:?}, \
             missing outputs {missing_out:?}, unexpected inputs {extra_in:?}"
        )));
    }
    Ok(())
}

/// Locates the engine's tensors among the optimised plan's inputs and outputs.
fn find_slots(model: &TypedModel, config: &ModelConfig) -> Result<Slots> {
    let io = &config.io;
    let input = |name: &str| -> Result<usize> {
        model
            .inputs
            .iter()
            .position(|o| model.node(o.node).name == name)
            .ok_or_else(|| Error::Graph(format!("optimised graph lost input {name}")))
    };
    let output = |name: &str| -> Result<usize> {
        model
            .outputs
            .iter()
            .position(|o| {
                let label = model.outlet_label(*o).unwrap_or(&model.node(o.node).name);
                label == name
            })
            .ok_or_else(|| Error::Graph(format!("optimised graph lost output {name}")))
    };
    let mut past = Vec::new();
    let mut present = Vec::new();
    for layer in 0..config.kv_cache.num_layers {
        let l = layer.to_string();
        let (pk, pv) = (io.past_key.replace("{}", &l), io.past_value.replace("{}", &l));
        past.push((input(&pk)?, input(&pv)?));
        present.push((output(&io.present_key.replace("{}", &l))?, output(&io.present_value.replace("{}", &l))?));
    }
    let slots = Slots {
        input_ids: input(&io.input_ids)?,
        position_ids: input(&io.position_ids)?,
        past,
        logits: output(&io.logits)?,
        present,
    };
    if model.inputs.len() != 2 + 2 * config.kv_cache.num_layers {
        return Err(Error::Graph(format!(
            "optimised graph has {} inputs, expected {}",
            model.inputs.len(),
            2 + 2 * config.kv_cache.num_layers
        )));
    }
    Ok(slots)
}

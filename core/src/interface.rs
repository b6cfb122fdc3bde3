//! The causal-LM interface of the decoder graph: checking it, and finding its tensors in the plan.

use tract_onnx::prelude::*;

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Where each tensor the engine feeds or reads sits in the optimised plan.
#[derive(Debug, Clone)]
pub struct Slots {
    /// Plan input index of the token ids (the positions are the other input).
    pub input_ids: usize,
    /// Plan output index of the logits.
    pub logits: usize,
}

/// Checks the ONNX graph has the inputs and outputs of a causal LM with a KV cache.
pub fn check_interface(model: &InferenceModel, config: &ModelConfig) -> Result<()> {
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

/// Locates the engine's tensors among the optimised plan's inputs and outputs (the KV cache lives
/// inside the plan, see `rewrite::fuse_attention`).
pub fn find_slots(model: &TypedModel, config: &ModelConfig) -> Result<Slots> {
    let io = &config.io;
    let input = |name: &str| -> Result<usize> {
        model
            .inputs
            .iter()
            .position(|o| model.node(o.node).name == name)
            .ok_or_else(|| Error::Graph(format!("optimised graph lost input {name}")))
    };
    let logits = model
        .outputs
        .iter()
        .position(|o| model.outlet_label(*o).unwrap_or(&model.node(o.node).name) == io.logits)
        .ok_or_else(|| Error::Graph(format!("optimised graph lost output {}", io.logits)))?;
    if model.inputs.len() != 2 || model.outputs.len() != 1 {
        return Err(Error::Graph(format!(
            "optimised graph has {} inputs and {} outputs, expected token ids, positions -> logits",
            model.inputs.len(),
            model.outputs.len()
        )));
    }
    input(&io.position_ids)?;
    Ok(Slots { input_ids: input(&io.input_ids)?, logits })
}

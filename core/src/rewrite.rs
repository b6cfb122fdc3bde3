//! Load-time rewrites of the typed decoder graph that make tract run it faster.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{ensure, TractErrorContext};
use tract_onnx::tract_core::ops::array::Slice;
use tract_onnx::tract_core::ops::konst::Const;

/// Makes the LM head run on the last position only: a slice on its hidden-state input. Generation
/// needs just the next-token logits, and computing the others costs a fifth of prefill and a
/// `[sequence, vocab]` buffer (50 MB for a 256-token chunk).
pub fn last_position_logits(model: &mut TypedModel, logits: &str) -> TractResult<()> {
    let index = model
        .outputs
        .iter()
        .position(|o| model.outlet_label(*o) == Some(logits) || model.node(o.node).name == logits)
        .with_context(|| format!("no output {logits}"))?;
    let output = model.outputs[index];
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
    // The patch rewired the model output in place; keep its name.
    model.set_outlet_label(model.outputs[index], logits.to_string())
}

/// Gives every extra consumer of a shared constant its own `Const` node (the tensor data stays
/// shared, `Arc`), then folds constants again. tract pre-packs a matmul weight only when its
/// constant has a single consumer: the tied embedding feeds both the token lookup and the LM
/// head, and without this it was re-packed at every step (measured: 50 of 79 ms per decoded
/// token; 21.5 ms per token after).
pub fn untie_shared_constants(model: &mut TypedModel) -> TractResult<()> {
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

//! Load-time rewrites of the typed decoder graph that make tract run it faster.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{bail, ensure, DimLike, TractErrorContext};
use tract_onnx::tract_core::ops::array::{Gather, Slice, TypedConcat};
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::konst::Const;

use tract_onnx::tract_core::ops::binary::{OptBinUnicast, TypedBinOp};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Mul, Sub};
use tract_onnx::tract_core::ops::nn::{RmsNorm, Sigmoid};

use crate::attention::CachedAttention;
use crate::config::ModelConfig;
use crate::embed::{Embed, GatherCodes};
use crate::norm::ResidualNorm;
use crate::qlinear::{QLinear, QWeight};
use crate::rope::Rope;
use crate::swiglu::SwiGlu;

/// Replaces each rotary embedding named in `config.io.rope_outputs` by the fused [`Rope`] op.
/// Returns how many were fused; a graph without those names is left alone.
pub fn fuse_rope(model: &mut TypedModel, config: &ModelConfig) -> TractResult<usize> {
    let io = &config.io;
    let (Some(cos), Some(sin)) = (&io.rope_cos, &io.rope_sin) else { return Ok(0) };
    let (Some(cos), Some(sin)) = (model.find_outlet_label(cos), model.find_outlet_label(sin)) else { return Ok(0) };
    let mut fused = 0;
    for layer in 0..config.kv_cache.num_layers {
        for pattern in &io.rope_outputs {
            let output = pattern.replace("{}", &layer.to_string());
            let (Some(x), Some(out)) =
                (model.find_outlet_label(&format!("{output}.in")), model.find_outlet_label(&output))
            else {
                continue;
            };
            let mut patch = TypedModelPatch::new("fuse rope");
            let inputs = [x, cos, sin].iter().map(|o| patch.tap_model(model, *o)).collect::<TractResult<TVec<_>>>()?;
            let wire = patch.wire_node(format!("{output}.fused"), Rope, &inputs)?[0];
            patch.shunt_outside(model, out, wire)?;
            patch.apply(model)?;
            fused += 1;
        }
    }
    Ok(fused)
}

/// Moves the KV cache into the graph: each layer's `past -> concat -> present -> attention` block
/// (between the tensors `config.io` names `attention_query` and `attention_output`) becomes one
/// [`CachedAttention`] that keeps its keys and values in per-session state. The past inputs and
/// present outputs leave the plan's interface.
pub fn fuse_attention(model: &mut TypedModel, config: &ModelConfig) -> TractResult<()> {
    let io = &config.io;
    let (Some(query), Some(output)) = (&io.attention_query, &io.attention_output) else {
        bail!("config.json does not name the attention blocks (attention_query, attention_output): reconvert the model")
    };
    let positions = *model
        .inputs
        .iter()
        .find(|o| model.node(o.node).name == io.position_ids)
        .with_context(|| format!("no input {}", io.position_ids))?;
    let scale = (1.0 / (config.kv_cache.head_dim as f64).sqrt()) as f32;
    for layer in 0..config.kv_cache.num_layers {
        let name = |pattern: &str| pattern.replace("{}", &layer.to_string());
        let label = |pattern: &str| {
            model.find_outlet_label(&name(pattern)).with_context(|| format!("no tensor named {}", name(pattern)))
        };
        let (q, out) = (label(query)?, label(output)?);
        let (present_k, present_v) = (label(&io.present_key)?, label(&io.present_value)?);
        // present = Concat(past, new): the new keys/values are the concat's second input.
        let new_of = |present: OutletId, past: &str| -> TractResult<(OutletId, usize)> {
            let concat = model.node(present.node);
            let source = concat.inputs.first().map(|i| i.node);
            ensure!(
                concat.inputs.len() == 2 && source.is_some_and(|s| model.node(s).name == past),
                "{} is not Concat({past}, new)",
                model.node(present.node).name
            );
            Ok((concat.inputs[1], concat.inputs[0].node))
        };
        let (k_new, past_k) = new_of(present_k, &name(&io.past_key))?;
        let (v_new, past_v) = new_of(present_v, &name(&io.past_value))?;
        let mut patch = TypedModelPatch::new("fuse attention");
        let inputs = [q, k_new, v_new, positions]
            .iter()
            .map(|o| patch.tap_model(model, *o))
            .collect::<TractResult<TVec<_>>>()?;
        let wire = patch.wire_node(
            format!("{}.fused", name(output)),
            CachedAttention { scale_bits: scale.to_bits(), sequence_major: None },
            &inputs,
        )?[0];
        patch.shunt_outside(model, out, wire)?;
        patch.apply(model)?;
        model.outputs.retain(|o| *o != present_k && *o != present_v);
        model.inputs.retain(|o| o.node != past_k && o.node != past_v);
        for past in [past_k, past_v] {
            model.node_mut(past).op = model.create_dummy();
        }
    }
    Ok(())
}

/// Makes each [`CachedAttention`] read q, k and v as their products write them and write its
/// output as the next product reads it ([`crate::attention_layout`]): the reshapes, transposes
/// and [`Rope`] ops between them, in the optimised graph, leave the plan. Returns how many were
/// rewritten; an attention whose neighbours have another form is left as it is.
pub fn sequence_major_attention(model: &mut TypedModel) -> TractResult<usize> {
    let nodes: Vec<usize> = model.nodes().iter().filter(|n| n.op_is::<CachedAttention>()).map(|n| n.id).collect();
    let mut rewritten = 0;
    for id in nodes {
        let Some(plan) = SequenceMajor::find(model, id) else { continue };
        let node = model.node(id);
        let op = CachedAttention {
            scale_bits: node.op_as::<CachedAttention>().context("attention")?.scale_bits,
            sequence_major: Some(plan.q_heads),
        };
        let name = format!("{}.sequence-major", node.name);
        let mut patch = TypedModelPatch::new("sequence-major attention");
        let inputs = plan.inputs.iter().map(|o| patch.tap_model(model, *o)).collect::<TractResult<TVec<_>>>()?;
        let wire = patch.wire_node(name, op, &inputs)?[0];
        patch.shunt_outside(model, plan.output, wire)?;
        patch.apply(model)?;
        rewritten += 1;
    }
    if rewritten > 0 {
        // The replaced nodes (the old attention with its cache among them) leave the graph.
        model.compact()?;
    }
    Ok(rewritten)
}

/// What [`sequence_major_attention`] rewires for one attention node.
struct SequenceMajor {
    /// q, k, v (`[1, seq, heads · d]`), positions, cos, sin.
    inputs: [OutletId; 6],
    /// The `[1, seq, heads · d]` output the attention's result was reshaped to.
    output: OutletId,
    q_heads: usize,
}

impl SequenceMajor {
    /// The pattern around attention node `id`: q = Reshape(1) ← Rope ← Move(1, 2) ← Reshape(2) ←
    /// q product; k the same without the first reshape; v = Move(1, 2) ← Reshape(2) ← v product;
    /// its output read only by Reshape(1) → Move(1, 2) → Reshape(2).
    fn find(model: &TypedModel, id: usize) -> Option<SequenceMajor> {
        let node = model.node(id);
        if node.op_as::<CachedAttention>()?.sequence_major.is_some() || node.inputs.len() != 4 {
            return None;
        }
        let reshape = |op: &AxisOp, axis: usize| matches!(op, AxisOp::Reshape(a, ..) if *a == axis);
        let transpose = |op: &AxisOp| *op == AxisOp::Move(1, 2);
        let q_roped = axis_input(model, node.inputs[0], |op| reshape(op, 1))?;
        let (q_heads, cos, sin) = rope_input(model, q_roped)?;
        let (k_heads, k_cos, k_sin) = rope_input(model, node.inputs[1])?;
        let flat = |o: OutletId| axis_input(model, axis_input(model, o, transpose)?, |op| reshape(op, 2));
        let (q, k, v) = (flat(q_heads)?, flat(k_heads)?, flat(node.inputs[2])?);
        if (k_cos, k_sin) != (cos, sin) {
            return None;
        }
        let reader = |o: OutletId, is: &dyn Fn(&AxisOp) -> bool| {
            let [next] = model.outlet_successors(o) else { return None };
            let op = model.node(next.node).op_as::<AxisOp>()?;
            is(op).then_some(OutletId::new(next.node, 0))
        };
        let output = reader(OutletId::new(id, 0), &|op| reshape(op, 1))?;
        let output = reader(reader(output, &transpose)?, &|op| reshape(op, 2))?;
        // Shapes: q [1, seq, heads · d] and the output alike; d from the head-major q.
        let dim = model.outlet_fact(node.inputs[0]).ok()?.shape.last()?.to_usize().ok()?;
        let width = model.outlet_fact(q).ok()?.shape.last()?.to_usize().ok()?;
        let out_fact = model.outlet_fact(output).ok()?;
        if dim == 0 || width % dim != 0 || out_fact.shape != model.outlet_fact(q).ok()?.shape {
            return None;
        }
        Some(SequenceMajor { inputs: [q, k, v, node.inputs[3], cos, sin], output, q_heads: width / dim })
    }
}

/// The input of the [`AxisOp`] node writing `outlet`, if `is` accepts that op.
fn axis_input(model: &TypedModel, outlet: OutletId, is: impl Fn(&AxisOp) -> bool) -> Option<OutletId> {
    let node = model.node(outlet.node);
    is(node.op_as::<AxisOp>()?).then(|| node.inputs[0])
}

/// The x, cos and sin inputs of the [`Rope`] node writing `outlet`.
fn rope_input(model: &TypedModel, outlet: OutletId) -> Option<(OutletId, OutletId, OutletId)> {
    let node = model.node(outlet.node);
    node.op_is::<Rope>().then(|| (node.inputs[0], node.inputs[1], node.inputs[2]))
}

/// Replaces each `RmsNorm` over the last axis followed by a `Mul` by constant weights, with the
/// residual `Add` before it when there is one, by one [`ResidualNorm`] (in the optimised graph).
/// Returns how many were fused.
pub fn fuse_residual_norms(model: &mut TypedModel) -> TractResult<usize> {
    let norms: Vec<usize> = model.nodes().iter().filter(|n| n.op_is::<RmsNorm>()).map(|n| n.id).collect();
    let mut fused = 0;
    for id in norms {
        let Some((eps, gamma, scaled)) = scaled_norm(model, id) else { continue };
        let input = model.node(id).inputs[0];
        // The residual add: two inputs of the norm's shape, no broadcast.
        let add = model.node(input.node);
        let shape = model.outlet_fact(input)?.shape.clone();
        let residual = add.op_as::<TypedBinOp>().is_some_and(|op| op.0.name() == "Add")
            && add.inputs.len() == 2
            && add
                .inputs
                .iter()
                .all(|i| model.outlet_fact(*i).is_ok_and(|f| f.shape == shape && f.datum_type == f32::datum_type()));
        let inputs = if residual { add.inputs.clone() } else { vec![input] };
        let op = ResidualNorm { residual, eps_bits: eps.to_bits(), gamma };
        let name = format!("{}.fused", model.node(id).name);
        let mut patch = TypedModelPatch::new("fuse residual norm");
        let taps = inputs.iter().map(|o| patch.tap_model(model, *o)).collect::<TractResult<TVec<_>>>()?;
        let wires = patch.wire_node(name, op, &taps)?;
        if residual {
            patch.shunt_outside(model, input, wires[0])?;
        }
        patch.shunt_outside(model, scaled, wires[wires.len() - 1])?;
        patch.apply(model)?;
        fused += 1;
    }
    if fused > 0 {
        model.compact()?;
    }
    Ok(fused)
}

/// For `RmsNorm` node `id` over the last axis whose only reader multiplies it by a constant of one
/// value per feature: its epsilon, those weights, and the product's outlet.
fn scaled_norm(model: &TypedModel, id: usize) -> Option<(f32, Arc<Vec<f32>>, OutletId)> {
    let node = model.node(id);
    let norm = node.op_as::<RmsNorm>()?;
    let rank = model.outlet_fact(node.inputs[0]).ok()?.rank();
    let eps = norm.eps.cast_to_scalar::<f32>().ok()?;
    let dim = model.outlet_fact(node.inputs[0]).ok()?.shape.last()?.to_usize().ok()?;
    let [reader] = model.outlet_successors(OutletId::new(id, 0)) else { return None };
    let mul = model.node(reader.node);
    let is_mul = mul.op_as::<OptBinUnicast>().is_some_and(|op| op.binop.name() == "Mul")
        || mul.op_as::<TypedBinOp>().is_some_and(|op| op.0.name() == "Mul");
    if norm.axis + 1 != rank || !is_mul || mul.inputs.len() != 2 {
        return None;
    }
    let weights = mul.inputs[1 - reader.slot];
    let gamma = const_of(model, weights)?;
    let f32_fact = |o: OutletId| model.outlet_fact(o).ok().is_some_and(|f| f.datum_type == f32::datum_type());
    if gamma.datum_type() != f32::datum_type() || gamma.len() != dim || !f32_fact(node.inputs[0]) {
        return None;
    }
    let gamma = Arc::new(gamma.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec());
    Some((eps, gamma, OutletId::new(mul.id, 0)))
}

/// Makes the LM head run on the last position only: a slice on its hidden-state input. Generation
/// needs just the next-token logits, and computing the others costs a fifth of prefill and a
/// `[sequence, vocab]` buffer (50 MB for a 256-token chunk). The head is every node between the
/// hidden state (the input of the logits' first matrix product) and the logits, each wired again
/// on the sliced hidden state: one product, or a split head (a `Concat` of parts, a part possibly
/// the sum of a product and a low-rank product). Only position-wise ops may be among them.
pub fn last_position_logits(model: &mut TypedModel, logits: &str) -> TractResult<()> {
    let index = model
        .outputs
        .iter()
        .position(|o| model.outlet_label(*o) == Some(logits) || model.node(o.node).name == logits)
        .with_context(|| format!("no output {logits}"))?;
    let output = model.outputs[index];
    let out_node = model.node(output.node);
    let first = if out_node.op_is::<TypedConcat>() { out_node.inputs[0].node } else { out_node.id };
    let hidden = *model.node(first).inputs.first().context("LM head without inputs")?;
    let fact = model.outlet_fact(hidden)?;
    ensure!(fact.rank() == 3, "LM head input has shape {:?}, expected [batch, sequence, hidden]", fact.shape);
    let seq = fact.shape[1].clone();
    let head = head_nodes(model, hidden, output.node)?;
    let mut patch = TypedModelPatch::new("last-position logits");
    let tapped = patch.tap_model(model, hidden)?;
    let last = patch.wire_node(format!("{}.last", out_node.name), Slice::new(1, seq.clone() - 1, seq), &[tapped])?[0];
    let mut wired: HashMap<OutletId, OutletId> = HashMap::from([(hidden, last)]);
    for id in head {
        let node = model.node(id);
        let mut inputs = tvec![];
        for input in &node.inputs {
            inputs.push(match wired.get(input) {
                Some(outlet) => *outlet,
                None => patch.tap_model(model, *input)?,
            });
        }
        let outputs = patch.wire_node(format!("{}.sliced", node.name), node.op.clone(), &inputs)?;
        for (slot, outlet) in outputs.into_iter().enumerate() {
            wired.insert(OutletId::new(id, slot), outlet);
        }
    }
    patch.shunt_outside(model, output, wired[&output])?;
    patch.apply(model)?;
    // The patch rewired the model output in place; keep its name.
    model.set_outlet_label(model.outputs[index], logits.to_string())
}

/// The nodes, in evaluation order, that read `hidden` (directly or not) and that `end` depends on
/// (`end` included): the LM head. Each must compute every position on its own (matrix products,
/// element-wise ops, concatenation along the vocabulary), so that slicing its input slices it.
fn head_nodes(model: &TypedModel, hidden: OutletId, end: usize) -> TractResult<Vec<usize>> {
    let mut reads_hidden = HashSet::new();
    let mut todo: Vec<usize> = model.outlet_successors(hidden).iter().map(|i| i.node).collect();
    while let Some(id) = todo.pop() {
        if reads_hidden.insert(id) {
            todo.extend(model.node(id).outputs.iter().flat_map(|o| o.successors.iter().map(|i| i.node)));
        }
    }
    let mut feeds_end = HashSet::new();
    let mut todo = vec![end];
    while let Some(id) = todo.pop() {
        if feeds_end.insert(id) {
            todo.extend(model.node(id).inputs.iter().map(|o| o.node));
        }
    }
    let head: Vec<usize> =
        model.eval_order()?.into_iter().filter(|id| reads_hidden.contains(id) && feeds_end.contains(id)).collect();
    ensure!(head.contains(&end), "the logits do not depend on the LM head's input");
    for &id in &head {
        let op = &model.node(id).op;
        let position_wise = op.downcast_ref::<QLinear>().is_some()
            || op.downcast_ref::<EinSum>().is_some()
            || op.downcast_ref::<TypedBinOp>().is_some()
            || op.downcast_ref::<TypedConcat>().is_some_and(|c| c.axis == 2);
        ensure!(position_wise, "LM head node {} ({}) may mix positions", model.node(id).name, op.name());
    }
    Ok(head)
}

/// Replaces each gated feed-forward block `Mul(Mul(g, Sigmoid(g)), u)`, `g` and `u` single-weight
/// [`QLinear`]s of the same input read by nothing else, with one [`SwiGlu`]: one op instead of
/// five, the activations quantized once, one pool dispatch for both products, and the gating
/// done in place. Returns how many were fused.
pub fn fuse_swiglu(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in model.eval_order()? {
        let Some((input, gate, up, end)) = swiglu_block(model, id) else { continue };
        let mut patch = TypedModelPatch::new("SwiGLU block as one op");
        let tapped = patch.tap_model(model, input)?;
        let name = format!("{}.swiglu", model.node(end).name);
        let out = patch.wire_node(name, SwiGlu::new(gate, up), &[tapped])?[0];
        patch.shunt_outside(model, end.into(), out)?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
}

/// If node `gate` is the gate product of a SwiGLU block (see [`fuse_swiglu`]): the block's input,
/// gate and up weights, and its last node (the product of the gated values and `up`).
fn swiglu_block(model: &TypedModel, gate: usize) -> Option<(OutletId, Arc<QWeight>, Arc<QWeight>, usize)> {
    let single = |id: usize| -> Option<Arc<QWeight>> {
        let node = model.node(id);
        let linear = node.op_as::<QLinear>()?;
        (linear.weights.len() == 1 && node.outputs.len() == 1).then(|| linear.weights[0].clone())
    };
    let is_mul = |id: usize| model.node(id).op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Mul>());
    let readers = |id: usize| -> Vec<usize> { model.node(id).outputs[0].successors.iter().map(|s| s.node).collect() };
    let g = single(gate)?;
    let input = model.node(gate).inputs[0];
    // `g` feeds exactly a Sigmoid and the Mul of `g` and that Sigmoid.
    let mut readers_of_g = readers(gate);
    readers_of_g.sort();
    readers_of_g.dedup();
    let sigmoid =
        *readers_of_g.iter().find(|&&r| model.node(r).op_as::<ElementWiseOp>().is_some_and(|e| e.0.is::<Sigmoid>()))?;
    let act = *readers_of_g.iter().find(|&&r| r != sigmoid)?;
    let act_inputs: HashSet<usize> = model.node(act).inputs.iter().map(|i| i.node).collect();
    if readers_of_g.len() != 2
        || !is_mul(act)
        || act_inputs != HashSet::from([gate, sigmoid])
        || readers(sigmoid) != [act]
    {
        return None;
    }
    // The gated values feed only the Mul with `up`, a product of the same input read by it alone.
    let [end] = readers(act)[..] else { return None };
    let other = model.node(end).inputs.iter().find(|i| i.node != act)?.node;
    let u = single(other)?;
    let same_shape = g.n() == u.n() && g.k() == u.k();
    (is_mul(end) && model.node(other).inputs[0] == input && readers(other) == [end] && same_shape)
        .then_some((input, g, u, end))
}

/// Makes the quantized products that read the same activations and whose outputs only change
/// shape next (a layer's q, k and v projections) one [`QLinear`] with several weights: the
/// activations are quantized once instead of once per product, and the products share one
/// dispatch on the thread pool (2 threads: prefill +7%, decode +5%; 1 thread: even). Products
/// read by element-wise ops are left apart: tract keeps a node's outputs until their last reader
/// has run, so the FFN's SiLU could no longer overwrite its gate in place, and the copy cost
/// more than the fusion saved (gate and up fused too: 2-thread decode −7%). Returns how many
/// groups were fused.
pub fn fuse_shared_input_linears(model: &mut TypedModel) -> TractResult<usize> {
    let mut groups: Vec<(OutletId, Vec<usize>)> = vec![];
    for id in model.eval_order()? {
        let node = model.node(id);
        let reshaped_next =
            node.outputs.iter().flat_map(|o| &o.successors).all(|s| model.node(s.node).op_is::<AxisOp>());
        if !node.op_is::<QLinear>() || !reshaped_next {
            continue;
        }
        let input = node.inputs[0];
        match groups.iter_mut().find(|(i, _)| *i == input) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((input, vec![id])),
        }
    }
    let mut fused = 0;
    for (input, ids) in groups.into_iter().filter(|(_, ids)| ids.len() > 1) {
        let linears: Vec<&QLinear> =
            ids.iter().map(|&id| model.node(id).op_as::<QLinear>().expect("grouped above")).collect();
        let weights = linears.iter().flat_map(|l| l.weights.iter().cloned()).collect();
        let name = ids.iter().map(|&id| model.node(id).name.as_str()).collect::<Vec<_>>().join("+");
        let mut patch = TypedModelPatch::new("one QLinear for the products of one input");
        let tapped = patch.tap_model(model, input)?;
        let outputs = patch.wire_node(name, QLinear { weights }, &[tapped])?;
        let mut outputs = outputs.into_iter();
        for &id in &ids {
            for slot in 0..model.node(id).outputs.len() {
                let new = outputs.next().context("one output per weight")?;
                patch.shunt_outside(model, OutletId::new(id, slot), new)?;
            }
        }
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
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

/// Replaces the 8-bit token lookup (a uint8 table's rows, `Cast`, `Sub 128`, reshapes, `Mul` by the
/// `Gather`ed block scales) with [`Embed`] reading the tied LM head's codes, when the table and
/// its scales are exactly the head's. The rows come from a [`GatherCodes`] of the head (the table
/// was never loaded, `table.rs`) or from a `Gather` of a uint8 constant equal to the head's codes
/// (then dropped by the optimiser: −28 MB resident on the default model). Returns whether it did.
pub fn share_embedding_table(model: &mut TypedModel) -> TractResult<bool> {
    let heads: Vec<Arc<QWeight>> = model
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<QLinear>())
        .flat_map(|l| l.weights.iter().filter(|w| matches!(***w, QWeight::Q8(_))).cloned())
        .collect();
    for id in model.eval_order()? {
        let Some((ids, head, table)) = token_table(model, id, &heads) else { continue };
        let (n, k) = (head.n(), head.k());
        let Some(scales) = gathered_scales(model, id, n, k) else { continue };
        let Some(end) = lookup_end(model, id) else { continue };
        let fact = model.outlet_fact(end.into())?;
        let mut want = model.outlet_fact(ids)?.shape.to_tvec();
        want.push(k.to_dim());
        if fact.datum_type != f32::datum_type() || fact.shape.to_tvec() != want {
            continue;
        }
        let QWeight::Q8(m) = &*head else { continue };
        let scales = scales.try_as_plain_ram()?;
        let same = match table {
            None => m.has_scales(scales.as_slice()?),
            Some(bytes) => m.equals_u8_table(bytes.try_as_plain_ram()?.as_slice()?, scales.as_slice()?),
        };
        if !same {
            continue;
        }
        let mut patch = TypedModelPatch::new("share the embedding table with the LM head");
        let tapped = patch.tap_model(model, ids)?;
        let name = format!("{}.embed_q8", model.node(id).name);
        let rows = patch.wire_node(name, Embed { table: head.clone() }, &[tapped])?[0];
        patch.shunt_outside(model, end.into(), rows)?;
        patch.apply(model)?;
        return Ok(true);
    }
    Ok(false)
}

/// If node `id` looks token ids up in an 8-bit table: the ids, the head the table may be, and the
/// table's bytes when they still have to be compared with the head's (a constant, not the head).
fn token_table(
    model: &TypedModel,
    id: usize,
    heads: &[Arc<QWeight>],
) -> Option<(OutletId, Arc<QWeight>, Option<Arc<Tensor>>)> {
    let node = model.node(id);
    if let Some(codes) = node.op_as::<GatherCodes>() {
        return Some((node.inputs[0], codes.table.clone(), None));
    }
    node.op_as::<Gather>().filter(|g| g.axis == 0)?;
    let table = const_of(model, node.inputs[0])?;
    (table.datum_type() == u8::datum_type() && table.rank() == 2).then_some(())?;
    let head = heads.iter().find(|h| h.bits() == 8 && [h.n(), h.k()] == table.shape())?;
    Some((node.inputs[1], head.clone(), Some(table)))
}

fn const_of(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    model.node(outlet.node).op_as::<Const>().map(|c| c.val().clone())
}

/// The f32 or f16 `[n, k / 32]` constant (returned as f32) that another `Gather` (not `lookup`)
/// takes rows of: the block scales of the lookup (its indices come from the same token ids,
/// through their own copy).
fn gathered_scales(model: &TypedModel, lookup: usize, n: usize, k: usize) -> Option<Arc<Tensor>> {
    model.nodes().iter().find_map(|node| {
        (node.id != lookup && node.op_as::<Gather>().is_some_and(|g| g.axis == 0)).then_some(())?;
        let scales = const_of(model, node.inputs[0])?;
        let float = [f32::datum_type(), f16::datum_type()].contains(&scales.datum_type());
        (float && scales.shape() == [n, k / crate::qblock::BLOCK]).then_some(())?;
        // f16 in the converter's files (then widened by a `Cast` the lookup chain allows).
        Some(scales.cast_to::<f32>().ok()?.into_owned().into_arc_tensor())
    })
}

/// The last node of the lookup chain from `gather`: each link has one consumer and is a `Cast`, an
/// axis change, a `Sub` of the constant 128 or a `Mul` (by the scales); the chain ends where
/// several nodes read the result (the first layer) or one node of another kind does (a split
/// table's `Where`). `None` if the chain is longer or has fewer than three links.
fn lookup_end(model: &TypedModel, gather: usize) -> Option<usize> {
    let mut end = gather;
    let mut links = 0;
    loop {
        let successors = &model.node(end).outputs[0].successors;
        if successors.len() != 1 {
            return (links >= 3).then_some(end);
        }
        let next = model.node(successors[0].node);
        let ok = next.op_is::<Cast>()
            || next.op_is::<AxisOp>()
            || next.op_as::<TypedBinOp>().is_some_and(|op| {
                (op.0.is::<Sub>() && next.inputs.iter().any(|&i| const_of(model, i).is_some_and(|c| is_128(&c))))
                    || op.0.is::<Mul>()
            });
        if !ok {
            return (links >= 3).then_some(end);
        }
        if links > 8 {
            return None;
        }
        end = next.id;
        links += 1;
    }
}

fn is_128(t: &Tensor) -> bool {
    t.len() == 1 && t.cast_to_scalar::<f32>().is_ok_and(|v| v == 128.0)
}

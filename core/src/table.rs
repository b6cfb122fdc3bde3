//! Token lookup tables that are the LM head's weight. The converter writes a tied 8-bit embedding
//! twice in the graph, as the `Gather` table and as the head's `MatMulNBits` weight, and once in
//! the data file (both name the same range). Such a `Gather` is not loaded (28 MB on the default
//! model, which tract would read and copy twice): [`detach_tables`] takes the table out of the
//! graph before parsing, the importer wires a `PendingTable` for the head's slot, and [`pack`]
//! makes it a [`GatherCodes`] lookup in the head's packed codes (which `share_embedding_table`
//! then fuses with the dequantization that follows into `EmbedQ8`).

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{AttributeProto, ModelProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::Onnx;

use crate::embed::GatherCodes;
use crate::qlinear::QWeight;
use crate::weights::{count_readers, Detached};

/// The node attribute [`detach_tables`] leaves: `[slot, rows, columns]` of the head's weight.
const TABLE_ATTR: &str = "pocketlm.table_of";

/// Makes `onnx` import the `Gather` nodes [`detach_tables`] marked (others go to tract).
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert("Gather", gather);
}

/// Takes each uint8 `Gather` table whose bytes are a detached 8-bit weight's
/// ([`Detached::table_slot`]) out of the graph, leaving its node the slot. Returns how many.
pub fn detach_tables(proto: &mut ModelProto, detached: &Detached) -> TractResult<usize> {
    let Some(graph) = proto.graph.as_mut() else { return Ok(0) };
    let mut readers: HashMap<String, usize> = HashMap::new();
    count_readers(graph, &mut readers);
    let mut tables = 0;
    for node in graph.node.iter_mut() {
        let axis: i64 = node.get_attr_opt("axis")?.unwrap_or(0);
        if node.op_type != "Gather" || axis != 0 || node.input.len() != 2 {
            continue;
        }
        let name = &node.input[0];
        let Some(at) = graph.initializer.iter().position(|t| &t.name == name) else { continue };
        let table = &graph.initializer[at];
        if table.data_type != DataType::Uint8 as i32 || readers.get(name) != Some(&1) {
            continue;
        }
        let Some(slot) = detached.table_slot(table) else { continue };
        let dims = table.dims.clone();
        graph.initializer.swap_remove(at);
        node.input[0].clear();
        node.attribute.push(AttributeProto {
            name: TABLE_ATTR.into(),
            r#type: AttributeType::Ints as i32,
            ints: vec![slot as i64, dims[0], dims[1]],
            ..Default::default()
        });
        tables += 1;
    }
    Ok(tables)
}

fn gather(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let Some(table) = node.get_attr_opt_tvec::<usize>(TABLE_ATTR)? else {
        let tract = tract_onnx::onnx();
        let builder = tract.op_register.0.get("Gather").context("tract imports Gather")?;
        return builder(ctx, node);
    };
    ensure!(table.len() == 3, "{TABLE_ATTR} must be [slot, rows, columns]");
    Ok((expand(TableLookup { slot: table[0], n: table[1], k: table[2] }), vec![]))
}

/// A lookup of token ids in the `[n, k]` 8-bit weight of slot `slot`: the uint8 rows a `Gather`
/// of the table would give.
#[derive(Debug, Clone)]
struct TableLookup {
    slot: usize,
    n: usize,
    k: usize,
}

impl Expansion for TableLookup {
    fn name(&self) -> StaticName {
        "TableLookup".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, u8::datum_type())?;
        s.equals(&outputs[0].rank, inputs[0].rank.bex() + 1)?;
        let k = self.k.to_dim();
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            for axis in 0..rank {
                s.equals(&outputs[0].shape[axis], &inputs[0].shape[axis])?;
            }
            s.equals(&outputs[0].shape[rank], k.clone())
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let pending = PendingTable { slot: self.slot, n: self.n, k: self.k };
        model.wire_node(prefix, pending, inputs)
    }
}

/// A [`TableLookup`] whose weight is not packed yet; [`pack`] replaces it. It cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PendingTable {
    slot: usize,
    n: usize,
    k: usize,
}

impl Op for PendingTable {
    fn name(&self) -> StaticName {
        "PendingTable".into()
    }

    op_as_typed_op!();
}

impl EvalOp for PendingTable {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, _inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        bail!("a token table was imported but not packed (table::pack was not run)")
    }
}

impl TypedOp for PendingTable {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        shape.push(self.k.to_dim());
        Ok(tvec!(u8::fact(shape)))
    }

    as_op!();
}

/// Makes every imported table lookup a [`GatherCodes`] in its slot's packed weight (`packed`,
/// from `nbits::pack`). Returns how many.
pub fn pack(model: &mut TypedModel, packed: &[Option<Arc<QWeight>>]) -> TractResult<usize> {
    let ids: Vec<usize> = model.nodes().iter().filter(|n| n.op_is::<PendingTable>()).map(|n| n.id).collect();
    for &id in &ids {
        let pending = model.node(id).op_as::<PendingTable>().expect("filtered above");
        let table = packed.get(pending.slot).cloned().flatten();
        let table = table.with_context(|| format!("token table: no packed weight in slot {}", pending.slot))?;
        ensure!(
            (table.n(), table.k(), table.bits()) == (pending.n, pending.k, 8),
            "token table {}×{}: slot {} holds a {}×{} {}-bit weight",
            pending.n,
            pending.k,
            pending.slot,
            table.n(),
            table.k(),
            table.bits()
        );
        model.node_mut(id).op = Box::new(GatherCodes { table });
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto_test::{external, nbits_node, node};
    use tract_onnx::pb::GraphProto;

    /// `name`, `length` bytes at `offset` of `w.data`.
    fn data(name: &str, dt: DataType, dims: &[i64], offset: usize, length: usize) -> tract_onnx::pb::TensorProto {
        external(name, dt, dims, "w.data", offset, length)
    }

    #[test]
    fn only_a_table_in_the_8_bit_heads_own_bytes_is_detached() {
        let graph = GraphProto {
            node: vec![
                node("Gather", &["table", "ids"], "lookup", &[]),
                node("Gather", &["elsewhere", "ids"], "other", &[]),
                node("Gather", &["scales", "ids"], "scales_lookup", &[]),
                nbits_node(&["x", "head.w", "head.s"], "head", 8),
            ],
            initializer: vec![
                data("table", DataType::Uint8, &[8, 64], 0, 512),
                data("elsewhere", DataType::Uint8, &[8, 64], 512, 512),
                data("scales", DataType::Float, &[8, 2], 1024, 64),
                data("head.w", DataType::Uint8, &[8, 2, 32], 0, 512),
                data("head.s", DataType::Float, &[16], 1024, 64),
            ],
            ..Default::default()
        };
        let mut proto = ModelProto { graph: Some(graph), ..Default::default() };
        let detached = crate::weights::detach_weights(&mut proto).unwrap();
        assert_eq!(detach_tables(&mut proto, &detached).unwrap(), 1);
        let graph = proto.graph.unwrap();
        let mut left: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        left.sort();
        assert_eq!(left, ["elsewhere", "scales"], "the table and the head's weights are detached");
        assert_eq!(graph.node[0].input, ["", "ids"]);
        assert_eq!(graph.node[0].get_attr_tvec::<i64>(TABLE_ATTR).unwrap().to_vec(), [0, 8, 64]);
        assert!(graph.node[1].get_attr_opt_tvec::<i64>(TABLE_ATTR).unwrap().is_none(), "other bytes stay");
        assert!(graph.node[2].get_attr_opt_tvec::<i64>(TABLE_ATTR).unwrap().is_none(), "not uint8");
    }
}

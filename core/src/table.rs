//! Token lookup tables that are the LM head's weight. The converter writes a tied embedding twice
//! in the graph — as its lookup's table and as the head's `MatMulNBits` weight — and once in the
//! data file (both name the same range): an 8-bit table as a `Gather`'s uint8 table, the 4-bit
//! rows of a split head (models/pipeline/head.py) as a com.microsoft `GatherBlockQuantized`'s
//! table and f16 scales. Such a lookup's table is not loaded (28 MB for the default model's 8-bit
//! head, which tract would read and copy twice): [`detach_tables`] takes it out of the graph
//! before parsing, the importer wires a `PendingTable` for the head's slot, and [`pack`] makes it
//! a lookup in the head's packed codes: [`GatherCodes`] (which `share_embedding_table` then fuses
//! with the dequantization that follows into an 8-bit [`Embed`]) or a 4-bit [`Embed`].

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::Onnx;

use crate::embed::{Embed, GatherCodes};
use crate::qblock::BLOCK;
use crate::qlinear::QWeight;
use crate::weights::{count_readers, Detached};

/// The node attribute [`detach_tables`] leaves: `[slot, rows, columns]` of the head's weight.
const TABLE_ATTR: &str = "pocketlm.table_of";

/// Makes `onnx` import the lookups [`detach_tables`] marked (others go to tract).
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert("Gather", |ctx, node| lookup(ctx, node, "Gather", 8));
    onnx.op_register.insert("GatherBlockQuantized", |ctx, node| lookup(ctx, node, "GatherBlockQuantized", 4));
}

/// A lookup [`detach_tables`] can serve from a head's weight.
struct Plan {
    slot: usize,
    n: usize,
    k: usize,
    /// Initializers only the lookup read: its table, and a 4-bit table's scales.
    initializers: Vec<String>,
    /// The 4-bit scales' `Cast` (a node index), which only the lookup read.
    cast: Option<usize>,
}

/// Takes each lookup table whose bytes are a detached weight's ([`Detached::table_slot`]) out of
/// the graph, leaving its node the slot: a uint8 `Gather` table of an 8-bit weight, or the table
/// and (f16, `Cast`) scales of a 4-bit `GatherBlockQuantized` (block 32, zero point 8) that are a
/// 4-bit weight's. Returns how many.
pub fn detach_tables(proto: &mut ModelProto, detached: &Detached) -> TractResult<usize> {
    let Some(graph) = proto.graph.as_mut() else { return Ok(0) };
    let mut readers: HashMap<String, usize> = HashMap::new();
    count_readers(graph, &mut readers);
    let mut plans = vec![];
    for (at, node) in graph.node.iter().enumerate() {
        let plan = match node.op_type.as_str() {
            "Gather" => gather_plan(graph, node, &readers, detached)?,
            "GatherBlockQuantized" => gbq_plan(graph, node, &readers, detached)?,
            _ => None,
        };
        plans.extend(plan.map(|p| (at, p)));
    }
    let mut casts = vec![];
    for (at, plan) in &plans {
        let node = &mut graph.node[*at];
        // Input 1 is the ids for both ops; the others were the table's.
        for (i, input) in node.input.iter_mut().enumerate() {
            if i != 1 {
                input.clear();
            }
        }
        node.attribute.push(AttributeProto {
            name: TABLE_ATTR.into(),
            r#type: AttributeType::Ints as i32,
            ints: vec![plan.slot as i64, plan.n as i64, plan.k as i64],
            ..Default::default()
        });
        graph.initializer.retain(|t| !plan.initializers.contains(&t.name));
        casts.extend(plan.cast);
    }
    casts.sort_unstable();
    for at in casts.into_iter().rev() {
        graph.node.remove(at);
    }
    Ok(plans.len())
}

/// The uint8 initializer `name`, when one node alone reads it.
fn own_table<'g>(
    graph: &'g GraphProto,
    name: &str,
    readers: &HashMap<String, usize>,
) -> Option<&'g tract_onnx::pb::TensorProto> {
    let table = graph.initializer.iter().find(|t| t.name == name)?;
    (table.data_type == DataType::Uint8 as i32 && readers.get(name) == Some(&1)).then_some(table)
}

fn gather_plan(
    graph: &GraphProto,
    node: &NodeProto,
    readers: &HashMap<String, usize>,
    detached: &Detached,
) -> TractResult<Option<Plan>> {
    let axis: i64 = node.get_attr_opt("axis")?.unwrap_or(0);
    if axis != 0 || node.input.len() != 2 {
        return Ok(None);
    }
    let Some(table) = own_table(graph, &node.input[0], readers) else { return Ok(None) };
    let Some(slot) = detached.table_slot(table, 8) else { return Ok(None) };
    let (n, k) = (table.dims[0] as usize, table.dims[1] as usize);
    Ok(Some(Plan { slot, n, k, initializers: vec![table.name.clone()], cast: None }))
}

fn gbq_plan(
    graph: &GraphProto,
    node: &NodeProto,
    readers: &HashMap<String, usize>,
    detached: &Detached,
) -> TractResult<Option<Plan>> {
    let attr = |name: &str, default: i64| -> TractResult<i64> { Ok(node.get_attr_opt(name)?.unwrap_or(default)) };
    let layout = (attr("bits", 4)?, attr("block_size", 128)?, attr("gather_axis", 0)?, attr("quantize_axis", 1)?);
    if !matches!(layout, (4, b, 0, 1 | -1) if b == BLOCK as i64) || node.input.len() != 3 {
        return Ok(None);
    }
    let Some(table) = own_table(graph, &node.input[0], readers) else { return Ok(None) };
    let Some(slot) = detached.table_slot(table, 4) else { return Ok(None) };
    // The scales: `Cast(f16 initializer)` read by this node alone, the slot's own bytes.
    let Some(cast) = graph.node.iter().position(|c| c.op_type == "Cast" && c.output.first() == Some(&node.input[2]))
    else {
        return Ok(None);
    };
    let source = &graph.node[cast].input[0];
    let Some(scales) = graph.initializer.iter().find(|t| &t.name == source) else { return Ok(None) };
    let to: i64 = graph.node[cast].get_attr("to")?;
    let only_reader = readers.get(source) == Some(&1) && readers.get(&node.input[2]) == Some(&1);
    if to != DataType::Float as i64 || !only_reader || !detached.is_symmetric_with_scales(slot, scales) {
        return Ok(None);
    }
    let (n, k) = (table.dims[0] as usize, 2 * table.dims[1] as usize);
    Ok(Some(Plan { slot, n, k, initializers: vec![table.name.clone(), scales.name.clone()], cast: Some(cast) }))
}

/// Imports `op` (`Gather` or `GatherBlockQuantized`) as a lookup in a `bits`-bit head weight
/// when [`detach_tables`] marked it, or as tract does.
fn lookup(
    ctx: &ParsingContext,
    node: &NodeProto,
    op: &str,
    bits: usize,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let Some(table) = node.get_attr_opt_tvec::<usize>(TABLE_ATTR)? else {
        let tract = tract_onnx::onnx();
        let builder = tract.op_register.0.get(op).with_context(|| format!("tract imports {op}"))?;
        return builder(ctx, node);
    };
    ensure!(table.len() == 3, "{TABLE_ATTR} must be [slot, rows, columns]");
    Ok((expand(TableLookup { slot: table[0], n: table[1], k: table[2], bits }), vec![]))
}

/// A lookup of token ids in the `[n, k]` `bits`-bit weight of slot `slot`: the uint8 rows a
/// `Gather` of an 8-bit table would give, or the f32 rows of a 4-bit `GatherBlockQuantized`.
#[derive(Debug, Clone)]
struct TableLookup {
    slot: usize,
    n: usize,
    k: usize,
    bits: usize,
}

/// What a lookup in a `bits`-bit table gives: an 8-bit table's uint8 codes (dequantized by the
/// ops that follow), a 4-bit table's f32 values.
fn lookup_type(bits: usize) -> DatumType {
    if bits == 8 {
        u8::datum_type()
    } else {
        f32::datum_type()
    }
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
        s.equals(&outputs[0].datum_type, lookup_type(self.bits))?;
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
        let pending = PendingTable { slot: self.slot, n: self.n, k: self.k, bits: self.bits };
        model.wire_node(prefix, pending, inputs)
    }
}

/// A [`TableLookup`] whose weight is not packed yet; [`pack`] replaces it. It cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PendingTable {
    slot: usize,
    n: usize,
    k: usize,
    bits: usize,
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
        Ok(tvec!(lookup_type(self.bits).fact(shape)))
    }

    as_op!();
}

/// Makes every imported table lookup a [`GatherCodes`] (8-bit) or [`Embed`] (4-bit) in its
/// slot's packed weight (`packed`, from `nbits::pack`). Returns how many.
pub fn pack(model: &mut TypedModel, packed: &[Option<Arc<QWeight>>]) -> TractResult<usize> {
    let ids: Vec<usize> = model.nodes().iter().filter(|n| n.op_is::<PendingTable>()).map(|n| n.id).collect();
    for &id in &ids {
        let pending = model.node(id).op_as::<PendingTable>().expect("filtered above");
        let table = packed.get(pending.slot).cloned().flatten();
        let table = table.with_context(|| format!("token table: no packed weight in slot {}", pending.slot))?;
        ensure!(
            (table.n(), table.k(), table.bits()) == (pending.n, pending.k, pending.bits),
            "token table {}×{} at {} bits: slot {} holds a {}×{} {}-bit weight",
            pending.n,
            pending.k,
            pending.bits,
            pending.slot,
            table.n(),
            table.k(),
            table.bits()
        );
        model.node_mut(id).op =
            if pending.bits == 8 { Box::new(GatherCodes { table }) } else { Box::new(Embed { table }) };
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto_test::{external, nbits_node, node};

    /// `name`, `length` bytes at `offset` of `w.data`.
    fn data(name: &str, dt: DataType, dims: &[i64], offset: usize, length: usize) -> tract_onnx::pb::TensorProto {
        external(name, dt, dims, "w.data", offset, length)
    }

    /// Detaches the weights, then the tables, of `graph`: how many tables, the graph left and the
    /// names of its initializers, sorted.
    fn detach(graph: GraphProto) -> (usize, GraphProto, Vec<String>) {
        let mut proto = ModelProto { graph: Some(graph), ..Default::default() };
        let detached = crate::weights::detach_weights(&mut proto).unwrap();
        let tables = detach_tables(&mut proto, &detached).unwrap();
        let graph = proto.graph.unwrap();
        let mut left: Vec<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
        left.sort();
        (tables, graph, left)
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
        let (tables, graph, left) = detach(graph);
        assert_eq!(tables, 1);
        assert_eq!(left, ["elsewhere", "scales"], "the table and the head's weights are detached");
        assert_eq!(graph.node[0].input, ["", "ids"]);
        assert_eq!(graph.node[0].get_attr_tvec::<i64>(TABLE_ATTR).unwrap().to_vec(), [0, 8, 64]);
        assert!(graph.node[1].get_attr_opt_tvec::<i64>(TABLE_ATTR).unwrap().is_none(), "other bytes stay");
        assert!(graph.node[2].get_attr_opt_tvec::<i64>(TABLE_ATTR).unwrap().is_none(), "not uint8");
    }

    #[test]
    fn a_4_bit_lookup_in_the_heads_own_codes_and_scales_is_detached_with_its_cast() {
        let gbq = |inputs: &[&str], out: &str| {
            node(
                "GatherBlockQuantized",
                inputs,
                out,
                &[("bits", 4), ("block_size", 32), ("gather_axis", 0), ("quantize_axis", 1)],
            )
        };
        let cast = |from: &str, out: &str| node("Cast", &[from], out, &[("to", DataType::Float as i64)]);
        let graph = GraphProto {
            node: vec![
                cast("table.s", "table.sf"),
                gbq(&["table", "ids", "table.sf"], "lookup"),
                cast("other.s", "other.sf"),
                gbq(&["other", "ids", "other.sf"], "other_lookup"),
                cast("head.s", "head.sf"),
                nbits_node(&["x", "head.w", "head.sf"], "head", 4),
                cast("zp.s", "zp.sf"),
                gbq(&["zp", "ids", "zp.sf"], "zp_lookup"),
                cast("head2.s", "head2.sf"),
                nbits_node(&["x", "head2.w", "head2.sf", "head2.z"], "head2", 4),
            ],
            initializer: vec![
                data("table", DataType::Uint8, &[8, 32], 0, 256),
                data("table.s", DataType::Float16, &[8, 2], 256, 32),
                data("other", DataType::Uint8, &[8, 32], 0, 256),
                // The head's codes, other scales: not the head's table.
                data("other.s", DataType::Float16, &[8, 2], 288, 32),
                data("head.w", DataType::Uint8, &[8, 2, 16], 0, 256),
                data("head.s", DataType::Float16, &[16], 256, 32),
                // A head with zero points: its values are not what the lookup reads.
                data("zp", DataType::Uint8, &[8, 32], 512, 256),
                data("zp.s", DataType::Float16, &[8, 2], 768, 32),
                data("head2.w", DataType::Uint8, &[8, 2, 16], 512, 256),
                data("head2.s", DataType::Float16, &[16], 768, 32),
                data("head2.z", DataType::Uint8, &[8], 800, 8),
            ],
            ..Default::default()
        };
        let (tables, graph, left) = detach(graph);
        assert_eq!(tables, 1);
        assert_eq!(
            left,
            ["other", "other.s", "zp", "zp.s"],
            "the table, its scales and the heads' weights are detached"
        );
        let ops: Vec<&str> = graph.node.iter().map(|n| n.name.as_str()).collect();
        let kept = ["lookup", "other.sf", "other_lookup", "head", "zp.sf", "zp_lookup", "head2"];
        assert_eq!(ops, kept, "the table's and the heads' casts are gone");
        assert_eq!(graph.node[0].input, ["", "ids", ""]);
        assert_eq!(graph.node[0].get_attr_tvec::<i64>(TABLE_ATTR).unwrap().to_vec(), [0, 8, 64]);
        assert!(graph.node[2].get_attr_opt_tvec::<i64>(TABLE_ATTR).unwrap().is_none(), "other scales stay");
        assert!(graph.node[5].get_attr_opt_tvec::<i64>(TABLE_ATTR).unwrap().is_none(), "zero points stay");
    }
}

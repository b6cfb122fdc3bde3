//! The block-offset term of an asymmetric 4-bit linear, folded into its weight before parsing.
//! The converter writes a GGUF Q4_1 linear (`w = d · code + m`) as a symmetric `MatMulNBits`
//! plus the offsets `m + 8d` times the activation's 32-value block sums (onnxruntime runs that as
//! is):
//!
//! ```text
//! y   = MatMulNBits(x, B, scales)
//! xb  = Reshape(x, [0, …, 0, K/32, 32]);  sums = ReduceSum(xb, axes [-1], keepdims 0)
//! out = Add(y, MatMul(sums, Cast(offsets [K/32, N], to float)))
//! ```
//!
//! [`find`] recognises exactly that around a `MatMulNBits` node, each intermediate read by the
//! next step only; `weights::detach_weights` then drops those five nodes, reads the offsets with the
//! node's weight and adds them to its block offsets. tract never sees the ~1 000 nodes (faster
//! type analysis) nor the offsets in f16 and f32 (~16 MB less at the load's peak).

use std::collections::HashMap;

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{GraphProto, TensorProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{ensure, TractErrorContext};

use crate::qblock::BLOCK;

/// The offset term of one `MatMulNBits` node, found by [`find`].
#[derive(Debug)]
pub struct OffsetTerm {
    /// The `[K/32, N]` offsets initializer's name.
    pub offsets: String,
    /// The term's nodes (Reshape, ReduceSum, Cast, MatMul, Add), by index in the graph.
    pub nodes: [usize; 5],
    /// The Add's output: the `MatMulNBits` node's output once the term is folded in.
    pub output: String,
}

/// Where each value of a graph comes from and goes to.
pub struct Index {
    producer: HashMap<String, usize>,
    reader: HashMap<String, usize>,
    readers: HashMap<String, usize>,
}

impl Index {
    /// The index of `graph`; `readers` counts the readers of each value (`weights::count_readers`,
    /// which also counts graph outputs and subgraphs).
    pub fn new(graph: &GraphProto, readers: HashMap<String, usize>) -> Self {
        let mut producer = HashMap::new();
        let mut reader = HashMap::new();
        for (at, node) in graph.node.iter().enumerate() {
            for output in node.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(output.clone(), at);
            }
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                reader.entry(input.clone()).or_insert(at);
            }
        }
        Index { producer, reader, readers }
    }

    /// How many times `value` is read.
    pub fn readers(&self, value: &str) -> usize {
        self.readers.get(value).copied().unwrap_or(0)
    }

    /// If `value` is read once and is `Cast(t, to float)` of an initializer `t` read by that
    /// `Cast` only (how the converter stores f16 tensors an op takes as f32): the `Cast` node's
    /// index and `t`.
    pub fn widened<'g>(&self, graph: &'g GraphProto, value: &str) -> Option<(usize, &'g TensorProto)> {
        let cast = self.producer.get(value).copied().filter(|_| self.readers(value) == 1)?;
        let cast_node = &graph.node[cast];
        let to_float = cast_node.get_attr_opt::<i64>("to").ok()?? == DataType::Float as i64;
        (cast_node.op_type == "Cast" && to_float).then_some(())?;
        let source = cast_node.input.first().filter(|t| self.readers(t) == 1)?;
        Some((cast, graph.initializer.iter().find(|t| &t.name == source)?))
    }
}

/// The offset term around `graph.node[at]` (a `MatMulNBits` of `[n, k]`), if it has exactly the
/// converter's form.
pub fn find(graph: &GraphProto, index: &Index, at: usize, n: usize, k: usize) -> Option<OffsetTerm> {
    let nbits = &graph.node[at];
    let (x, y) = (nbits.input.first()?, nbits.output.first()?);
    let only_reader = |value: &str| index.readers(value) == 1;
    let producer = |value: &str| index.producer.get(value).copied();
    let reader = |value: &str| index.reader.get(value).copied();
    let initializer = |name: &str| graph.initializer.iter().find(|t| t.name == name);
    let ints = |name: &str| initializer(name).and_then(int64s);

    // out = Add(y, z), y read by the Add only.
    let add = reader(y).filter(|_| only_reader(y))?;
    let add_node = &graph.node[add];
    (add_node.op_type == "Add" && add_node.input.len() == 2).then_some(())?;
    let z = add_node.input.iter().find(|i| *i != y)?;
    // z = MatMul(sums, c).
    let matmul = producer(z).filter(|_| only_reader(z))?;
    let matmul_node = &graph.node[matmul];
    (matmul_node.op_type == "MatMul" && matmul_node.input.len() == 2).then_some(())?;
    let (sums, c) = (&matmul_node.input[0], &matmul_node.input[1]);
    // c = Cast(offsets, to float), offsets [K/32, N] f16 or f32.
    let (cast, table) = index.widened(graph, c)?;
    let dtype_ok = [DataType::Float16 as i32, DataType::Float as i32].contains(&table.data_type);
    (dtype_ok && table.dims == [(k / BLOCK) as i64, n as i64]).then_some(())?;
    // sums = ReduceSum(xb, axes [-1], keepdims 0).
    let reduce = producer(sums).filter(|_| only_reader(sums))?;
    let reduce_node = &graph.node[reduce];
    let keepdims = reduce_node.get_attr_opt::<i64>("keepdims").ok()?.unwrap_or(1);
    let axes = match reduce_node.input.get(1) {
        Some(axes) => ints(axes)?,
        None => reduce_node.get_attr_opt_tvec::<i64>("axes").ok()??.to_vec(),
    };
    (reduce_node.op_type == "ReduceSum" && keepdims == 0 && axes == [-1]).then_some(())?;
    // xb = Reshape(x, [0, …, 0, K/32, 32]): the last axis split into blocks.
    let xb = &reduce_node.input[0];
    let reshape = producer(xb).filter(|_| only_reader(xb))?;
    let reshape_node = &graph.node[reshape];
    let shape = ints(reshape_node.input.get(1)?)?;
    let split = shape.len() >= 2
        && shape[shape.len() - 2..] == [(k / BLOCK) as i64, BLOCK as i64]
        && shape[..shape.len() - 2].iter().all(|&d| d == 0);
    let allowzero = reshape_node.get_attr_opt::<i64>("allowzero").ok()?.unwrap_or(0);
    (reshape_node.op_type == "Reshape" && reshape_node.input[0] == *x && split && allowzero == 0).then_some(())?;
    Some(OffsetTerm {
        offsets: table.name.clone(),
        nodes: [reshape, reduce, cast, matmul, add],
        output: add_node.output.first()?.clone(),
    })
}

/// The values of an int64 initializer held inline (external data is not read here).
fn int64s(t: &TensorProto) -> Option<Vec<i64>> {
    let tensor = tract_onnx::tensor::load_tensor(&crate::external::Reader, t, None).ok()?;
    Some(tensor.try_as_plain_ram().ok()?.as_slice::<i64>().ok()?.to_vec())
}

/// The loaded `[K/32, N]` offsets as `[N][K/32]` (per weight row, as `Blocks` holds them).
pub fn per_row(offsets: &Tensor, n: usize, k: usize) -> TractResult<Vec<f32>> {
    let blocks = k / BLOCK;
    ensure!(offsets.shape() == [blocks, n], "offsets have shape {:?}, expected [{blocks}, {n}]", offsets.shape());
    let offsets = offsets.cast_to::<f32>()?;
    let offsets = offsets.try_as_plain_ram()?;
    let offsets: &[f32] = offsets.as_slice().context("offsets")?;
    Ok((0..n * blocks).map(|i| offsets[(i % blocks) * n + i / blocks]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto_test::{int64, node};

    /// The converter's Q4_1 linear of `[n, k] = [8, 64]`, with `edit` applied.
    fn graph(edit: impl FnOnce(&mut GraphProto)) -> GraphProto {
        let mut g = GraphProto {
            node: vec![
                node("MatMulNBits", &["x", "w", "s"], "y", &[]),
                node("Reshape", &["x", "blocks"], "xb", &[]),
                node("ReduceSum", &["xb", "axis"], "sums", &[("keepdims", 0)]),
                node("Cast", &["offsets"], "c", &[("to", DataType::Float as i64)]),
                node("MatMul", &["sums", "c"], "z", &[]),
                node("Add", &["y", "z"], "out", &[]),
                node("Relu", &["out"], "next", &[]),
            ],
            initializer: vec![
                int64("blocks", &[0, 0, 2, 32]),
                int64("axis", &[-1]),
                TensorProto {
                    name: "offsets".into(),
                    data_type: DataType::Float16 as i32,
                    dims: vec![2, 8],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        edit(&mut g);
        g
    }

    fn found(g: &GraphProto) -> Option<OffsetTerm> {
        let mut readers = HashMap::new();
        crate::weights::count_readers(g, &mut readers);
        find(g, &Index::new(g, readers), 0, 8, 64)
    }

    #[test]
    fn the_converters_term_is_found_and_nothing_else() {
        let term = found(&graph(|_| {})).expect("the converter's form");
        assert_eq!((term.offsets.as_str(), term.nodes, term.output.as_str()), ("offsets", [1, 2, 3, 4, 5], "out"));
        type Edit = fn(&mut GraphProto);
        let variants: [(&str, Edit); 6] = [
            ("keepdims", |g| g.node[2].attribute[0].i = 1),
            ("other axis", |g| g.initializer[1] = int64("axis", &[-2])),
            ("other blocks", |g| g.initializer[0] = int64("blocks", &[0, 0, 4, 16])),
            ("sums read twice", |g| g.node.push(node("Relu", &["sums"], "spy", &[]))),
            ("another activation", |g| g.node[1].input[0] = "x2".into()),
            ("offsets of another shape", |g| g.initializer[2].dims = vec![8, 2]),
        ];
        for (what, edit) in variants {
            assert!(found(&graph(edit)).is_none(), "{what}");
        }
    }

    #[test]
    fn offsets_are_transposed_to_rows() {
        let t = Tensor::from_shape(&[2, 3], &[1f32, 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(per_row(&t, 3, 64).unwrap(), [1., 4., 2., 5., 3., 6.]);
        assert!(per_row(&t, 2, 96).is_err());
    }
}

//! The quantized weights of an ONNX graph, taken out before tract parses it. tract's parser reads
//! every initializer into a buffer and copies it again; [`detach_weights`] instead moves the
//! constant inputs of each `MatMulNBits` node pocketlm imports (`nbits.rs`) — with the node's
//! block-offset term (`offsets.rs`) — out of the graph, leaving the node a slot number, and
//! [`Detached::load`] reads them (on another thread, while tract parses) once, straight into their
//! final buffers, repacked there.

use std::collections::HashMap;

use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use crate::external;
use crate::offsets;
use crate::q4::Q4Matrix;
use crate::q8::Q8Matrix;
use crate::qblock::{narrow, Blocks, BLOCK};
use crate::qlinear::QWeight;

/// The node attribute [`detach_weights`] leaves: the node's index in [`Detached`].
pub(crate) const SLOT_ATTR: &str = "pocketlm.weights";

/// The weights [`detach_weights`] took out of a graph, one entry per node (its slot), still in
/// the file.
#[derive(Debug, Default)]
pub struct Detached(pub(crate) Vec<NodeWeights>);

#[derive(Debug)]
pub(crate) struct NodeWeights {
    pub(crate) shape: Shape,
    pub(crate) b: TensorProto,
    pub(crate) scales: TensorProto,
    pub(crate) zero_points: Option<TensorProto>,
    /// The block-offset term's `[K/32, N]` offsets (`offsets.rs`).
    pub(crate) offsets: Option<TensorProto>,
}

/// `[n, k]` at `bits` per weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) bits: usize,
}

impl Shape {
    pub(crate) fn of(node: &NodeProto) -> TractResult<Shape> {
        Ok(Shape { n: node.get_attr("N")?, k: node.get_attr("K")?, bits: node.get_attr_opt("bits")?.unwrap_or(4) })
    }
}

impl Detached {
    /// How many nodes' weights were detached.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Reads every node's weights (files relative to `model_dir`) straight into their own memory
    /// and repacks them there: one [`QWeight`] per slot.
    pub fn load(self, model_dir: Option<&str>) -> TractResult<Vec<QWeight>> {
        self.0
            .into_iter()
            .map(|w| {
                let name = w.b.name.clone();
                w.load(model_dir).with_context(|| format!("MatMulNBits weight {name}"))
            })
            .collect()
    }
}

impl Detached {
    /// The `bits`-bit slot whose weight bytes are exactly `table`'s: a uint8 initializer holding
    /// the `[n, k]` weight as `[n, k * bits / 8]` bytes (a `Gather` table for 8 bits, a
    /// `GatherBlockQuantized` one for 4), in the same range of the same external data file (as
    /// the converter writes a tied embedding).
    pub fn table_slot(&self, table: &TensorProto, bits: usize) -> Option<usize> {
        let range = external::Range::of(table).ok()??;
        let dims: Vec<usize> = table.dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
        self.0.iter().position(|w| {
            let Shape { n, k, bits: b } = w.shape;
            b == bits && dims == [n, k * bits / 8] && external::Range::of(&w.b).ok().flatten().as_ref() == Some(&range)
        })
    }

    /// Whether slot `slot` is symmetric (no zero points or offsets: `(code - 8) * scale` at 4
    /// bits, as a `GatherBlockQuantized` without zero points reads its table) and `scales` is
    /// its scales initializer's range of the same external data file (the bytes of its block
    /// scales, as the converter writes a 4-bit token table's).
    pub fn is_symmetric_with_scales(&self, slot: usize, scales: &TensorProto) -> bool {
        let Some(w) = self.0.get(slot) else { return false };
        if w.zero_points.is_some() || w.offsets.is_some() {
            return false;
        }
        let theirs = external::Range::of(&w.scales).ok().flatten();
        theirs.is_some()
            && theirs == external::Range::of(scales).ok().flatten()
            && w.scales.data_type == scales.data_type
    }
}

impl NodeWeights {
    fn load(self, model_dir: Option<&str>) -> TractResult<QWeight> {
        let Shape { n, k, bits } = self.shape;
        // Sizes from a damaged file must not overflow below (they are checked against the data).
        n.checked_mul(k).and_then(|nk| nk.checked_mul(bits)).context("N × K overflows")?;
        // Each weight's block parameters are narrowed straight from the tensors read, which are
        // freed before the codes are read (the largest, the 8-bit head's, are 1.8 MB as f16).
        let mut blocks = {
            let zero_points = self.zero_points.map(|z| external::load_tensor(&z, model_dir)).transpose()?;
            blocks(n, k, bits, &external::load_tensor(&self.scales, model_dir)?, zero_points.as_ref())?
        };
        if let Some(table) = self.offsets {
            let per_row = offsets::per_row(&external::load_tensor(&table, model_dir)?, n, k)?;
            blocks.add_offsets(&per_row).context("offset count")?;
        }
        let b = external::load_tensor(&self.b, model_dir)?;
        ensure!(
            b.len() * b.datum_type().size_of() == n * k * bits / 8,
            "B has shape {:?}, expected {n}×{k} at {bits} bits",
            b.shape()
        );
        let weight = if bits == 4 {
            Q4Matrix::from_nbits(b, blocks).map(QWeight::Q4)
        } else {
            Q8Matrix::from_nbits(b, blocks).map(QWeight::Q8)
        };
        weight.context("inconsistent sizes")
    }
}

/// Takes the constant inputs (B, scales, zero points) of every `MatMulNBits` node this module
/// imports out of the graph (see the module doc) and gives each node a slot attribute instead; a
/// node's block-offset term (`offsets.rs`) goes with its weights, and its nodes leave the graph.
/// An initializer another node also reads is copied, not moved.
pub fn detach_weights(proto: &mut ModelProto) -> TractResult<Detached> {
    let mut detached = Detached::default();
    let Some(graph) = proto.graph.as_mut() else { return Ok(detached) };
    let mut readers: HashMap<String, usize> = HashMap::new();
    count_readers(graph, &mut readers);
    let index = offsets::Index::new(graph, readers);
    let mut dropped: Vec<usize> = vec![];
    for at in 0..graph.node.len() {
        let node = &graph.node[at];
        if node.op_type != "MatMulNBits" || !supported(node)? {
            continue;
        }
        let is_initializer =
            |i: usize| node.input.get(i).is_some_and(|n| graph.initializer.iter().any(|t| &t.name == n));
        let no_input = |i: usize| node.input.get(i).is_none_or(String::is_empty);
        // Scales may be f16 in the file, widened by a `Cast` (the converter's form): the `Cast`
        // leaves the graph and its source is read as the scales.
        let widened_scales = node.input.get(2).and_then(|s| index.widened(graph, s)).map(|(c, t)| (c, t.name.clone()));
        if !(is_initializer(1) && (is_initializer(2) || widened_scales.is_some()) && (no_input(3) || is_initializer(3)))
        {
            continue;
        }
        let shape = Shape::of(node)?;
        let term = offsets::find(graph, &index, at, shape.n, shape.k);
        let mut take = |name: String| -> Option<TensorProto> {
            let at = graph.initializer.iter().position(|t| t.name == name)?;
            Some(if index.readers(&name) == 1 {
                graph.initializer.swap_remove(at)
            } else {
                graph.initializer[at].clone()
            })
        };
        let node = &mut graph.node[at];
        let mut input = |i: usize| node.input.get_mut(i).filter(|n| !n.is_empty()).map(std::mem::take);
        let (b, mut scales, zero_points) = (input(1), input(2), input(3));
        if let Some((cast, source)) = widened_scales {
            scales = Some(source);
            dropped.push(cast);
        }
        let mut weights = NodeWeights {
            shape,
            b: b.and_then(&mut take).context("checked above")?,
            scales: scales.and_then(&mut take).context("checked above")?,
            zero_points: zero_points.and_then(&mut take),
            offsets: None,
        };
        if let Some(term) = term {
            weights.offsets = Some(take(term.offsets).context("offsets initializer found above")?);
            graph.node[at].output[0] = term.output;
            dropped.extend(term.nodes);
        }
        graph.node[at].attribute.push(AttributeProto {
            name: SLOT_ATTR.into(),
            r#type: AttributeType::Int as i32,
            i: detached.0.len() as i64,
            ..Default::default()
        });
        detached.0.push(weights);
    }
    dropped.sort_unstable();
    let mut at = 0;
    graph.node.retain(|_| {
        at += 1;
        dropped.binary_search(&(at - 1)).is_err()
    });
    Ok(detached)
}

/// How many times each value name is read: by node inputs (subgraphs included, as they may
/// read the outer graph's values) and as a graph output.
pub(crate) fn count_readers(graph: &GraphProto, readers: &mut HashMap<String, usize>) {
    let names = graph.node.iter().flat_map(|n| &n.input).chain(graph.output.iter().map(|o| &o.name));
    for name in names.filter(|n| !n.is_empty()) {
        *readers.entry(name.clone()).or_default() += 1;
    }
    for attr in graph.node.iter().flat_map(|n| &n.attribute) {
        attr.g.iter().chain(&attr.graphs).for_each(|g| count_readers(g, readers));
    }
}

/// Whether this module can import `node`: 4 or 8 bits, blocks of 32, no `g_idx`.
fn supported(node: &NodeProto) -> TractResult<bool> {
    let Shape { k, bits, .. } = Shape::of(node)?;
    let block_size: usize = node.get_attr("block_size")?;
    let g_idx = node.input.get(4).is_some_and(|name| !name.is_empty());
    Ok((bits == 4 || bits == 8) && block_size == BLOCK && k.is_multiple_of(BLOCK) && !g_idx)
}

/// The block parameters of a `[n, k]` weight from `MatMulNBits` scales and zero points.
pub(crate) fn blocks(
    n: usize,
    k: usize,
    bits: usize,
    scales: &Tensor,
    zero_points: Option<&Tensor>,
) -> TractResult<Blocks> {
    const OUT_OF_RANGE: &str = "a scale or offset outside the f16 range";
    let blocks = k / BLOCK;
    let count = n * blocks;
    ensure!(scales.len() == count, "{} scales, expected {count}", scales.len());
    let offsets = match zero_points {
        None => None,
        Some(zp) => {
            let zeros: Box<dyn Iterator<Item = f32>> = if zp.datum_type() == u8::datum_type() {
                let packed: &[u8] = zp.try_as_plain_ram()?.as_slice()?;
                let per_byte = 8 / bits;
                let row_bytes = blocks.div_ceil(per_byte);
                ensure!(packed.len() == n * row_bytes, "{} zero-point bytes", packed.len());
                let mask = ((1u16 << bits) - 1) as u8;
                Box::new(
                    (0..count)
                        .map(move |i| (i / blocks, i % blocks))
                        .map(move |(row, blk)| {
                            (packed[row * row_bytes + blk / per_byte] >> (bits * (blk % per_byte))) & mask
                        })
                        .map(f32::from),
                )
            } else {
                ensure!(zp.len() == count, "{} zero points", zp.len());
                floats(zp)?
            };
            let mid = (1u32 << (bits - 1)) as f32;
            Some(narrow(zeros.zip(floats(scales)?).map(|(z, s)| (mid - z) * s)).context(OUT_OF_RANGE)?)
        }
    };
    let scales = narrow(floats(scales)?).context(OUT_OF_RANGE)?;
    Blocks::from_f16(n, k, scales, offsets).context("inconsistent sizes")
}

/// A float tensor's values (f16 or f32) as f32, read in place.
fn floats(t: &Tensor) -> TractResult<Box<dyn Iterator<Item = f32> + '_>> {
    let plain = t.try_as_plain_ram()?;
    Ok(match t.datum_type() {
        DatumType::F16 => Box::new(plain.as_slice::<f16>()?.iter().map(|h| h.to_f32())),
        DatumType::F32 => Box::new(plain.as_slice::<f32>()?.iter().copied()),
        other => bail!("block parameters are {other:?}, expected f16 or f32"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto_test::{inline, nbits_node, node};
    use tract_onnx::pb::tensor_proto::DataType;

    #[test]
    fn detaching_moves_private_weights_copies_shared_ones_and_skips_unsupported_nodes() {
        let graph = GraphProto {
            node: vec![
                nbits_node(&["x", "wa", "sa"], "a", 4),
                nbits_node(&["x", "wb", "shared", "zb"], "b", 8),
                nbits_node(&["x", "wc", "shared"], "c", 3),
                nbits_node(&["x", "computed", "sa"], "d", 4),
            ],
            initializer: ["wa", "sa", "wb", "shared", "zb", "wc"].iter().map(|n| inline::<u8>(n, &[1], &[0])).collect(),
            ..Default::default()
        };
        let mut proto = ModelProto { graph: Some(graph), ..Default::default() };
        let detached = detach_weights(&mut proto).unwrap();
        assert_eq!(detached.len(), 2);
        let graph = proto.graph.unwrap();
        let mut left: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        left.sort();
        // `sa` is also read by `d` (not detached: its B is computed), `shared` by `c` (3 bits).
        assert_eq!(left, ["sa", "shared", "wc"]);
        assert_eq!(graph.node[0].input, ["x", "", ""]);
        assert_eq!(graph.node[1].input, ["x", "", "", ""]);
        assert_eq!(graph.node[2].input, ["x", "wc", "shared"]);
        assert_eq!(graph.node[3].input, ["x", "computed", "sa"]);
        assert_eq!(graph.node[1].get_attr::<i64>(SLOT_ATTR).unwrap(), 1);
        assert_eq!(graph.node[2].get_attr_opt::<i64>(SLOT_ATTR).unwrap(), None);
        let names =
            |w: &NodeWeights| (w.b.name.clone(), w.scales.name.clone(), w.zero_points.as_ref().map(|z| z.name.clone()));
        assert_eq!(names(&detached.0[1]), ("wb".into(), "shared".into(), Some("zb".into())));
        assert_eq!(detached.0[1].shape, Shape { n: 8, k: 64, bits: 8 });
    }

    #[test]
    fn block_parameters_are_read_from_f16_or_f32_and_other_types_are_refused() {
        let h = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
        // Two rows of one block each; 4-bit zero points 10 and 12 (offset = (8 - zero) × scale).
        let zeros = Tensor::from_shape(&[2], &[0x3Au8, 0x0C]).unwrap();
        let s16 = Tensor::from_shape(&[2], &h(&[0.5, -2.0])).unwrap();
        let s32 = Tensor::from_shape(&[2], &[0.5f32, -2.0]).unwrap();
        for scales in [&s16, &s32] {
            let b = blocks(2, 32, 4, scales, Some(&zeros)).unwrap();
            assert_eq!(b.row(0), (&h(&[0.5])[..], &h(&[-1.0])[..]));
            assert_eq!(b.row(1), (&h(&[-2.0])[..], &h(&[8.0])[..]));
            let float_zeros = Tensor::from_shape(&[2], &[10f32, 12.0]).unwrap();
            assert_eq!(blocks(2, 32, 4, scales, Some(&float_zeros)).unwrap(), b);
        }
        let ints = Tensor::from_shape(&[2], &[1i32, 2]).unwrap();
        assert!(format!("{:#}", blocks(2, 32, 4, &ints, None).unwrap_err()).contains("expected f16 or f32"));
        let huge = Tensor::from_shape(&[2], &[1e6f32, 1.0]).unwrap();
        assert!(format!("{:#}", blocks(2, 32, 4, &huge, None).unwrap_err()).contains("f16 range"));
        let short = Tensor::from_shape(&[1], &[1f32]).unwrap();
        assert!(format!("{:#}", blocks(2, 32, 4, &short, None).unwrap_err()).contains("1 scales, expected 2"));
    }

    #[test]
    fn f16_scales_behind_a_cast_are_detached_with_the_cast_unless_shared() {
        let to_float = [("to", DataType::Float as i64)];
        let graph = GraphProto {
            node: vec![
                node("Cast", &["s16"], "s", &to_float),
                nbits_node(&["x", "w", "s"], "y", 4),
                node("Cast", &["t16"], "t", &to_float),
                nbits_node(&["x", "v", "t"], "z", 4),
                node("Relu", &["t16"], "spy", &[]),
            ],
            initializer: vec![
                inline::<u8>("w", &[1], &[0]),
                inline::<f16>("s16", &[1], &[f16::from_f32(0.5)]),
                inline::<u8>("v", &[1], &[0]),
                inline::<f16>("t16", &[1], &[f16::from_f32(0.25)]),
            ],
            ..Default::default()
        };
        let mut proto = ModelProto { graph: Some(graph), ..Default::default() };
        let detached = detach_weights(&mut proto).unwrap();
        assert_eq!(detached.len(), 1, "t16 is also read by the Relu: its node keeps its Cast");
        assert_eq!((detached.0[0].b.name.as_str(), detached.0[0].scales.name.as_str()), ("w", "s16"));
        let graph = proto.graph.unwrap();
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["MatMulNBits", "Cast", "MatMulNBits", "Relu"], "the first Cast left with its scales");
        assert_eq!(graph.node[0].input, ["x", "", ""]);
        assert_eq!(graph.node[2].input, ["x", "v", "t"]);
    }
}

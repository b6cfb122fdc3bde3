//! Import of ONNX `com.microsoft.MatMulNBits` as [`QLinear`]: 4- or 8-bit, blocks of 32, with or
//! without zero points (uint8-packed or float). Other variants (bit widths, block sizes, `g_idx`,
//! weights that are not initializers) go to tract's own importer, which dequantizes what its
//! kernels cannot run.
//!
//! The weights never pass through tract's parser (which reads each into a buffer and copies it
//! again) and are read while it works: [`detach_weights`] takes them out of the graph before
//! parsing, leaving each node a slot number; [`Detached::load`] (on another thread) reads each
//! straight into its own memory and repacks it there; type analysis wires a `PendingNBits` per
//! slot; [`pack`] puts each loaded weight into its node as a `QLinear`.
//!
//! `MatMulNBits` computes `Y = A · dequant(B)ᵀ (+ bias)` with `B [N, K/32, 32·bits/8]` uint8 (4-bit:
//! two codes per byte, element `2i` in the low nibble), `scales [N·K/32]` and
//! `w = (code - zero) · scale`, zero `2^(bits-1)` by default. With `mid = 2^(bits-1)`,
//! `(code - zero) · s == (code - mid) · s + (mid - zero) · s`: the second term is the block offset
//! of [`Q4Matrix`] / [`Q8Matrix`].

use std::collections::HashMap;

use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataLocation;
use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::math::add;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::logic::wire_with_rank_broadcast;
use tract_onnx::Onnx;

use crate::external;
use crate::offsets;
use crate::q4::Q4Matrix;
use crate::q8::Q8Matrix;
use crate::qblock::{Blocks, BLOCK};
use crate::qlinear::{QLinear, QWeight};

/// Makes `onnx` import `MatMulNBits` with this module.
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert("MatMulNBits", mat_mul_nbits);
}

/// The node attribute [`detach_weights`] leaves: the node's index in [`Detached`].
const SLOT_ATTR: &str = "pocketlm.weights";

/// The weights [`detach_weights`] took out of a graph, one entry per node (its slot), still in
/// the file.
#[derive(Debug, Default)]
pub struct Detached(Vec<NodeWeights>);

#[derive(Debug)]
struct NodeWeights {
    shape: Shape,
    b: TensorProto,
    scales: TensorProto,
    zero_points: Option<TensorProto>,
    /// The block-offset term's `[K/32, N]` offsets (`offsets.rs`).
    offsets: Option<TensorProto>,
}

/// `[n, k]` at `bits` per weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    n: usize,
    k: usize,
    bits: usize,
}

impl Shape {
    fn of(node: &NodeProto) -> TractResult<Shape> {
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
    /// The 8-bit slot whose weight bytes are exactly `table`'s: a `[n, k]` uint8 initializer in
    /// the same range of the same external data file (as the converter writes a tied embedding).
    pub fn table_slot(&self, table: &TensorProto) -> Option<usize> {
        let range = external_range(table)?;
        let dims: Vec<usize> = table.dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
        self.0.iter().position(|w| {
            let Shape { n, k, bits } = w.shape;
            bits == 8 && dims == [n, k] && external_range(&w.b).as_ref() == Some(&range)
        })
    }
}

/// `(location, offset, length)` of a tensor held in external data (not inline).
fn external_range(t: &TensorProto) -> Option<(String, String, String)> {
    let external = t.data_location == Some(DataLocation::External as i32) && t.raw_data.is_empty();
    let entry = |key: &str| t.external_data.iter().find(|e| e.key == key).map(|e| e.value.clone());
    external.then_some(())?;
    Some((entry("location")?, entry("offset").unwrap_or_default(), entry("length")?))
}

impl NodeWeights {
    fn load(self, model_dir: Option<&str>) -> TractResult<QWeight> {
        let Shape { n, k, bits } = self.shape;
        // Sizes from a damaged file must not overflow below (they are checked against the data).
        n.checked_mul(k).and_then(|nk| nk.checked_mul(bits)).context("N × K overflows")?;
        let zero_points = self.zero_points.map(|z| external::load_tensor(&z, model_dir)).transpose()?;
        let mut blocks = blocks(n, k, bits, &external::load_tensor(&self.scales, model_dir)?, zero_points.as_ref())?;
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
        if !(is_initializer(1) && is_initializer(2) && (no_input(3) || is_initializer(3))) {
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
        let (b, scales, zero_points) = (input(1), input(2), input(3));
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

fn mat_mul_nbits(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let Some(slot) = node.get_attr_opt::<i64>(SLOT_ATTR)? else {
        // Not detached (see `detach_weights`): a variant tract's importer handles.
        let tract = tract_onnx::onnx();
        let builder = tract.op_register.0.get("MatMulNBits").context("tract imports MatMulNBits")?;
        return builder(ctx, node);
    };
    let bias = optional_inputs(node).nth(5).flatten();
    Ok((expand(MatMulNBits { shape: Shape::of(node)?, slot: slot as usize, bias }), vec![]))
}

/// The block parameters of a `[n, k]` weight from `MatMulNBits` scales and zero points.
fn blocks(n: usize, k: usize, bits: usize, scales: &Tensor, zero_points: Option<&Tensor>) -> TractResult<Blocks> {
    let blocks = k / BLOCK;
    let scales = scales.cast_to::<f32>()?;
    let scales: Vec<f32> = scales.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    ensure!(scales.len() == n * blocks, "{} scales, expected {}", scales.len(), n * blocks);
    let mid = (1u32 << (bits - 1)) as f32;
    let offsets = match zero_points {
        None => None,
        Some(zp) => {
            let zeros: Vec<f32> = if zp.datum_type() == u8::datum_type() {
                let packed = zp.try_as_plain_ram()?;
                let packed: &[u8] = packed.as_slice()?;
                let per_byte = 8 / bits;
                let row_bytes = blocks.div_ceil(per_byte);
                ensure!(packed.len() == n * row_bytes, "{} zero-point bytes", packed.len());
                let mask = ((1u16 << bits) - 1) as u8;
                (0..n * blocks)
                    .map(|i| (i / blocks, i % blocks))
                    .map(|(row, blk)| (packed[row * row_bytes + blk / per_byte] >> (bits * (blk % per_byte))) & mask)
                    .map(f32::from)
                    .collect()
            } else {
                let zeros = zp.cast_to::<f32>()?;
                zeros.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()
            };
            ensure!(zeros.len() == n * blocks, "{} zero points", zeros.len());
            Some(zeros.iter().zip(&scales).map(|(z, s)| (mid - z) * s).collect())
        }
    };
    Blocks::new(n, k, scales, offsets).context("inconsistent sizes")
}

/// An imported `MatMulNBits` whose weights are in [`Detached`] slot `slot`.
#[derive(Debug, Clone)]
struct MatMulNBits {
    shape: Shape,
    slot: usize,
    bias: Option<usize>,
}

impl Expansion for MatMulNBits {
    fn name(&self) -> StaticName {
        "MatMulNBits".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        let n = self.shape.n.to_dim();
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            s.equals(&outputs[0].rank, rank as i64)?;
            for axis in 0..rank - 1 {
                s.equals(&outputs[0].shape[axis], &inputs[0].shape[axis])?;
            }
            s.equals(&outputs[0].shape[rank - 1], n.clone())
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let a = model.outlet_fact(inputs[0])?;
        ensure!(a.datum_type == f32::datum_type(), "MatMulNBits: A must be f32");
        ensure!(
            a.shape.last() == Some(&self.shape.k.to_dim()),
            "MatMulNBits: A has shape {:?}, K is {}",
            a.shape,
            self.shape.k
        );
        let pending = PendingNBits { shape: self.shape, slot: self.slot };
        let mut y = model.wire_node(prefix, pending, &[inputs[0]])?[0];
        if let Some(i) = self.bias {
            y = wire_with_rank_broadcast(format!("{prefix}.bias"), model, add(), &[y, inputs[i]])?[0];
        }
        Ok(tvec!(y))
    }
}

/// A `MatMulNBits` imported but not given its weight yet (slot `slot` of [`Detached`]). It
/// cannot run; [`pack`] replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PendingNBits {
    shape: Shape,
    slot: usize,
}

impl Op for PendingNBits {
    fn name(&self) -> StaticName {
        "PendingNBits".into()
    }

    op_as_typed_op!();
}

impl EvalOp for PendingNBits {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, _inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        bail!("MatMulNBits weights were imported but not packed (nbits::pack was not run)")
    }
}

impl TypedOp for PendingNBits {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        *shape.last_mut().context("MatMulNBits input has rank 0")? = self.shape.n.to_dim();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// Gives every imported `MatMulNBits` its loaded weight (`weights[slot]`, from
/// [`Detached::load`]) as a [`QLinear`]. Returns each slot's packed weight (`None` for a slot
/// whose node the graph no longer has), for the ops that share it (`table::pack`). Runs after
/// type analysis, before other rewrites.
pub fn pack(model: &mut TypedModel, weights: Vec<QWeight>) -> TractResult<Vec<Option<Arc<QWeight>>>> {
    let mut weights: Vec<Option<QWeight>> = weights.into_iter().map(Some).collect();
    let mut packed: Vec<Option<Arc<QWeight>>> = vec![None; weights.len()];
    let ids: Vec<usize> = model.nodes().iter().filter(|n| n.op_is::<PendingNBits>()).map(|n| n.id).collect();
    for &id in &ids {
        let pending = model.node(id).op_as::<PendingNBits>().expect("filtered above");
        let (Shape { n, k, bits }, slot) = (pending.shape, pending.slot);
        let weight = weights.get_mut(slot).and_then(Option::take);
        let weight = weight.with_context(|| format!("no weight for MatMulNBits slot {slot}"))?;
        ensure!(
            (weight.n(), weight.k(), weight.bits()) == (n, k, bits),
            "MatMulNBits slot {slot}: weight is {}×{} at {} bits, the node {n}×{k} at {bits}",
            weight.n(),
            weight.k(),
            weight.bits()
        );
        let weight = Arc::new(weight);
        packed[slot] = Some(weight.clone());
        model.node_mut(id).op = Box::new(QLinear { weight });
    }
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    enum Zeros {
        Default,
        Packed(Vec<u8>),
        Float(Vec<f32>),
    }

    /// An initializer holding `values` inline.
    fn initializer<T: Datum + Copy>(name: &str, dims: &[usize], values: &[T]) -> TensorProto {
        use tract_onnx::pb::tensor_proto::DataType;
        let dt = if T::datum_type() == u8::datum_type() { DataType::Uint8 } else { DataType::Float };
        let raw = unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u8, std::mem::size_of_val(values)) };
        TensorProto {
            name: name.into(),
            data_type: dt as i32,
            dims: dims.iter().map(|&d| d as i64).collect(),
            raw_data: raw.to_vec(),
            ..Default::default()
        }
    }

    /// Imports one MatMulNBits node through detached weights and the expansion, and runs it on
    /// `x [1, rows, k]`.
    fn run(bits: usize, n: usize, k: usize, b: Vec<u8>, scales: Vec<f32>, zeros: &Zeros, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / k;
        let shape = Shape { n, k, bits };
        let weights = NodeWeights {
            shape,
            b: initializer("b", &[n, k / BLOCK, BLOCK * bits / 8], &b),
            scales: initializer("s", &[n * k / BLOCK], &scales),
            zero_points: match zeros {
                Zeros::Default => None,
                Zeros::Packed(z) => Some(initializer("z", &[z.len()], z)),
                Zeros::Float(z) => Some(initializer("z", &[z.len()], z)),
            },
            offsets: None,
        };
        let loaded = Detached(vec![weights]).load(None).unwrap();
        let mut model = InferenceModel::default();
        let input = model.add_source("x", f32::fact([1, rows, k]).into()).unwrap();
        let y = model.wire_node("mm", expand(MatMulNBits { shape, slot: 0, bias: None }), &[input]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let mut typed = model.into_typed().unwrap();
        assert_eq!(pack(&mut typed, loaded).unwrap().iter().flatten().count(), 1);
        assert!(typed.nodes().iter().any(|n| n.op_is::<QLinear>()), "imported as QLinear");
        let plan = typed.into_runnable().unwrap();
        let out = plan.run(tvec![Tensor::from_shape(&[1, rows, k], x).unwrap().into_tvalue()]).unwrap();
        out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }

    /// `y [rows, n]` is `x · Wᵀ` for `w = (code - zero) · scale` (codes `[n, k]` in natural
    /// order, zeros and scales per block), within int8-activation error: 1% of `Σ|w·x|`.
    fn assert_dequantized_product(
        y: &[f32],
        codes: &[u8],
        zeros: &[f32],
        scales: &[f32],
        x: &[f32],
        n: usize,
        k: usize,
    ) {
        let blocks = k / BLOCK;
        for r in 0..x.len() / k {
            for j in 0..n {
                let (mut want, mut magnitude) = (0f64, 0f64);
                for i in 0..k {
                    let blk = j * blocks + i / BLOCK;
                    let w = (codes[j * k + i] as f64 - zeros[blk] as f64) * scales[blk] as f64;
                    want += w * x[r * k + i] as f64;
                    magnitude += (w * x[r * k + i] as f64).abs();
                }
                let got = y[r * n + j] as f64;
                assert!((got - want).abs() <= 0.01 * magnitude, "row {r} col {j}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn symmetric_packed_and_float_zero_points_import_exactly() {
        let (n, k, rows) = (40, 96, 3);
        let blocks = k / BLOCK;
        let mut seed = 3;
        let codes: Vec<u8> = (0..n * k).map(|_| (lcg(&mut seed) % 16) as u8).collect();
        let b: Vec<u8> = codes.chunks_exact(2).map(|p| p[0] | (p[1] << 4)).collect();
        let scales: Vec<f32> = (0..n * blocks).map(|_| (1 + lcg(&mut seed) % 100) as f32 * 1e-3).collect();
        let x: Vec<f32> = (0..rows * k).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
        let int_zeros: Vec<u8> = (0..n * blocks).map(|_| (lcg(&mut seed) % 16) as u8).collect();
        let row_bytes = blocks.div_ceil(2);
        let mut packed = vec![0u8; n * row_bytes];
        for (i, z) in int_zeros.iter().enumerate() {
            packed[(i / blocks) * row_bytes + (i % blocks) / 2] |= z << (4 * ((i % blocks) % 2));
        }
        let float_zeros: Vec<f32> = (0..n * blocks).map(|_| (lcg(&mut seed) % 1500) as f32 / 100.0).collect();
        let cases = [
            (Zeros::Default, vec![8.0; n * blocks]),
            (Zeros::Packed(packed), int_zeros.iter().map(|&z| z as f32).collect()),
            (Zeros::Float(float_zeros.clone()), float_zeros),
        ];
        for (zeros, zero_values) in &cases {
            let y = run(4, n, k, b.clone(), scales.clone(), zeros, &x);
            assert_dequantized_product(&y, &codes, zero_values, &scales, &x, n, k);
        }
    }

    #[test]
    fn eight_bit_weights_import_with_default_and_packed_zero_points() {
        let (n, k, rows) = (24, 64, 2);
        let blocks = k / BLOCK;
        let mut seed = 9;
        let codes: Vec<u8> = (0..n * k).map(|_| (lcg(&mut seed) % 256) as u8).collect();
        let scales: Vec<f32> = (0..n * blocks).map(|_| (1 + lcg(&mut seed) % 100) as f32 * 1e-4).collect();
        let x: Vec<f32> = (0..rows * k).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
        let zeros: Vec<u8> = (0..n * blocks).map(|_| (lcg(&mut seed) % 256) as u8).collect();
        let cases = [
            (Zeros::Default, vec![128.0; n * blocks]),
            (Zeros::Packed(zeros.clone()), zeros.iter().map(|&z| z as f32).collect()),
        ];
        for (zero_input, zero_values) in &cases {
            let y = run(8, n, k, codes.clone(), scales.clone(), zero_input, &x);
            assert_dequantized_product(&y, &codes, zero_values, &scales, &x, n, k);
        }
    }

    fn nbits_node(name: &str, inputs: &[&str], bits: i64) -> NodeProto {
        let int = |name: &str, i: i64| AttributeProto {
            name: name.into(),
            r#type: AttributeType::Int as i32,
            i,
            ..Default::default()
        };
        NodeProto {
            name: name.into(),
            op_type: "MatMulNBits".into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![format!("{name}.y")],
            attribute: vec![int("K", 64), int("N", 8), int("bits", bits), int("block_size", 32)],
            ..Default::default()
        }
    }

    #[test]
    fn detaching_moves_private_weights_copies_shared_ones_and_skips_unsupported_nodes() {
        let graph = GraphProto {
            node: vec![
                nbits_node("a", &["x", "wa", "sa"], 4),
                nbits_node("b", &["x", "wb", "shared", "zb"], 8),
                nbits_node("c", &["x", "wc", "shared"], 3),
                nbits_node("d", &["x", "computed", "sa"], 4),
            ],
            initializer: ["wa", "sa", "wb", "shared", "zb", "wc"]
                .iter()
                .map(|n| initializer::<u8>(n, &[1], &[0]))
                .collect(),
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
}

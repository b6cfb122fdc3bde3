//! Import of ONNX `com.microsoft.MatMulNBits` as [`QLinear`]: 4- or 8-bit, blocks of 32, with or
//! without zero points (uint8-packed or float). Other variants (bit widths, block sizes, `g_idx`,
//! weights that are not initializers) go to tract's own importer, which dequantizes what its
//! kernels cannot run.
//!
//! The weights never pass through tract's parser: `weights::detach_weights` takes them out of the
//! graph first, leaving each node a slot number, and reads them on another thread
//! (`Detached::load`); type analysis wires a `PendingNBits` per slot; [`pack`] puts each loaded
//! weight into its node as a `QLinear`.
//!
//! `MatMulNBits` computes `Y = A · dequant(B)ᵀ (+ bias)` with `B [N, K/32, 32·bits/8]` uint8 (4-bit:
//! two codes per byte, element `2i` in the low nibble), `scales [N·K/32]` and
//! `w = (code - zero) · scale`, zero `2^(bits-1)` by default. With `mid = 2^(bits-1)`,
//! `(code - zero) · s == (code - mid) · s + (mid - zero) · s`: the second term is the block offset
//! of [`crate::q4::Q4Matrix`] / [`crate::q8::Q8Matrix`].

use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::math::add;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::logic::wire_with_rank_broadcast;
use tract_onnx::Onnx;

use crate::qlinear::{QLinear, QWeight};
use crate::weights::{Shape, SLOT_ATTR};

/// Makes `onnx` import `MatMulNBits` with this module.
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert("MatMulNBits", mat_mul_nbits);
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

/// An imported `MatMulNBits` whose weights are in `Detached` slot `slot`.
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

/// A `MatMulNBits` imported but not given its weight yet (slot `slot` of `Detached`). It
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
/// `Detached::load`) as a [`QLinear`]. Returns each slot's packed weight (`None` for a slot
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
        model.node_mut(id).op = Box::new(QLinear::new(weight));
    }
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto_test::inline;
    use crate::qblock::BLOCK;
    use crate::weights::{Detached, NodeWeights};

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    enum Zeros {
        Default,
        Packed(Vec<u8>),
        Float(Vec<f32>),
    }

    /// Imports one MatMulNBits node through detached weights and the expansion, and runs it on
    /// `x [1, rows, k]`.
    fn run(bits: usize, n: usize, k: usize, b: Vec<u8>, scales: Vec<f32>, zeros: &Zeros, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / k;
        let shape = Shape { n, k, bits };
        let weights = NodeWeights {
            shape,
            b: inline("b", &[n, k / BLOCK, BLOCK * bits / 8], &b),
            scales: inline("s", &[n * k / BLOCK], &scales),
            zero_points: match zeros {
                Zeros::Default => None,
                Zeros::Packed(z) => Some(inline("z", &[z.len()], z)),
                Zeros::Float(z) => Some(inline("z", &[z.len()], z)),
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
}

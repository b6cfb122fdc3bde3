//! Import of ONNX `com.microsoft.MatMulNBits` as [`QLinear`]: 4- or 8-bit, blocks of 32, with or
//! without zero points (uint8-packed or float). Other variants (bit widths, block sizes, `g_idx`)
//! go to tract's own importer, which dequantizes what its kernels cannot run.
//!
//! Two steps, for peak memory at load: type analysis wires a `PendingNBits` that shares the ONNX
//! weight bytes with the graph's constant; [`pack`], once the parsed graph and the unused
//! constants are gone, turns each into a `QLinear`, freeing each layer's source bytes as its
//! packed copy is made (so the two copies of all weights never coexist).
//!
//! `MatMulNBits` computes `Y = A · dequant(B)ᵀ (+ bias)` with `B [N, K/32, 32·bits/8]` uint8 (4-bit:
//! two codes per byte, element `2i` in the low nibble), `scales [N·K/32]` and
//! `w = (code - zero) · scale`, zero `2^(bits-1)` by default. With `mid = 2^(bits-1)`,
//! `(code - zero) · s == (code - mid) · s + (mid - zero) · s`: the second term is the block offset
//! of [`Q4Matrix`] / [`Q8Matrix`].

use std::sync::Arc;

use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::math::add;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::logic::wire_with_rank_broadcast;
use tract_onnx::Onnx;

use crate::q4::Q4Matrix;
use crate::q8::Q8Matrix;
use crate::qblock::{Blocks, BLOCK};
use crate::qlinear::{identity_by_arc, QLinear, QWeight};

/// Makes `onnx` import `MatMulNBits` with this module.
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert("MatMulNBits", mat_mul_nbits);
}

fn mat_mul_nbits(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let k: usize = node.get_attr("K")?;
    let n: usize = node.get_attr("N")?;
    let bits: usize = node.get_attr_opt("bits")?.unwrap_or(4);
    let block_size: usize = node.get_attr("block_size")?;
    let mut optional = optional_inputs(node).skip(3);
    let (zero_points, g_idx, bias) = (optional.next().flatten(), optional.next().flatten(), optional.next().flatten());
    if !(bits == 4 || bits == 8) || block_size != BLOCK || !k.is_multiple_of(BLOCK) || g_idx.is_some() {
        let tract = tract_onnx::onnx();
        let builder = tract.op_register.0.get("MatMulNBits").context("tract imports MatMulNBits")?;
        return builder(ctx, node);
    }
    Ok((expand(MatMulNBits { k, n, bits, zero_points, bias }), vec![]))
}

#[derive(Debug, Clone)]
struct MatMulNBits {
    k: usize,
    n: usize,
    bits: usize,
    zero_points: Option<usize>,
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
        let n = self.n.to_dim();
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
        let (n, k) = (self.n, self.k);
        let blocks = k / BLOCK;
        ensure!(model.outlet_fact(inputs[0])?.datum_type == f32::datum_type(), "MatMulNBits: A must be f32");
        let konst = |i: usize, what: &str| -> TractResult<Arc<Tensor>> {
            model.outlet_fact(inputs[i])?.konst.clone().with_context(|| format!("MatMulNBits: {what} must be constant"))
        };
        let b = konst(1, "B")?;
        let b = b.try_as_plain_ram()?;
        let b: &[u8] = b.as_slice()?;
        let expected = n * k * self.bits / 8;
        ensure!(b.len() == expected, "MatMulNBits: B has {} bytes, expected {expected}", b.len());
        let scales = konst(2, "scales")?.cast_to::<f32>()?.into_owned();
        let scales: Vec<f32> = scales.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        ensure!(scales.len() == n * blocks, "MatMulNBits: {} scales, expected {}", scales.len(), n * blocks);
        let mid = (1u32 << (self.bits - 1)) as f32;
        let offsets = match self.zero_points {
            None => None,
            Some(i) => {
                let zp = konst(i, "zero_points")?;
                let zeros: Vec<f32> = if zp.datum_type() == u8::datum_type() {
                    let packed = zp.try_as_plain_ram()?;
                    let packed: &[u8] = packed.as_slice()?;
                    let per_byte = 8 / self.bits;
                    let row_bytes = blocks.div_ceil(per_byte);
                    ensure!(packed.len() == n * row_bytes, "MatMulNBits: {} zero-point bytes", packed.len());
                    let mask = ((1u16 << self.bits) - 1) as u8;
                    (0..n * blocks)
                        .map(|i| (i / blocks, i % blocks))
                        .map(|(row, blk)| {
                            (packed[row * row_bytes + blk / per_byte] >> (self.bits * (blk % per_byte))) & mask
                        })
                        .map(f32::from)
                        .collect()
                } else {
                    let zeros = zp.cast_to::<f32>()?.into_owned();
                    zeros.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()
                };
                ensure!(zeros.len() == n * blocks, "MatMulNBits: {} zero points", zeros.len());
                Some(zeros.iter().zip(&scales).map(|(z, s)| (mid - z) * s).collect())
            }
        };
        let blocks = Blocks::new(n, k, scales, offsets).context("MatMulNBits: inconsistent sizes")?;
        let pending = PendingNBits { bits: self.bits, b: konst(1, "B")?, blocks };
        let mut y = model.wire_node(prefix, pending, &[inputs[0]])?[0];
        if let Some(i) = self.bias {
            y = wire_with_rank_broadcast(format!("{prefix}.bias"), model, add(), &[y, inputs[i]])?[0];
        }
        Ok(tvec!(y))
    }
}

/// A `MatMulNBits` imported but not packed yet (see the module doc): the ONNX weight bytes and
/// the block parameters. It cannot run; [`pack`] replaces it.
#[derive(Debug, Clone)]
struct PendingNBits {
    bits: usize,
    b: Arc<Tensor>,
    blocks: Blocks,
}

impl PendingNBits {
    /// The packed weight, made in place in the ONNX bytes' own memory when this op holds the only
    /// reference to them (as after [`pack`]'s compaction), else in a copy.
    fn into_weight(self) -> TractResult<QWeight> {
        let b = Arc::try_unwrap(self.b).unwrap_or_else(|shared| (*shared).clone());
        let weight = if self.bits == 4 {
            Q4Matrix::from_nbits(b, self.blocks).map(QWeight::Q4)
        } else {
            Q8Matrix::from_nbits(b, self.blocks).map(QWeight::Q8)
        };
        weight.context("MatMulNBits: inconsistent sizes")
    }
}

identity_by_arc!(PendingNBits, b);

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
        *shape.last_mut().context("MatMulNBits input has rank 0")? = self.blocks.n().to_dim();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// Turns every imported `MatMulNBits` into a [`QLinear`]: drops the graph's unused nodes first
/// (the weight constants), then packs layer by layer, each source buffer freed as its node's op
/// is replaced. Returns how many were packed. Runs after type analysis, before other rewrites.
pub fn pack(model: &mut TypedModel) -> TractResult<usize> {
    model.compact()?;
    let ids: Vec<usize> = model.nodes().iter().filter(|n| n.op_is::<PendingNBits>()).map(|n| n.id).collect();
    for &id in &ids {
        let pending = model.node(id).op_as::<PendingNBits>().expect("filtered above").clone();
        // Take the node's reference to the bytes away first, so that `pending` holds the last one
        // and the weight is packed in place.
        model.node_mut(id).op = Box::new(tract_onnx::tract_core::ops::dummy::Dummy);
        let linear = QLinear { weight: Arc::new(pending.into_weight()?) };
        model.node_mut(id).op = Box::new(linear);
    }
    Ok(ids.len())
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

    /// Imports one MatMulNBits node through the expansion and runs it on `x [1, rows, k]`.
    fn run(bits: usize, n: usize, k: usize, b: Vec<u8>, scales: Vec<f32>, zeros: &Zeros, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / k;
        let mut model = InferenceModel::default();
        let input = model.add_source("x", f32::fact([1, rows, k]).into()).unwrap();
        let b = model.add_const("b", Tensor::from_shape(&[n, k / BLOCK, BLOCK * bits / 8], &b).unwrap()).unwrap();
        let s = model.add_const("s", Tensor::from_shape(&[n * k / BLOCK], &scales).unwrap()).unwrap();
        let mut inputs = vec![input, b, s];
        match zeros {
            Zeros::Default => {}
            Zeros::Packed(z) => inputs.push(model.add_const("z", Tensor::from_shape(&[z.len()], z).unwrap()).unwrap()),
            Zeros::Float(z) => inputs.push(model.add_const("z", Tensor::from_shape(&[z.len()], z).unwrap()).unwrap()),
        }
        let op = MatMulNBits { k, n, bits, zero_points: (inputs.len() == 4).then_some(3), bias: None };
        let y = model.wire_node("mm", expand(op), &inputs).unwrap();
        model.select_output_outlets(&y).unwrap();
        let mut typed = model.into_typed().unwrap();
        assert_eq!(pack(&mut typed).unwrap(), 1);
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

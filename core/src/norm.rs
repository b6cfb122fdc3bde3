//! A block's residual add, RMS norm and scale as one op, replacing at load the three the graph
//! has between every two blocks (`Add`, `RmsNorm`, a `Mul` by the norm's weights): at one token
//! per step each op costs more to dispatch than to compute.

use std::sync::Arc;

use tract_linalg::routines::rms_norm_f32;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use crate::filled::filled;

/// `sum = x + delta` (when `residual`), `normed = rms_norm(sum or x) · gamma` over the last axis,
/// with tract's own RMS norm kernel (the one its `RmsNorm` op runs), so the bits are the
/// decomposed graph's. Outputs: `[sum, normed]`, or `[normed]` without the residual input.
#[derive(Clone, Debug)]
pub struct ResidualNorm {
    /// Whether the op adds its two inputs first.
    pub residual: bool,
    /// The norm's epsilon as f32 bits.
    pub eps_bits: u32,
    /// The scale, one value per feature.
    pub gamma: Arc<Vec<f32>>,
}

impl ResidualNorm {
    fn eps(&self) -> f32 {
        f32::from_bits(self.eps_bits)
    }
}

// Compared by which weights they hold, as the other weight-holding ops.
impl PartialEq for ResidualNorm {
    fn eq(&self, other: &Self) -> bool {
        self.residual == other.residual && self.eps_bits == other.eps_bits && Arc::ptr_eq(&self.gamma, &other.gamma)
    }
}

impl Eq for ResidualNorm {}

impl std::hash::Hash for ResidualNorm {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.residual, self.eps_bits, Arc::as_ptr(&self.gamma)).hash(state)
    }
}

impl Op for ResidualNorm {
    fn name(&self) -> StaticName {
        "ResidualNorm".into()
    }
    op_as_typed_op!();
}

impl EvalOp for ResidualNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == if self.residual { 2 } else { 1 }, "ResidualNorm: {} inputs", inputs.len());
        let shape: TVec<usize> = inputs[0].shape().into();
        let gamma = &self.gamma[..];
        ensure!(shape.last() == Some(&gamma.len()), "ResidualNorm input {shape:?}, {} weights", gamma.len());
        let x = inputs[0].to_plain_array_view::<f32>()?;
        let x = x.as_slice().context("ResidualNorm input must be contiguous")?;
        let delta = if self.residual {
            ensure!(inputs[1].shape() == &*shape, "ResidualNorm inputs {shape:?} and {:?}", inputs[1].shape());
            Some(inputs[1].to_plain_array_view::<f32>()?)
        } else {
            None
        };
        let delta =
            delta.as_ref().map(|d| d.as_slice().context("ResidualNorm input must be contiguous")).transpose()?;
        let rms_norm = rms_norm_f32()?;
        let mut sum = None;
        let normed = filled(&shape, |out| {
            match delta {
                Some(delta) => out.iter_mut().zip(x.iter().zip(delta)).for_each(|(o, (a, b))| *o = a + b),
                None => out.copy_from_slice(x),
            }
            if delta.is_some() {
                sum = Some(Tensor::from_shape(&shape, out));
            }
            for row in out.chunks_exact_mut(gamma.len()) {
                rms_norm(row, self.eps());
                row.iter_mut().zip(gamma).for_each(|(v, g)| *v *= g);
            }
        })?;
        Ok(match sum {
            Some(sum) => tvec![sum?.into_tvalue(), normed.into_tvalue()],
            None => tvec![normed.into_tvalue()],
        })
    }
}

impl TypedOp for ResidualNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == if self.residual { 2 } else { 1 });
        let fact = f32::fact(inputs[0].shape.clone());
        Ok(if self.residual { tvec!(fact.clone(), fact) } else { tvec!(fact) })
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use tract_onnx::tract_core::ops::nn::RmsNorm;

    use super::*;

    #[test]
    fn gives_the_bits_of_add_then_rms_norm_then_scale() {
        let (rows, dim) = (3, 40);
        let value = |i: usize, seed: usize| (((i + seed) * 7919 % 2003) as f32 - 1001.0) / 337.0;
        let x: Vec<f32> = (0..rows * dim).map(|i| value(i, 1)).collect();
        let delta: Vec<f32> = (0..rows * dim).map(|i| value(i, 2)).collect();
        let gamma: Vec<f32> = (0..dim).map(|i| value(i, 3)).collect();
        let t = |v: &[f32]| Tensor::from_shape(&[1, rows, dim], v).unwrap().into_tvalue();
        let ctx = EvalContext::out_of_plan();
        let eps = 1e-5f32;
        let op = |residual| ResidualNorm { residual, eps_bits: eps.to_bits(), gamma: Arc::new(gamma.clone()) };
        let fused = op(true).eval(&ctx, tvec![t(&x), t(&delta)]).unwrap();
        let plain = op(false).eval(&ctx, tvec![t(&x)]).unwrap();
        let sum: Vec<f32> = x.iter().zip(&delta).map(|(a, b)| a + b).collect();
        // tract's RmsNorm op, then the multiply.
        let norm = RmsNorm { axis: 2, eps: Arc::new(tensor0(eps)) };
        let expect = |x: &[f32]| -> Vec<f32> {
            let normed = norm.eval(&ctx, tvec![t(x)]).unwrap().remove(0);
            let normed = normed.to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<f32>>();
            normed.chunks_exact(dim).flat_map(|row| row.iter().zip(&gamma).map(|(v, g)| v * g)).collect()
        };
        let values = |t: &TValue| t.to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<f32>>();
        assert_eq!(fused.len(), 2);
        assert_eq!(values(&fused[0]), sum);
        assert_eq!(values(&fused[1]), expect(&sum));
        assert_eq!(values(&plain[0]), expect(&x));
        assert!(op(true).eval(&ctx, tvec![t(&x)]).is_err(), "a missing residual input is refused");
    }
}

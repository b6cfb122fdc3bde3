//! A fused rotary position embedding op (rotate-half convention), replacing the
//! slice / neg / concat / mul / mul / add chain at load: one pass, one buffer.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// `x * cos + rotate_half(x) * sin` with x `[1, heads, seq, dim]` and cos, sin `[1, 1, seq, dim]`,
/// where `rotate_half([a, b]) = [-b, a]` on the last axis. Same arithmetic, same rounding, as the
/// decomposed graph.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Rope;

impl Op for Rope {
    fn name(&self) -> StaticName {
        "Rope".into()
    }
    op_as_typed_op!();
}

impl EvalOp for Rope {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, cos, sin) = args_3!(inputs);
        let shape = x.shape().to_vec();
        ensure!(shape.len() == 4 && shape[0] == 1, "Rope input shape {shape:?}");
        let (seq, dim) = (shape[2], shape[3]);
        ensure!(dim % 2 == 0 && cos.shape() == [1, 1, seq, dim] && sin.shape() == cos.shape());
        let x = x.to_plain_array_view::<f32>()?;
        let (cos, sin) = (cos.to_plain_array_view::<f32>()?, sin.to_plain_array_view::<f32>()?);
        let (Some(x), Some(cos), Some(sin)) = (x.as_slice(), cos.as_slice(), sin.as_slice()) else {
            bail!("Rope inputs must be contiguous")
        };
        let mut out = vec![0f32; x.len()];
        for (o, xs) in out.chunks_exact_mut(seq * dim).zip(x.chunks_exact(seq * dim)) {
            for (((o, x), c), s) in
                o.chunks_exact_mut(dim).zip(xs.chunks_exact(dim)).zip(cos.chunks_exact(dim)).zip(sin.chunks_exact(dim))
            {
                rotate(x, c, s, o);
            }
        }
        Ok(tvec!(Tensor::from_shape(&shape, &out)?.into_tvalue()))
    }
}

/// One head's row: `out = x * cos + rotate_half(x) * sin` (`x`, `cos`, `sin`, `out`: `dim` values,
/// `dim` even).
pub(crate) fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for i in 0..half {
        o1[i] = x1[i] * cos[i] + -x2[i] * sin[i];
        o2[i] = x2[i] * cos[half + i] + x1[i] * sin[half + i];
    }
}

impl TypedOp for Rope {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3);
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_pairs_like_the_decomposed_formula() {
        let (heads, seq, dim) = (2, 3, 4);
        let x: Vec<f32> = (0..heads * seq * dim).map(|i| i as f32 * 0.5 - 3.0).collect();
        let cos: Vec<f32> = (0..seq * dim).map(|i| (i as f32 * 0.3).cos()).collect();
        let sin: Vec<f32> = (0..seq * dim).map(|i| (i as f32 * 0.3).sin()).collect();
        let t = |shape: &[usize], v: &[f32]| Tensor::from_shape(shape, v).unwrap().into_tvalue();
        let inputs = tvec![t(&[1, heads, seq, dim], &x), t(&[1, 1, seq, dim], &cos), t(&[1, 1, seq, dim], &sin)];
        let out = Rope.eval(&EvalContext::out_of_plan(), inputs).unwrap().remove(0);
        let out: Vec<f32> = out.to_plain_array_view::<f32>().unwrap().iter().copied().collect();
        for h in 0..heads {
            for s in 0..seq {
                let row = &x[(h * seq + s) * dim..][..dim];
                let rotated = [-row[2], -row[3], row[0], row[1]];
                for i in 0..dim {
                    let want = row[i] * cos[s * dim + i] + rotated[i] * sin[s * dim + i];
                    assert_eq!(out[(h * seq + s) * dim + i], want);
                }
            }
        }
    }
}

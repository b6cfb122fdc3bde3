//! `SwiGlu`: a gated feed-forward block's two products and its gating in one op,
//! `y = silu(x · Gᵀ) ⊙ (x · Uᵀ)`, replacing `QLinear(gate)`, `Sigmoid`, two `Mul`s and
//! `QLinear(up)` (`rewrite::fuse_swiglu`).

use std::sync::Arc;

use tract_linalg::multithread::{current_tract_executor, Executor};
use tract_linalg::Func;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use crate::qlinear::{QLinear, QWeight};

/// Gated values from which a multithread plan gates them in parts on its pool.
const PARALLEL_VALUES: usize = 16 * 1024;

/// The gate and up products as one [`QLinear`] (activations quantized once, one pool dispatch),
/// then tract's SiLU kernel (the one its `Silu` op runs) and the product, in place on the gate's
/// output.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SwiGlu {
    products: QLinear,
}

impl SwiGlu {
    /// The block of `gate` and `up` (same shape).
    pub fn new(gate: Arc<QWeight>, up: Arc<QWeight>) -> Self {
        SwiGlu { products: QLinear { weights: vec![gate, up] } }
    }

    /// The gate and up weights.
    pub fn weights(&self) -> &[Arc<QWeight>] {
        &self.products.weights
    }
}

impl Op for SwiGlu {
    fn name(&self) -> StaticName {
        "SwiGlu".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        self.products.info()
    }

    op_as_typed_op!();
}

impl EvalOp for SwiGlu {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut products = self.products.eval(ctx, inputs)?.into_iter();
        let (gate, up) = (products.next().context("gate")?, products.next().context("up")?);
        let mut out = gate.into_tensor();
        let mut view = out.to_plain_array_view_mut::<f32>()?;
        let y = view.as_slice_mut().context("fresh tensor is contiguous")?;
        let up = up.to_plain_array_view::<f32>()?;
        let up = up.as_slice().context("fresh tensor is contiguous")?;
        let silu = Func::Silu.ew_f32()?;
        let gating = |y: &mut [f32], up: &[f32]| -> TractResult<()> {
            silu.run(y)?;
            y.iter_mut().zip(up).for_each(|(y, u)| *y *= u);
            Ok(())
        };
        match current_tract_executor() {
            // Prefill: in parts on the pool, as tract's element-wise ops would be.
            Executor::MultiThread(pool) if y.len() >= PARALLEL_VALUES => {
                let per_task = y.len().div_ceil(pool.current_num_threads()).next_multiple_of(16);
                let parts: Vec<(&mut [f32], &[f32])> = y.chunks_mut(per_task).zip(up.chunks(per_task)).collect();
                let mut results: Vec<TractResult<()>> = parts.iter().map(|_| Ok(())).collect();
                pool.scope(|scope| {
                    for ((y, up), result) in parts.into_iter().zip(results.iter_mut()) {
                        let gating = &gating;
                        scope.spawn(move |_| *result = gating(y, up));
                    }
                });
                results.into_iter().collect::<TractResult<()>>()?;
            }
            _ => gating(y, up)?,
        }
        drop(view);
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for SwiGlu {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let facts = self.products.output_facts(inputs)?;
        ensure!(facts[0] == facts[1], "gate and up products differ: {facts:?}");
        Ok(tvec!(facts[0].clone()))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        self.products.cost(inputs)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use tract_linalg::multithread::multithread_tract_scope;

    use super::*;
    use crate::q4::Q4Matrix;
    use crate::qblock::Blocks;

    fn weight(n: usize, k: usize, seed: &mut u64) -> Arc<QWeight> {
        let mut next = || {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *seed >> 33
        };
        let scales: Vec<f32> = (0..n * k / 32).map(|_| (next() % 1000) as f32 * 1e-3).collect();
        let codes: Vec<u8> = (0..n * k).map(|_| (next() % 16) as u8).collect();
        Arc::new(QWeight::Q4(Q4Matrix::new(&codes, Blocks::new(n, k, scales, None).unwrap()).unwrap()))
    }

    #[test]
    fn gates_the_up_product_with_the_silu_of_the_gate_product() {
        let (n, k, mut seed) = (1024, 64, 9);
        let (gate, up) = (weight(n, k, &mut seed), weight(n, k, &mut seed));
        let op = SwiGlu::new(gate.clone(), up.clone());
        // One row (decode) and enough rows for the gating to run in parts on a pool.
        for rows in [1, 20] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7919 % 2001) as f32 / 1000.0 - 1.0) * 0.7).collect();
            let x = Tensor::from_shape(&[1, rows, k], &x).unwrap().into_tvalue();
            let ctx = EvalContext::out_of_plan();
            let product = |w: &Arc<QWeight>| QLinear::new(w.clone()).eval(&ctx, tvec![x.clone()]).unwrap().remove(0);
            let (g, u) = (product(&gate), product(&up));
            let (g, u) = (g.to_plain_array_view::<f32>().unwrap(), u.to_plain_array_view::<f32>().unwrap());
            for executor in [Executor::SingleThread, Executor::multithread(3)] {
                let got = multithread_tract_scope(executor, || op.eval(&ctx, tvec![x.clone()]).unwrap().remove(0));
                assert_eq!(got.shape(), &[1, rows, n]);
                let got = got.to_plain_array_view::<f32>().unwrap();
                for ((&y, &g), &u) in got.iter().zip(g.iter()).zip(u.iter()) {
                    // tract's SiLU kernel is a rational approximation (off by ~1e-5 where the gate is
                    // far below zero), as in its `Silu` op.
                    let want = g / (1.0 + (-g).exp()) * u;
                    let bound = 1e-5 * (1.0 + want.abs() + u.abs());
                    assert!((y - want).abs() <= bound, "{y} vs {want} (gate {g}, up {u})");
                }
            }
        }
    }
}

//! A fused causal attention op over a caller-fed KV cache, replacing the decomposed
//! matmul / mask / softmax / matmul block at load.
//!
//! In tract's decomposed form every step re-packs the whole cache for two matmuls (1.5 ms per
//! token at 300 tokens of context, 5 ms at 1000). Here decode reads the cache in place; prefill
//! chunks use ndarray's GEMM.

use ndarray::{s, ArrayView2, ArrayViewMut2, Axis};
use tract_linalg::element_wise::ElementWise;
use tract_linalg::multithread::{current_tract_executor, Executor};
use tract_linalg::reduce::{MapReduce, Reduce};
use tract_linalg::routines::Func;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Rows at or below which the direct (per-row) kernel runs instead of GEMM.
const DIRECT_ROWS: usize = 16;

/// `out[h, r] = softmax(scale * q[h, r] . k[h, j] for j <= pos(r)) . v[h, j]`, with
/// q `[1, kv, rows, d]` (the group's query heads stacked along rows: row `r` is at position
/// `positions[r % seq]`), k and v `[1, kv, total, d]`, positions `[1, seq]` i64.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CachedAttention {
    /// `scale` as f32 bits (ops must be hashable).
    pub scale_bits: u32,
}

impl Op for CachedAttention {
    fn name(&self) -> StaticName {
        "CachedAttention".into()
    }
    op_as_typed_op!();
}

impl EvalOp for CachedAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (q, k, v, positions) = args_4!(inputs);
        let q = q.to_plain_array_view::<f32>()?;
        let k = k.to_plain_array_view::<f32>()?;
        let v = v.to_plain_array_view::<f32>()?;
        let positions = positions.to_plain_array_view::<i64>()?;
        ensure!(q.ndim() == 4 && k.ndim() == 4 && v.ndim() == 4 && positions.ndim() == 2);
        let (heads, rows, dim) = (q.shape()[1], q.shape()[2], q.shape()[3]);
        let total = k.shape()[2];
        let seq = positions.shape()[1];
        ensure!(seq > 0 && rows % seq == 0 && k.shape()[1] == heads && v.shape() == k.shape() && k.shape()[3] == dim);
        let softmax = Softmax::new(f32::from_bits(self.scale_bits))?;
        let visible: Vec<usize> =
            (0..rows).map(|r| (positions[[0, r % seq]].max(-1) + 1).min(total as i64) as usize).collect();
        let mut out = Tensor::zero::<f32>(&[1, heads, rows, dim])?;
        {
            let mut out_view = out.to_plain_array_view_mut::<f32>()?;
            let (q, k, v) = (q.view(), k.view(), v.view());
            let head = |h: usize, mut out: ArrayViewMut2<f32>| {
                let (qh, kh, vh) = (head_view(&q, h), head_view(&k, h), head_view(&v, h));
                attend(qh, kh, vh, &visible, &softmax, &mut out)
            };
            let mut out_heads = out_view.index_axis_mut(Axis(0), 0);
            let outs: Vec<ArrayViewMut2<f32>> = out_heads
                .axis_iter_mut(Axis(0))
                .map(|o| o.into_dimensionality::<ndarray::Ix2>().expect("rank checked"))
                .collect();
            // Heads are independent: in prefill, spread them over the plan's thread pool when it has
            // one (for decode's few rows the dispatch costs more than it saves).
            match current_tract_executor() {
                Executor::MultiThread(pool) if heads > 1 && rows > DIRECT_ROWS => pool.scope(|scope| {
                    for (h, o) in outs.into_iter().enumerate() {
                        let head = &head;
                        scope.spawn(move |_| head(h, o));
                    }
                }),
                _ => outs.into_iter().enumerate().for_each(|(h, o)| head(h, o)),
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Head `h` of a `[1, heads, rows, dim]` tensor.
fn head_view<'a>(t: &ndarray::ArrayViewD<'a, f32>, h: usize) -> ArrayView2<'a, f32> {
    t.clone().slice_move(s![0, h, .., ..]).into_dimensionality::<ndarray::Ix2>().expect("rank checked")
}

/// One KV head: direct per-row kernel for a few rows (decode), GEMM for many (prefill).
fn attend(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    visible: &[usize],
    softmax: &Softmax,
    out: &mut ArrayViewMut2<f32>,
) {
    if q.nrows() <= DIRECT_ROWS {
        return direct(q, k, v, visible, softmax, out);
    }
    let mut scores = q.dot(&k.t());
    for (mut row, &n) in scores.axis_iter_mut(Axis(0)).zip(visible) {
        softmax.apply(row.as_slice_mut().expect("fresh array is contiguous"), n);
    }
    out.assign(&scores.dot(&v));
}

/// Per-row attention reading keys and values in place (decode: a few rows), using AVX2+FMA
/// when the CPU has them (tract's own kernels do the same runtime dispatch).
fn direct(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    visible: &[usize],
    softmax: &Softmax,
    out: &mut ArrayViewMut2<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features `direct_avx2` is compiled for.
        return unsafe { direct_avx2(q, k, v, visible, softmax, out) };
    }
    direct_portable(q, k, v, visible, softmax, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn direct_avx2(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    visible: &[usize],
    softmax: &Softmax,
    out: &mut ArrayViewMut2<f32>,
) {
    direct_portable(q, k, v, visible, softmax, out)
}

#[inline(always)]
fn direct_portable(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    visible: &[usize],
    softmax: &Softmax,
    out: &mut ArrayViewMut2<f32>,
) {
    let dim = q.ncols();
    // Cache heads are contiguous in practice (tract tensors are dense); copy only if not.
    let (k, v) = (k.as_standard_layout(), v.as_standard_layout());
    let (Some(k), Some(v)) = (k.as_slice(), v.as_slice()) else { return };
    let mut scores = vec![0f32; k.len() / dim];
    let mut acc = vec![0f32; dim];
    for (r, mut o) in out.axis_iter_mut(Axis(0)).enumerate() {
        let n = visible[r];
        let qr = q.row(r).to_vec();
        for (score, key) in scores[..n].iter_mut().zip(k.chunks_exact(dim)) {
            *score = dot(&qr, key);
        }
        softmax.apply(&mut scores[..n], n);
        acc.fill(0.0);
        for (&p, value) in scores[..n].iter().zip(v.chunks_exact(dim)) {
            for (a, &x) in acc.iter_mut().zip(value) {
                *a += p * x;
            }
        }
        o.iter_mut().zip(&acc).for_each(|(o, a)| *o = *a);
    }
}

/// Dot product with 8 independent accumulators (vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Scaled, masked softmax with tract-linalg's own row kernels (the ones tract's `Softmax` op
/// uses), so numerics match the decomposed graph.
struct Softmax {
    scale: f32,
    max: Box<dyn Reduce<f32>>,
    exp_sum: Box<dyn MapReduce<f32, f32>>,
    mul: Box<dyn ElementWise<f32, f32>>,
}

impl Softmax {
    fn new(scale: f32) -> TractResult<Self> {
        Ok(Softmax {
            scale,
            max: Func::ReduceMax.reduce_f32()?,
            exp_sum: Func::Softmax2.map_reduce_f32()?,
            mul: Func::MulByScalar.ew_f32_param()?,
        })
    }

    /// In place: softmax of `scale * row[..n]`; `row[n..]` (masked keys) becomes 0.
    #[inline(always)]
    fn apply(&self, row: &mut [f32], n: usize) {
        let (live, masked) = row.split_at_mut(n);
        masked.fill(0.0);
        if live.is_empty() {
            return;
        }
        if self.kernels(live).is_err() {
            // The kernels take any f32 slice; should one refuse, compute the same plainly.
            live.iter_mut().for_each(|x| *x *= self.scale);
            let max = live.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            live.iter_mut().for_each(|x| *x = (*x - max).exp());
            let sum: f32 = live.iter().sum();
            live.iter_mut().for_each(|x| *x /= sum);
        }
    }

    fn kernels(&self, live: &mut [f32]) -> TractResult<()> {
        self.mul.run_with_params(live, self.scale)?;
        let max = self.max.run(live)?;
        let sum = self.exp_sum.run_with_params(live, max)?;
        self.mul.run_with_params(live, sum.recip())
    }
}

impl TypedOp for CachedAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 4);
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 attention with the same layout and mask, as the reference.
    fn reference(q: &[f32], k: &[f32], v: &[f32], positions: &[i64], scale: f64) -> Vec<f32> {
        let (heads, dim, seq) = (2, 8, positions.len());
        let (rows, total) = (q.len() / heads / dim, k.len() / heads / dim);
        let mut out = vec![0f32; q.len()];
        for h in 0..heads {
            for r in 0..rows {
                let visible = (positions[r % seq] + 1) as usize;
                let qr = &q[(h * rows + r) * dim..][..dim];
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        let kj = &k[(h * total + j) * dim..][..dim];
                        qr.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..dim {
                    let acc: f64 = (0..visible).map(|j| e[j] / sum * v[(h * total + j) * dim + d] as f64).sum();
                    out[(h * rows + r) * dim + d] = acc as f32;
                }
            }
        }
        out
    }

    fn random(shape: &[usize], seed: u32) -> (Vec<f32>, TValue) {
        let n: usize = shape.iter().product();
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        let data: Vec<f32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        let tensor = Tensor::from_shape(shape, &data).unwrap().into_tvalue();
        (data, tensor)
    }

    #[test]
    fn matches_reference_for_decode_and_prefill_rows_with_a_cache_offset() {
        let scale = 1.0 / 8f64.sqrt();
        let op = CachedAttention { scale_bits: (scale as f32).to_bits() };
        // (new tokens, cached tokens before them): decode (direct kernel) and prefill (GEMM).
        for (seq, past) in [(1usize, 0usize), (1, 37), (3, 5), (12, 0), (12, 20)] {
            let (heads, group, dim, total) = (2, 3, 8, past + seq);
            let q = random(&[1, heads, group * seq, dim], 1);
            let k = random(&[1, heads, total, dim], 2);
            let v = random(&[1, heads, total, dim], 3);
            let positions: Vec<i64> = (past as i64..total as i64).collect();
            let pos = Tensor::from_shape(&[1, seq], &positions).unwrap();
            let inputs = tvec![q.1, k.1, v.1, pos.into_tvalue()];
            let got = op.eval(&EvalContext::out_of_plan(), inputs).unwrap().remove(0);
            let want = reference(&q.0, &k.0, &v.0, &positions, scale);
            let got = got.to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<f32>>();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-5, "seq {seq} past {past} at {i}: {g} vs {w}");
            }
        }
    }
}

//! A fused causal attention op that owns its layer's KV cache, replacing at load the decomposed
//! concat / matmul / mask / softmax / matmul block.
//!
//! In tract's decomposed form every step copies the whole cache into a new, longer tensor and
//! re-packs it for two matmuls (2.2 and 5.3 ms per token at 1000 tokens of context). Here the cache
//! lives in the op's per-session state ([`LayerKv`]), new keys and values are appended in place,
//! decode reads the cache where it is, and prefill chunks use ndarray's GEMM.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use tract_linalg::element_wise::ElementWise;
use tract_linalg::multithread::{current_tract_executor, Executor};
use tract_linalg::reduce::{MapReduce, Reduce};
use tract_linalg::routines::Func;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use crate::attention_layout::Layout;
use crate::kv_cache::{Head, KvPrecision, LayerKv};

/// Rows at or below which the direct (per-row) kernel runs instead of GEMM.
const DIRECT_ROWS: usize = 16;

/// Cached positions from which the direct kernel's heads run as tasks on a multithread plan's pool.
const PARALLEL_POSITIONS: usize = 256;

/// Prefill GEMM pieces per pool thread (all heads together).
const PIECES_PER_THREAD: usize = 2;

/// Appends `k_new`, `v_new` (`[1, kv, seq, d]`) to the session's cache, then computes
/// `out[h, r] = softmax(scale * q[h, r] . k[h, j] for j <= pos(r)) . v[h, j]` with q
/// `[1, kv, rows, d]` (the group's query heads stacked along rows: row `r` is at position
/// `positions[r % seq]`) and positions `[1, seq]` i64.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CachedAttention {
    /// `scale` as f32 bits (ops must be hashable).
    pub scale_bits: u32,
    /// `Some(query heads)`: the sequence-major form ([`crate::attention_layout`]), with inputs q
    /// `[1, seq, heads · d]`, k and v `[1, seq, kv · d]`, positions, and the rotary embedding's
    /// cos and sin `[1, 1, seq, d]` (applied to q and k here), and output `[1, seq, heads · d]`.
    pub sequence_major: Option<usize>,
}

impl Op for CachedAttention {
    fn name(&self) -> StaticName {
        "CachedAttention".into()
    }
    op_as_typed_op!();
}

impl EvalOp for CachedAttention {
    not_out_of_plan!();

    fn state(&self, _ctx: &EvalContext) -> TractResult<Option<Box<dyn OpState>>> {
        let kv = LayerKv::new(KvPrecision::F32);
        Ok(Some(Box::new(LayerCache { scale: f32::from_bits(self.scale_bits), kv })))
    }
}

impl TypedOp for CachedAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == if self.sequence_major.is_some() { 6 } else { 4 });
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

/// One layer's attention state for one session: its KV cache and the scores' scale.
#[derive(Clone, Debug)]
pub struct LayerCache {
    scale: f32,
    kv: LayerKv,
}

impl LayerCache {
    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.kv.bytes()
    }

    /// See [`LayerKv::set_precision`].
    pub fn set_precision(&mut self, precision: KvPrecision) -> bool {
        self.kv.set_precision(precision)
    }

    /// Keeps the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        self.kv.truncate(len)
    }
}

impl OpState for LayerCache {
    fn eval(&mut self, _ctx: &EvalContext, op: &dyn Op, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let q_heads = op.downcast_ref::<CachedAttention>().and_then(|op| op.sequence_major);
        let out = match q_heads {
            Some(q_heads) => {
                ensure!(inputs.len() == 6, "sequence-major attention takes 6 inputs");
                let layout = Layout::of(&inputs[0], &inputs[1], &inputs[4], q_heads)?;
                let out = self.attend(layout.to_head_major(&inputs)?)?;
                layout.to_sequence_major(&out)?
            }
            None => self.attend(inputs)?,
        };
        Ok(tvec!(out.into_tvalue()))
    }

    fn reset_lanes(&mut self, _lanes: &[LaneId]) -> TractResult<()> {
        Ok(())
    }
}

impl LayerCache {
    /// The head-major form: appends `k_new`, `v_new` and attends with `q` (see
    /// [`CachedAttention`]).
    fn attend(&mut self, inputs: TVec<TValue>) -> TractResult<Tensor> {
        let (q, k_new, v_new, positions) = args_4!(inputs);
        let q = q.to_plain_array_view::<f32>()?;
        let k_new = k_new.to_plain_array_view::<f32>()?;
        let v_new = v_new.to_plain_array_view::<f32>()?;
        let positions = positions.to_plain_array_view::<i64>()?;
        ensure!(q.ndim() == 4 && k_new.ndim() == 4 && v_new.shape() == k_new.shape() && positions.ndim() == 2);
        let (heads, rows, dim) = (q.shape()[1], q.shape()[2], q.shape()[3]);
        let seq = positions.shape()[1];
        ensure!(seq > 0 && rows % seq == 0 && k_new.shape()[1] == heads && k_new.shape()[2] == seq);
        ensure!(k_new.shape()[3] == dim);
        self.kv.append(&k_new, &v_new)?;
        let total = self.kv.len();
        let softmax = Softmax::new(self.scale)?;
        let visible: Vec<usize> =
            (0..rows).map(|r| (positions[[0, r % seq]].max(-1) + 1).min(total as i64) as usize).collect();
        let mut out = Tensor::zero::<f32>(&[1, heads, rows, dim])?;
        {
            let mut out_view = out.to_plain_array_view_mut::<f32>()?;
            let kv = &self.kv;
            if rows <= DIRECT_ROWS {
                let (Some(q), Some(o)) = (q.as_slice(), out_view.as_slice_mut()) else {
                    bail!("attention tensors must be contiguous")
                };
                let part = rows * dim;
                let pass = DecodePass { dim, visible: &visible, softmax: &softmax, simd: simd_usable(dim) };
                let head = |h: usize, q: &[f32], o: &mut [f32]| pass.head(q, kv.keys(h), kv.values(h), o);
                let heads_iter = q.chunks_exact(part).zip(o.chunks_exact_mut(part)).enumerate();
                match current_tract_executor() {
                    // A long context makes each head's pass worth a task on the plan's pool.
                    Executor::MultiThread(pool) if heads > 1 && total >= PARALLEL_POSITIONS => pool.scope(|scope| {
                        for (h, (q, o)) in heads_iter {
                            let head = &head;
                            scope.spawn(move |_| head(h, q, o));
                        }
                    }),
                    _ => heads_iter.for_each(|(h, (q, o))| head(h, q, o)),
                }
            } else {
                let (Some(q), Some(o)) = (q.as_slice(), out_view.as_slice_mut()) else {
                    bail!("attention tensors must be contiguous")
                };
                // On a pool, each head's rows in pieces, so that a few heads spread over the
                // threads evenly (three heads on two threads: six pieces instead of two rounds);
                // a piece reads only the positions its rows see.
                let executor = current_tract_executor();
                let per_head = match &executor {
                    Executor::MultiThread(pool) => (PIECES_PER_THREAD * pool.current_num_threads()).div_ceil(heads),
                    _ => 1,
                };
                let piece_rows = rows.div_ceil(per_head).max(1);
                let pieces: Vec<(usize, std::ops::Range<usize>)> = (0..heads)
                    .flat_map(|h| (0..rows).step_by(piece_rows).map(move |r| (h, r..rows.min(r + piece_rows))))
                    .collect();
                let mut outs = Vec::with_capacity(pieces.len());
                let mut rest = o;
                for (_, r) in &pieces {
                    let (piece, tail) = rest.split_at_mut(r.len() * dim);
                    outs.push(piece);
                    rest = tail;
                }
                let piece = |h: usize, r: std::ops::Range<usize>, out: &mut [f32]| {
                    let visible = &visible[r.clone()];
                    let seen = visible.iter().copied().max().unwrap_or(0);
                    // The GEMMs read f32: an f16 or int8 cache is widened here, per piece.
                    let keys = kv.keys(h).first(seen, dim).to_f32();
                    let values = kv.values(h).first(seen, dim).to_f32();
                    let k = ArrayView2::from_shape((seen, dim), &keys[..]).expect("whole positions");
                    let v = ArrayView2::from_shape((seen, dim), &values[..]).expect("whole positions");
                    let q = ArrayView2::from_shape((r.len(), dim), &q[(h * rows + r.start) * dim..][..r.len() * dim])
                        .expect("whole rows");
                    let out = ArrayViewMut2::from_shape((r.len(), dim), out).expect("whole rows");
                    attend(q, k, v, visible, &softmax, out)
                };
                match executor {
                    Executor::MultiThread(pool) if pieces.len() > 1 => pool.scope(|scope| {
                        for ((h, r), out) in pieces.into_iter().zip(outs) {
                            let piece = &piece;
                            scope.spawn(move |_| piece(h, r, out));
                        }
                    }),
                    _ => pieces.into_iter().zip(outs).for_each(|((h, r), out)| piece(h, r, out)),
                }
            }
        }
        Ok(out)
    }
}

/// Query rows of one KV head (prefill): two GEMMs around the softmax. `k` and `v` are
/// `[positions][dim]`; row `r` sees the first `visible[r]` positions.
fn attend(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    visible: &[usize],
    softmax: &Softmax,
    mut out: ArrayViewMut2<f32>,
) {
    let mut scores = q.dot(&k.t());
    for (mut row, &n) in scores.axis_iter_mut(Axis(0)).zip(visible) {
        softmax.apply(row.as_slice_mut().expect("fresh array is contiguous"), n);
    }
    general_mat_mul(1.0, &scores, &v, 0.0, &mut out);
}

/// Whether [`DecodePass`] can take [`crate::attention_x86`]'s kernels: x86 with AVX2, FMA and F16C
/// (tract's kernels dispatch the same way) and `dim` a multiple of 64. Checked once per op call.
fn simd_usable(dim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        dim.is_multiple_of(64)
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dim;
        false
    }
}

/// What every head of one decode call shares: the head size, each query row's visible positions,
/// the softmax, and whether [`crate::attention_x86`]'s kernels apply ([`simd_usable`]).
struct DecodePass<'a> {
    dim: usize,
    visible: &'a [usize],
    softmax: &'a Softmax,
    // Read only where the x86 kernels exist; elsewhere `simd_usable` is always false.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    simd: bool,
}

thread_local! {
    /// [`DecodePass::head`]'s `rows × total` probabilities, reused across heads and calls per thread.
    static PROBS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl DecodePass<'_> {
    /// Attention of one KV head for a few query rows: `q` and `out` are the head's `[rows][dim]`,
    /// row `r` sees the first `visible[r]` positions.
    fn head(&self, q: &[f32], keys: Head, values: Head, out: &mut [f32]) {
        let rows = q.len() / self.dim;
        let total = keys.len() / self.dim;
        PROBS.with_borrow_mut(|probs| {
            probs.clear();
            probs.resize(rows * total, 0.0);
            #[cfg(target_arch = "x86_64")]
            if self.simd {
                self.simd_head(q, keys, values, probs, out);
                return;
            }
            self.portable_head(q, keys, values, probs, out);
        })
    }

    /// Query rows and cached positions of one head's call: `q` is `[rows][dim]`, `probs`
    /// `[rows][total]`.
    fn shape(&self, q: &[f32], probs: &[f32]) -> (usize, usize) {
        let rows = q.len() / self.dim;
        (rows, probs.len() / rows.max(1))
    }

    /// [`Self::head`] with [`crate::attention_x86`]'s kernels.
    #[cfg(target_arch = "x86_64")]
    fn simd_head(&self, q: &[f32], keys: Head, values: Head, probs: &mut [f32], out: &mut [f32]) {
        use crate::attention_x86::{mix, scores};
        let (dim, (rows, total)) = (self.dim, self.shape(q, probs));
        // SAFETY (all four): `simd_usable` checked the CPU features and `dim`; the slices hold
        // `rows × dim`, `total × dim` and `rows × total` values.
        match keys {
            Head::F32(k) => unsafe { scores(q, k, rows, dim, probs) },
            Head::F16(k) => unsafe { scores(q, k, rows, dim, probs) },
            Head::Q8 { codes, scales } => {
                unsafe { scores(q, codes, rows, dim, probs) };
                // Each position's scale, applied to its scores rather than to every key value.
                scale_positions(probs, scales);
            }
        }
        softmax_rows(probs, total, self.visible, self.softmax);
        match values {
            Head::F32(v) => unsafe { mix(probs, v, rows, dim, out) },
            Head::F16(v) => unsafe { mix(probs, v, rows, dim, out) },
            Head::Q8 { codes, scales } => {
                // And to the probabilities that weight each value row.
                scale_positions(probs, scales);
                unsafe { mix(probs, codes, rows, dim, out) }
            }
        }
    }

    /// [`Self::head`] in portable code, one position at a time (f16 and int8 widened through a
    /// small buffer).
    fn portable_head(&self, q: &[f32], keys: Head, values: Head, probs: &mut [f32], out: &mut [f32]) {
        let (dim, visible, (rows, total)) = (self.dim, self.visible, self.shape(q, probs));
        let mut position = vec![0f32; dim];
        for j in 0..total {
            let key = keys.position(j, &mut position);
            for r in (0..rows).filter(|&r| j < visible[r]) {
                probs[r * total + j] = dot(&q[r * dim..(r + 1) * dim], key);
            }
        }
        softmax_rows(probs, total, visible, self.softmax);
        out.fill(0.0);
        for j in 0..total {
            let value = values.position(j, &mut position);
            for r in (0..rows).filter(|&r| j < visible[r]) {
                let p = probs[r * total + j];
                for (o, &x) in out[r * dim..(r + 1) * dim].iter_mut().zip(value) {
                    *o += p * x;
                }
            }
        }
    }
}

/// Multiplies column `j` of every `scales.len()`-long row of `m` by `scales[j]`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the x86 kernels' int8 path
fn scale_positions(m: &mut [f32], scales: &[f32]) {
    for row in m.chunks_exact_mut(scales.len().max(1)) {
        row.iter_mut().zip(scales).for_each(|(x, s)| *x *= s);
    }
}

/// Softmax of each `total`-long row of `scores` over its first `visible[r]` values.
fn softmax_rows(scores: &mut [f32], total: usize, visible: &[usize], softmax: &Softmax) {
    for (r, row) in scores.chunks_exact_mut(total.max(1)).enumerate() {
        softmax.apply(row, visible[r]);
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

    /// tract-linalg's kernels treat an unaligned head of the slice apart, so their sums depend on
    /// where the row sits in memory (measured: the same prompt's logits varied by 1e-5 from run to
    /// run, enough to flip int8 activation rounding in 4-bit models). They run on a copy at a
    /// fixed alignment instead.
    fn kernels(&self, live: &mut [f32]) -> TractResult<()> {
        const ALIGN: usize = 16; // floats: 64 bytes
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.resize(live.len() + ALIGN, 0.0);
            let start = scratch.as_ptr().align_offset(ALIGN * 4);
            let row = &mut scratch[start..start + live.len()];
            row.copy_from_slice(live);
            self.mul.run_with_params(row, self.scale)?;
            let max = self.max.run(row)?;
            let sum = self.exp_sum.run_with_params(row, max)?;
            self.mul.run_with_params(row, sum.recip())?;
            live.copy_from_slice(row);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use tract_linalg::multithread::multithread_tract_scope;

    use super::*;

    /// Plain f64 attention with the same layout and mask, as the reference.
    fn reference(q: &[f32], k: &[f32], v: &[f32], positions: &[i64], dim: usize, scale: f64) -> Vec<f32> {
        let (heads, seq) = (2, positions.len());
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
        let ctx = EvalContext::out_of_plan();
        // dim 8: the portable decode kernel; 64: the x86 one where the CPU has it. f16 caches
        // round keys and values to 11 significant bits, int8 ones to 1/254 of each position's
        // largest value (here up to 1: 0.004).
        for (dim, precision, tolerance) in [
            (8, KvPrecision::F32, 1e-5),
            (64, KvPrecision::F32, 1e-5),
            (8, KvPrecision::F16, 2e-3),
            (64, KvPrecision::F16, 2e-3),
            (8, KvPrecision::Q8, 1e-2),
            (64, KvPrecision::Q8, 1e-2),
        ] {
            let scale = 1.0 / (dim as f64).sqrt();
            let op = CachedAttention { scale_bits: (scale as f32).to_bits(), sequence_major: None };
            // (new tokens, cached tokens before them): decode (direct kernel) and prefill (GEMM).
            // (50, 30): 150 rows per head, on three threads three pieces, one crossing a query
            // head's end.
            let cases = [(1usize, 0usize), (1, 37), (3, 5), (12, 0), (12, 20), (1, 300), (50, 30)];
            for ((seq, past), threads) in cases.into_iter().flat_map(|c| [(c, 1), (c, 3)]) {
                let (heads, group, total) = (2, 3, past + seq);
                let k = random(&[1, heads, total, dim], 2).0;
                let v = random(&[1, heads, total, dim], 3).0;
                // The cache is filled by a first call with the `past` positions, then extended.
                let part = |data: &[f32], from: usize, to: usize| {
                    let mut out = Vec::new();
                    for h in 0..heads {
                        out.extend_from_slice(&data[(h * total + from) * dim..(h * total + to) * dim]);
                    }
                    Tensor::from_shape(&[1, heads, to - from, dim], &out).unwrap().into_tvalue()
                };
                let positions = |from: usize, to: usize| {
                    Tensor::from_shape(&[1, to - from], &(from as i64..to as i64).collect::<Vec<_>>())
                        .unwrap()
                        .into_tvalue()
                };
                let mut state = op.state(&ctx).unwrap().unwrap();
                assert!(state.downcast_mut::<LayerCache>().unwrap().set_precision(precision));
                if past > 0 {
                    let q_past = random(&[1, heads, group * past, dim], 4).1;
                    let inputs = tvec![q_past, part(&k, 0, past), part(&v, 0, past), positions(0, past)];
                    state.eval(&ctx, &op, inputs).unwrap();
                }
                let q = random(&[1, heads, group * seq, dim], 1);
                let inputs = tvec![q.1, part(&k, past, total), part(&v, past, total), positions(past, total)];
                let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
                let got = multithread_tract_scope(executor, || state.eval(&ctx, &op, inputs).unwrap().remove(0));
                let want = reference(&q.0, &k, &v, &(past as i64..total as i64).collect::<Vec<_>>(), dim, scale);
                let got = got.to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<f32>>();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() < tolerance,
                        "dim {dim} {precision:?} seq {seq} past {past} threads {threads} at {i}: {g} vs {w}"
                    );
                }
                let position = match precision {
                    KvPrecision::F32 => 4 * dim,
                    KvPrecision::F16 => 2 * dim,
                    KvPrecision::Q8 => dim + 4,
                };
                let cache = state.downcast_ref::<LayerCache>().unwrap();
                assert_eq!(cache.bytes(), 2 * total * heads * position, "keys and values of every position");
            }
        }
    }
}

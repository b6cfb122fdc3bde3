//! `QLinear`: `y_i = x · W_iᵀ` with 4- or 8-bit block weights ([`QWeight`]) and int8
//! activations, the tract op that ONNX `MatMulNBits` nodes become (see `nbits.rs`), one weight
//! each; `rewrite.rs` then gives one op the products that share an input.

use std::ops::Range;
use std::sync::Arc;

use tract_linalg::multithread::{current_tract_executor, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use crate::q4::Q4Matrix;
use crate::q8::Q8Matrix;
use crate::qblock::{Blocks, QuantizedRows};

/// A block-quantized weight.
#[derive(Debug, Clone, PartialEq)]
pub enum QWeight {
    /// 4-bit codes.
    Q4(Q4Matrix),
    /// 8-bit codes.
    Q8(Q8Matrix),
}

impl QWeight {
    /// Shape, scales and offsets.
    pub fn blocks(&self) -> &Blocks {
        match self {
            QWeight::Q4(m) => m.blocks(),
            QWeight::Q8(m) => m.blocks(),
        }
    }

    /// Output features.
    pub fn n(&self) -> usize {
        self.blocks().n()
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.blocks().k()
    }

    /// Bits per code.
    pub fn bits(&self) -> usize {
        match self {
            QWeight::Q4(_) => 4,
            QWeight::Q8(_) => 8,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            QWeight::Q4(m) => m.bytes(),
            QWeight::Q8(m) => m.bytes(),
        }
    }

    /// Row `j` as f32 into `out` (`k` values).
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        match self {
            QWeight::Q4(m) => m.dequantize_row(j, out),
            QWeight::Q8(m) => m.dequantize_row(j, out),
        }
    }

    fn matmul_rows(&self, x: &QuantizedRows, rows: std::ops::Range<usize>, y: &mut [f32], y_stride: usize) {
        match self {
            QWeight::Q4(m) => m.matmul_rows(x, rows, y, y_stride),
            QWeight::Q8(m) => m.matmul_rows(x, rows, y, y_stride),
        }
    }
}

/// Fewest weight rows per parallel task: a 576-row product still splits over eight threads, and a
/// task (one 576-wide row is ~0.3 µs) outweighs its dispatch.
const MIN_ROWS_PER_TASK: usize = 64;

/// Tasks per pool thread: rows cost the same, so one each balances, and every extra task costs a
/// dispatch (measured: four per thread made 2-thread decode ~10% slower).
const TASKS_PER_THREAD: usize = 1;

/// Activation rows from which a multithread plan quantizes them in parts on its pool.
const PARALLEL_QUANTIZE_ROWS: usize = 16;

/// `x [.., k] f32 → y_i [.., n_i] f32`, `y_i = x · W_iᵀ`: one output per weight, every weight
/// reading the same activations (a layer's q, k and v projections; in [`crate::swiglu::SwiGlu`]
/// its gate and up), which are quantized once, and the products of all weights share one
/// dispatch on the thread pool.
#[derive(Clone, Debug)]
pub struct QLinear {
    /// The weights (at least one, all with the same `k`), shared by every plan made from this op.
    pub weights: Vec<Arc<QWeight>>,
}

impl QLinear {
    /// One product.
    pub fn new(weight: Arc<QWeight>) -> Self {
        QLinear { weights: vec![weight] }
    }

    /// Input features.
    fn k(&self) -> usize {
        self.weights[0].k()
    }
}

/// Part of one pool task: a weight (index), rows of it, and where their products go.
type Piece<Out> = (usize, Range<usize>, Out);

/// Which rows of which weight one pool task computes: the weights' rows laid end to end and cut
/// into `per_task`-row pieces, a piece crossing a weight's end continuing in the next weight.
/// Each task is a list of `(weight, rows)` in order; together they cover every row once.
fn plan_tasks(ns: &[usize], per_task: usize) -> Vec<Vec<(usize, Range<usize>)>> {
    let mut tasks = vec![];
    let mut task: Vec<(usize, Range<usize>)> = vec![];
    let mut room = per_task;
    for (w, &n) in ns.iter().enumerate() {
        let mut start = 0;
        while start < n {
            let end = n.min(start + room);
            task.push((w, start..end));
            room -= end - start;
            start = end;
            if room == 0 {
                tasks.push(std::mem::take(&mut task));
                room = per_task;
            }
        }
    }
    if !task.is_empty() {
        tasks.push(task);
    }
    tasks
}

// Ops holding large weights compare by which weights they hold, never by their bytes.
impl PartialEq for QLinear {
    fn eq(&self, other: &Self) -> bool {
        self.weights.len() == other.weights.len()
            && self.weights.iter().zip(&other.weights).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for QLinear {}

impl std::hash::Hash for QLinear {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.weights.iter().for_each(|w| Arc::as_ptr(w).hash(state))
    }
}

impl Op for QLinear {
    fn name(&self) -> StaticName {
        "QLinear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(self.weights.iter().map(|w| format!("{}x{} {}-bit, {} bytes", w.n(), w.k(), w.bits(), w.bytes())).collect())
    }

    op_as_typed_op!();
}

impl EvalOp for QLinear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].to_plain_array_view::<f32>()?;
        let k = self.k();
        ensure!(x.shape().last() == Some(&k), "QLinear input {:?}: last axis must be {k}", x.shape());
        let x = x.as_standard_layout();
        let x = x.as_slice().context("contiguous input")?;
        let executor = current_tract_executor();
        let q = match &executor {
            // Prefill: the rows are quantized in parts on the pool (same values as in one go).
            Executor::MultiThread(pool) if x.len() / k >= PARALLEL_QUANTIZE_ROWS => {
                let per_task = (x.len() / k).div_ceil(pool.current_num_threads()) * k;
                let mut parts = vec![QuantizedRows::default(); x.len().div_ceil(per_task)];
                pool.scope(|scope| {
                    for (part, x) in parts.iter_mut().zip(x.chunks(per_task)) {
                        scope.spawn(move |_| *part = QuantizedRows::quantize(x, k));
                    }
                });
                QuantizedRows::concat(parts)
            }
            _ => QuantizedRows::quantize(x, k),
        };
        let rows = q.rows();
        let ns: Vec<usize> = self.weights.iter().map(|w| w.n()).collect();
        let mut outs = ns
            .iter()
            .map(|&n| {
                let mut shape: TVec<usize> = inputs[0].shape().into();
                *shape.last_mut().expect("rank >= 1") = n;
                Tensor::zero::<f32>(&shape)
            })
            .collect::<TractResult<Vec<Tensor>>>()?;
        let mut views = outs.iter_mut().map(|t| t.to_plain_array_view_mut::<f32>()).collect::<TractResult<Vec<_>>>()?;
        let mut ys: Vec<&mut [f32]> = views
            .iter_mut()
            .map(|v| v.as_slice_mut().context("fresh tensor is contiguous"))
            .collect::<TractResult<_>>()?;
        let weights = &self.weights;
        let total: usize = ns.iter().sum();
        match executor {
            Executor::MultiThread(pool) if total > MIN_ROWS_PER_TASK => {
                let per_task = MIN_ROWS_PER_TASK.max(total.div_ceil(TASKS_PER_THREAD * pool.current_num_threads()));
                let tasks = plan_tasks(&ns, per_task);
                let q = &q;
                if rows == 1 {
                    // One activation row: each piece writes its own slice of an output.
                    let mut rest: Vec<&mut [f32]> = ys;
                    let mut pieces: Vec<Vec<Piece<&mut [f32]>>> = vec![];
                    for task in tasks {
                        let mut mine = vec![];
                        for (w, range) in task {
                            let (slice, tail) = std::mem::take(&mut rest[w]).split_at_mut(range.len());
                            rest[w] = tail;
                            mine.push((w, range, slice));
                        }
                        pieces.push(mine);
                    }
                    pool.scope(|scope| {
                        for mine in pieces {
                            scope.spawn(move |_| {
                                for (w, range, y) in mine {
                                    let width = y.len();
                                    weights[w].matmul_rows(q, range, y, width)
                                }
                            });
                        }
                    });
                } else {
                    let mut parts: Vec<Vec<Piece<Vec<f32>>>> =
                        tasks.into_iter().map(|t| t.into_iter().map(|(w, r)| (w, r, vec![])).collect()).collect();
                    pool.scope(|scope| {
                        for task in parts.iter_mut() {
                            scope.spawn(move |_| {
                                for (w, range, part) in task.iter_mut() {
                                    let width = range.len();
                                    *part = vec![0f32; rows * width];
                                    weights[*w].matmul_rows(q, range.clone(), part, width);
                                }
                            });
                        }
                    });
                    for (w, range, part) in parts.iter().flatten() {
                        let (n, width) = (ns[*w], range.len());
                        for r in 0..rows {
                            ys[*w][r * n + range.start..][..width].copy_from_slice(&part[r * width..][..width]);
                        }
                    }
                }
            }
            _ => {
                for ((weight, y), &n) in weights.iter().zip(ys).zip(&ns) {
                    weight.matmul_rows(&q, 0..n, y, n);
                }
            }
        }
        drop(views);
        Ok(outs.into_iter().map(Tensor::into_tvalue).collect())
    }
}

impl TypedOp for QLinear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(), "QLinear takes one f32 input");
        ensure!(self.weights.iter().all(|w| w.k() == self.k()), "QLinear weights disagree on k");
        let shape = inputs[0].shape.to_tvec();
        ensure!(shape.last() == Some(&self.k().to_dim()), "QLinear input {:?}", inputs[0].shape);
        Ok(self
            .weights
            .iter()
            .map(|w| {
                let mut shape = shape.clone();
                *shape.last_mut().expect("rank checked") = w.n().to_dim();
                f32::fact(shape)
            })
            .collect())
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let macs: usize = self.weights.iter().map(|w| w.n() * w.k()).sum();
        Ok(tvec!((Cost::FMA(i8::datum_type()), macs.to_dim())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use tract_linalg::multithread::multithread_tract_scope;

    use super::*;
    use crate::q4::Q4Matrix;
    use crate::q8::Q8Matrix;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn weight(n: usize, k: usize, bits: usize, seed: &mut u64) -> Arc<QWeight> {
        let scales: Vec<f32> = (0..n * k / 32).map(|_| (lcg(seed) % 1000) as f32 * 1e-4).collect();
        let blocks = Blocks::new(n, k, scales, None).unwrap();
        Arc::new(if bits == 4 {
            let codes: Vec<u8> = (0..n * k).map(|_| (lcg(seed) % 16) as u8).collect();
            QWeight::Q4(Q4Matrix::new(&codes, blocks).unwrap())
        } else {
            let codes: Vec<i8> = (0..n * k).map(|_| lcg(seed) as u8 as i8).collect();
            QWeight::Q8(Q8Matrix::new(codes, blocks).unwrap())
        })
    }

    #[test]
    fn tasks_cover_every_row_once_in_order_across_weights() {
        for (ns, per_task) in [(vec![576, 192, 192], 480), (vec![100], 64), (vec![64, 64], 64), (vec![10, 3, 200], 7)] {
            let tasks = plan_tasks(&ns, per_task);
            let flat: Vec<(usize, Range<usize>)> = tasks.iter().flatten().cloned().collect();
            let mut next = vec![0; ns.len()];
            let mut last = 0;
            for (w, range) in &flat {
                assert!(*w >= last && range.start == next[*w] && range.end > range.start, "{ns:?} {flat:?}");
                next[*w] = range.end;
                last = *w;
            }
            assert_eq!(next, ns);
            let sizes: Vec<usize> = tasks.iter().map(|t| t.iter().map(|(_, r)| r.len()).sum()).collect();
            assert!(sizes[..sizes.len() - 1].iter().all(|&s| s == per_task), "{sizes:?}");
            assert!(sizes.iter().sum::<usize>() == ns.iter().sum::<usize>());
        }
    }

    #[test]
    fn several_weights_give_what_each_gives_alone_on_one_thread_or_many() {
        let mut seed = 3;
        let k = 96;
        let weights = vec![weight(200, k, 4, &mut seed), weight(70, k, 8, &mut seed), weight(70, k, 4, &mut seed)];
        let fused = QLinear { weights: weights.clone() };
        for rows in [1, 5, 20] {
            let x: Vec<f32> = (0..rows * k).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
            let x = Tensor::from_shape(&[1, rows, k], &x).unwrap().into_tvalue();
            let eval = |op: &QLinear| op.eval(&EvalContext::out_of_plan(), tvec![x.clone()]).unwrap();
            let alone: Vec<TValue> = weights.iter().map(|w| eval(&QLinear::new(w.clone())).remove(0)).collect();
            for executor in [Executor::SingleThread, Executor::multithread(3)] {
                let together = multithread_tract_scope(executor, || eval(&fused));
                assert_eq!(together.len(), 3);
                for (got, want) in together.iter().zip(&alone) {
                    assert_eq!(got.shape(), want.shape());
                    assert_eq!(
                        got.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
                        want.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
                        "rows {rows}"
                    );
                }
            }
        }
    }
}

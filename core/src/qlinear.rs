//! `QLinear`: `y = x · Wᵀ` with a 4- or 8-bit block weight ([`QWeight`]) and int8 activations,
//! the tract op that ONNX `MatMulNBits` nodes become (see `nbits.rs`).

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

/// `x [.., k] f32 → y [.., n] f32`, `y = x · Wᵀ`.
#[derive(Clone, Debug)]
pub struct QLinear {
    /// The weight, shared by every plan made from this op.
    pub weight: Arc<QWeight>,
}

/// Implements `PartialEq`, `Eq` and `Hash` for an op by the identity of one of its `Arc` fields:
/// ops holding large weights compare by which weight they hold, never by its bytes.
macro_rules! identity_by_arc {
    ($op:ty, $field:ident) => {
        impl PartialEq for $op {
            fn eq(&self, other: &Self) -> bool {
                std::sync::Arc::ptr_eq(&self.$field, &other.$field)
            }
        }

        impl Eq for $op {}

        impl std::hash::Hash for $op {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                std::sync::Arc::as_ptr(&self.$field).hash(state)
            }
        }
    };
}
pub(crate) use identity_by_arc;

identity_by_arc!(QLinear, weight);

impl Op for QLinear {
    fn name(&self) -> StaticName {
        "QLinear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let w = &self.weight;
        Ok(vec![format!("{}x{} {}-bit, {} bytes", w.n(), w.k(), w.bits(), w.bytes())])
    }

    op_as_typed_op!();
}

impl EvalOp for QLinear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].to_plain_array_view::<f32>()?;
        let (n, k) = (self.weight.n(), self.weight.k());
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
        let mut shape: TVec<usize> = inputs[0].shape().into();
        *shape.last_mut().expect("rank >= 1") = n;
        let mut out = Tensor::zero::<f32>(&shape)?;
        let mut view = out.to_plain_array_view_mut::<f32>()?;
        let y = view.as_slice_mut().context("fresh tensor is contiguous")?;
        let weight = &*self.weight;
        match executor {
            Executor::MultiThread(pool) if n > MIN_ROWS_PER_TASK => {
                let per_task = MIN_ROWS_PER_TASK.max(n.div_ceil(TASKS_PER_THREAD * pool.current_num_threads()));
                let q = &q;
                if rows == 1 {
                    // One activation row: each task writes its own slice of the output.
                    pool.scope(|scope| {
                        for (t, part) in y.chunks_mut(per_task).enumerate() {
                            scope.spawn(move |_| {
                                let width = part.len();
                                weight.matmul_rows(q, t * per_task..t * per_task + width, part, width)
                            });
                        }
                    });
                } else {
                    let mut parts: Vec<Vec<f32>> = vec![Vec::new(); n.div_ceil(per_task)];
                    pool.scope(|scope| {
                        for (t, part) in parts.iter_mut().enumerate() {
                            scope.spawn(move |_| {
                                let range = t * per_task..((t + 1) * per_task).min(n);
                                let width = range.len();
                                *part = vec![0f32; rows * width];
                                weight.matmul_rows(q, range, part, width);
                            });
                        }
                    });
                    for (t, part) in parts.iter().enumerate() {
                        let width = part.len() / rows;
                        for r in 0..rows {
                            y[r * n + t * per_task..][..width].copy_from_slice(&part[r * width..][..width]);
                        }
                    }
                }
            }
            _ => weight.matmul_rows(&q, 0..n, y, n),
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QLinear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(), "QLinear takes one f32 input");
        let mut shape = inputs[0].shape.to_tvec();
        ensure!(shape.last() == Some(&self.weight.k().to_dim()), "QLinear input {:?}", inputs[0].shape);
        *shape.last_mut().expect("rank checked") = self.weight.n().to_dim();
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((Cost::FMA(i8::datum_type()), (self.weight.n() * self.weight.k()).to_dim())))
    }

    as_op!();
}

//! Token lookup in the tied LM head, so the table is held once (the ONNX graph holds it twice: a
//! constant for its lookup and the LM head's `MatMulNBits` weight): `GatherCodes` gives the uint8
//! rows an 8-bit table's `Gather` would, `Embed` dequantized rows straight from the head's codes
//! (an 8-bit head's, or a 4-bit one's as a `GatherBlockQuantized` gives them).

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use crate::q8::Q8Matrix;
use crate::qlinear::QWeight;

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

/// `out[.., :] = W[id, :]` for token ids `[..]` (i64), `W` an `[n, k]` block-quantized matrix.
/// Named `EmbedQ8` or `EmbedQ4` after its table's width.
#[derive(Clone, Debug)]
pub struct Embed {
    /// The table, shared with the LM head's `QLinear`.
    pub table: Arc<QWeight>,
}

/// `[.., k]` rows of `T` for the token ids `ids` (`[..]`) in an `[n, k]` table, row `id`
/// written by `row`.
fn look_up<T: Datum>((n, k): (usize, usize), ids: &TValue, row: impl Fn(usize, &mut [T])) -> TractResult<TVec<TValue>> {
    let mut shape: TVec<usize> = ids.shape().into();
    shape.push(k);
    let ids = ids.cast_to::<i64>()?;
    let ids = ids.try_as_plain_ram()?;
    let ids: &[i64] = ids.as_slice()?;
    let mut out = Tensor::zero_dt(T::datum_type(), &shape)?;
    let mut view = out.to_plain_array_view_mut::<T>()?;
    let rows = view.as_slice_mut().context("fresh tensor is contiguous")?;
    for (&id, out) in ids.iter().zip(rows.chunks_exact_mut(k)) {
        ensure!((0..n as i64).contains(&id), "token id {id} outside the table ({n} rows)");
        row(id as usize, out);
    }
    Ok(tvec!(out.into_tvalue()))
}

/// The 8-bit matrix of a token table.
fn matrix(table: &QWeight) -> TractResult<&Q8Matrix> {
    match table {
        QWeight::Q8(m) => Ok(m),
        QWeight::Q4(_) => bail!("this token table must be 8-bit"),
    }
}

identity_by_arc!(Embed, table);

impl Op for Embed {
    fn name(&self) -> StaticName {
        format!("EmbedQ{}", self.table.bits()).into()
    }

    op_as_typed_op!();
}

impl EvalOp for Embed {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let table = &*self.table;
        look_up((table.n(), table.k()), &inputs[0], |j, out| table.dequantize_row(j, out))
    }
}

impl TypedOp for Embed {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        shape.push(self.table.k().to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// `out[.., :] = W[id, :] + 128` as uint8 for token ids `[..]` (i64), `W` an `[n, k]` 8-bit
/// matrix: the rows of the ONNX uint8 table that is `W`.
#[derive(Clone, Debug)]
pub struct GatherCodes {
    /// The table, shared with the LM head's `QLinear`.
    pub table: Arc<QWeight>,
}

identity_by_arc!(GatherCodes, table);

impl Op for GatherCodes {
    fn name(&self) -> StaticName {
        "GatherCodes".into()
    }

    op_as_typed_op!();
}

impl EvalOp for GatherCodes {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let m = matrix(&self.table)?;
        look_up((m.blocks().n(), m.blocks().k()), &inputs[0], |j, out| m.unsigned_row(j, out))
    }
}

impl TypedOp for GatherCodes {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        shape.push(self.table.k().to_dim());
        Ok(tvec!(u8::fact(shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q4::Q4Matrix;
    use crate::qblock::{Blocks, BLOCK};

    fn table() -> Arc<QWeight> {
        let (n, k) = (5, 2 * BLOCK);
        let codes: Vec<i8> = (0..n * k).map(|i| ((i * 37) % 255) as i8).collect();
        let scales: Vec<f32> = (0..n * 2).map(|i| 0.5 + i as f32).collect();
        Arc::new(QWeight::Q8(Q8Matrix::new(codes, Blocks::new(n, k, scales, None).unwrap()).unwrap()))
    }

    #[test]
    fn looks_up_dequantized_rows_and_rejects_unknown_ids() {
        let op = Embed { table: table() };
        let ids = Tensor::from_shape(&[1, 3], &[4i64, 0, 4]).unwrap();
        let out = op.eval(&EvalContext::out_of_plan(), tvec![ids.into_tvalue()]).unwrap();
        let out = out[0].to_plain_array_view::<f32>().unwrap();
        assert_eq!(out.shape(), &[1, 3, 2 * BLOCK]);
        let QWeight::Q8(m) = &*op.table else { unreachable!() };
        let mut row = vec![0f32; 2 * BLOCK];
        m.dequantize_row(4, &mut row);
        // Row 4, element 33: code (4 * 64 + 33) * 37 % 255 as i8, block 1 scale 0.5 + 9.
        let code = (((4 * 64 + 33) * 37) % 255) as u8 as i8;
        assert_eq!(row[33], code as f32 * 9.5);
        for (t, id) in [(0, 4), (1, 0), (2, 4)] {
            m.dequantize_row(id, &mut row);
            assert_eq!(out.slice(ndarray::s![0, t, ..]).to_vec(), row);
        }
        let bad = Tensor::from_shape(&[1, 1], &[5i64]).unwrap();
        assert!(op.eval(&EvalContext::out_of_plan(), tvec![bad.into_tvalue()]).is_err());
    }

    #[test]
    fn gathered_codes_are_the_unsigned_table_rows() {
        let op = GatherCodes { table: table() };
        let ids = Tensor::from_shape(&[3], &[2i64, 0, 2]).unwrap();
        let out = op.eval(&EvalContext::out_of_plan(), tvec![ids.into_tvalue()]).unwrap();
        let out = out[0].to_plain_array_view::<u8>().unwrap();
        assert_eq!(out.shape(), &[3, 2 * BLOCK]);
        for (t, id) in [(0, 2), (1, 0), (2, 2)] {
            for i in 0..2 * BLOCK {
                let code = (((id * 64 + i) * 37) % 255) as u8 as i8;
                assert_eq!(out[[t, i]], (code as i16 + 128) as u8);
            }
        }
        let bad = Tensor::from_shape(&[1], &[-1i64]).unwrap();
        assert!(op.eval(&EvalContext::out_of_plan(), tvec![bad.into_tvalue()]).is_err());
    }

    #[test]
    fn a_u8_table_matches_only_its_own_codes_and_scales() {
        let t = table();
        let QWeight::Q8(m) = &*t else { unreachable!() };
        let n = m.blocks().n();
        let mut bytes = vec![0u8; n * 2 * BLOCK];
        let mut row = vec![0f32; 2 * BLOCK];
        let scales: Vec<f32> = (0..n * 2).map(|i| 0.5 + i as f32).collect();
        for j in 0..n {
            m.dequantize_row(j, &mut row);
            for (i, v) in row.iter().enumerate() {
                bytes[j * 2 * BLOCK + i] = ((v / scales[j * 2 + i / BLOCK]).round() as i16 + 128) as u8;
            }
        }
        assert!(m.equals_u8_table(&bytes, &scales));
        bytes[7] ^= 1;
        assert!(!m.equals_u8_table(&bytes, &scales));
        bytes[7] ^= 1;
        let mut other = scales.clone();
        other[3] += 1.0;
        assert!(!m.equals_u8_table(&bytes, &other));
    }

    #[test]
    fn looks_up_4_bit_rows_as_gather_block_quantized_would() {
        let (n, k) = (3, 2 * BLOCK);
        let codes: Vec<u8> = (0..n * k).map(|i| ((i * 7) % 16) as u8).collect();
        let scales: Vec<f32> = (0..n * 2).map(|i| 0.25 * (i + 1) as f32).collect();
        let m = Q4Matrix::new(&codes, Blocks::new(n, k, scales.clone(), None).unwrap()).unwrap();
        let op = Embed { table: Arc::new(QWeight::Q4(m)) };
        let ids = Tensor::from_shape(&[1, 2], &[2i64, 0]).unwrap();
        let out = op.eval(&EvalContext::out_of_plan(), tvec![ids.into_tvalue()]).unwrap();
        let out = out[0].to_plain_array_view::<f32>().unwrap();
        assert_eq!(out.shape(), &[1, 2, k]);
        for (t, id) in [(0, 2), (1, 0)] {
            for i in 0..k {
                let want = (codes[id * k + i] as f32 - 8.0) * scales[id * 2 + i / BLOCK];
                assert_eq!(out[[0, t, i]], want, "row {id} element {i}");
            }
        }
        let bad = Tensor::from_shape(&[1], &[3i64]).unwrap();
        assert!(op.eval(&EvalContext::out_of_plan(), tvec![bad.into_tvalue()]).is_err());
        assert!(GatherCodes { table: op.table.clone() }
            .eval(&EvalContext::out_of_plan(), tvec![tensor1(&[0i64]).into_tvalue()])
            .is_err());
    }
}

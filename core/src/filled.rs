//! Op outputs written in place: an op's result goes straight into the tensor it returns, not
//! into a vector copied into one.

use tract_onnx::prelude::*;

/// An f32 tensor of `shape` written by `fill` in place (zeroed first).
pub(crate) fn filled(shape: &[usize], fill: impl FnOnce(&mut [f32])) -> TractResult<Tensor> {
    let mut tensor = Tensor::zero::<f32>(shape)?;
    fill(tensor.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
    Ok(tensor)
}

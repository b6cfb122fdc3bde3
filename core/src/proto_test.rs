//! ONNX protos for unit tests: nodes and initializers written by hand.

use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::{AttributeProto, NodeProto, StringStringEntryProto, TensorProto};
use tract_onnx::prelude::*;

/// A node named after its one output, with integer attributes.
pub fn node(op: &str, inputs: &[&str], output: &str, ints: &[(&str, i64)]) -> NodeProto {
    NodeProto {
        name: output.into(),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: ints
            .iter()
            .map(|&(n, i)| AttributeProto {
                name: n.into(),
                r#type: AttributeType::Int as i32,
                i,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A `MatMulNBits` node of `[8, 64]` at `bits`, blocks of 32.
pub fn nbits_node(inputs: &[&str], output: &str, bits: i64) -> NodeProto {
    node("MatMulNBits", inputs, output, &[("K", 64), ("N", 8), ("bits", bits), ("block_size", 32)])
}

/// An initializer holding `values` inline (u8 or f32).
pub fn inline<T: Datum + Copy>(name: &str, dims: &[usize], values: &[T]) -> TensorProto {
    let dt = if T::datum_type() == u8::datum_type() { DataType::Uint8 } else { DataType::Float };
    // SAFETY: u8 and f32 values are plain bytes.
    let raw = unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u8, std::mem::size_of_val(values)) };
    TensorProto {
        name: name.into(),
        data_type: dt as i32,
        dims: dims.iter().map(|&d| d as i64).collect(),
        raw_data: raw.to_vec(),
        ..Default::default()
    }
}

/// An int64 initializer holding `values` inline.
pub fn int64(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type: DataType::Int64 as i32,
        dims: vec![values.len() as i64],
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An initializer whose data is `length` bytes at `offset` of the file `location`.
pub fn external(name: &str, dt: DataType, dims: &[i64], location: &str, offset: usize, length: usize) -> TensorProto {
    let entry = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
    TensorProto {
        name: name.into(),
        data_type: dt as i32,
        dims: dims.to_vec(),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![
            entry("location", location.into()),
            entry("offset", offset.to_string()),
            entry("length", length.to_string()),
        ],
        ..Default::default()
    }
}

//! Tensors of an ONNX file, read once: the external-data reader tract's parser uses, and
//! [`load_tensor`], which reads an initializer straight into its tensor's memory.
//!
//! tract's own reader maps the whole data file again for each tensor (≈700 times for the default
//! model, each mapping faulted in and torn down), copies the range into a buffer, and the
//! tensor is then made from a second copy of that buffer. [`Reader`] reads the range with one
//! `read` call; [`load_tensor`] skips the buffer too (used for the quantized weights, most of
//! the file: see `weights::detach_weights`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::TensorProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{ensure, format_err, TractErrorContext};

/// Reads external-data ranges with plain file reads (see the module doc).
#[derive(Debug, Default)]
pub struct Reader;

impl ModelDataResolver for Reader {
    fn read_bytes_from_path(
        &self,
        buf: &mut Vec<u8>,
        p: &Path,
        offset: usize,
        length: Option<usize>,
    ) -> TractResult<()> {
        let mut file = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let size = file.metadata()?.len() as usize;
        let length = length.unwrap_or(size.saturating_sub(offset));
        check_range(p, offset, length, size)?;
        file.seek(SeekFrom::Start(offset as u64))?;
        buf.reserve(length);
        let read = file.take(length as u64).read_to_end(buf)?;
        ensure!(read == length, "{}: read {read} of {length} bytes at offset {offset}", p.display());
        Ok(())
    }
}

/// Where a tensor's external data is: a file of the model directory and a byte range of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The file, relative to the model directory.
    pub location: String,
    /// First byte.
    pub offset: usize,
    /// Bytes, when given (else to the end of the file).
    pub length: Option<usize>,
}

impl Range {
    /// `proto`'s external-data range; `None` if its data is inline.
    pub fn of(proto: &TensorProto) -> TractResult<Option<Range>> {
        let external = proto.data_location == Some(DataLocation::External as i32) && proto.raw_data.is_empty();
        if !external {
            return Ok(None);
        }
        let entry = |key: &str| proto.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str());
        let location =
            entry("location").with_context(|| format!("tensor {}: no external data location", proto.name))?;
        let number = |key: &str| -> TractResult<Option<usize>> {
            entry(key).map(|v| v.parse().with_context(|| format!("tensor {}: bad {key} {v:?}", proto.name))).transpose()
        };
        Ok(Some(Range { location: location.into(), offset: number("offset")?.unwrap_or(0), length: number("length")? }))
    }
}

/// The tensor `proto` describes: its external data (in a file of `model_dir`) read directly into
/// the tensor's own memory; inline data as tract reads it.
pub fn load_tensor(proto: &TensorProto, model_dir: Option<&str>) -> TractResult<Tensor> {
    let Some(Range { location, offset, length }) = Range::of(proto)? else {
        return tract_onnx::tensor::load_tensor(&Reader, proto, model_dir);
    };
    let dir = model_dir.context("external data needs the model's directory")?;
    let dt: DatumType = DataType::try_from(proto.data_type)
        .map_err(|_| format_err!("tensor {}: unknown data type {}", proto.name, proto.data_type))?
        .try_into()?;
    ensure!(dt.is_number(), "tensor {}: {dt:?} cannot be read from external data", proto.name);
    let shape = proto
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format_err!("tensor {}: negative dimension {d}", proto.name)))
        .collect::<TractResult<Vec<usize>>>()?;
    // The size the shape implies is checked against the file before anything is allocated: a
    // damaged shape must be an error, not an allocation the process cannot survive.
    let expected = shape
        .iter()
        .try_fold(dt.size_of(), |bytes, &d| bytes.checked_mul(d))
        .with_context(|| format!("tensor {}: shape {shape:?} overflows", proto.name))?;
    let length = length.unwrap_or(expected);
    ensure!(
        length == expected,
        "tensor {}: {length} bytes of external data for {expected} of {dt:?} {shape:?}",
        proto.name
    );
    let path = resolve(Path::new(dir), &location)?;
    let mut file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    check_range(&path, offset, length, file.metadata()?.len() as usize)?;
    let mut tensor = unsafe { Tensor::uninitialized_dt(dt, &shape)? };
    let bytes = tensor.as_bytes_mut();
    file.seek(SeekFrom::Start(offset as u64))?;
    file.read_exact(bytes).with_context(|| format!("reading {length} bytes of {}", path.display()))?;
    Ok(tensor)
}

/// `location` inside `model_dir`: a relative path that stays in the directory (as tract requires).
fn resolve(model_dir: &Path, location: &str) -> TractResult<PathBuf> {
    let relative = Path::new(location);
    ensure!(
        relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
        "external data location must be a relative path inside the model directory, got {location:?}"
    );
    let dir = if model_dir.as_os_str().is_empty() { Path::new(".") } else { model_dir };
    let dir = dir.canonicalize().with_context(|| format!("model directory {}", dir.display()))?;
    let path = dir.join(relative).canonicalize().with_context(|| format!("external data {location:?}"))?;
    ensure!(path.starts_with(&dir), "external data {location:?} resolves outside the model directory");
    Ok(path)
}

fn check_range(path: &Path, offset: usize, length: usize, size: usize) -> TractResult<()> {
    let end = offset.checked_add(length).context("external data offset + length overflows")?;
    ensure!(end <= size, "external data {offset}..{end} is past the end of {} ({size} bytes)", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto_test::external;

    /// A temp dir (removed on drop) holding `bytes` as `w.data`, and its path as text.
    fn data_dir(bytes: &[u8]) -> (tempfile::TempDir, String) {
        let dir = tempfile::Builder::new().prefix("pocketlm-external-").tempdir().unwrap();
        std::fs::write(dir.path().join("w.data"), bytes).unwrap();
        let text = dir.path().to_str().unwrap().to_owned();
        (dir, text)
    }

    #[test]
    fn reads_a_range_into_the_tensor_and_matches_tracts_reader() {
        let bytes: Vec<u8> = (0..64u8).collect();
        let (_dir, text) = data_dir(&bytes);
        let proto = external("w", DataType::Float, &[2, 3], "w.data", 8, 24);
        let ours = load_tensor(&proto, Some(&text)).unwrap();
        let floats: Vec<f32> = bytes[8..32].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(ours, Tensor::from_shape(&[2, 3], &floats).unwrap());
        let theirs = tract_onnx::tensor::load_tensor(&Reader, &proto, Some(&text)).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn bad_ranges_lengths_and_locations_are_errors() {
        let (temp, text) = data_dir(&[7u8; 16]);
        let dir = temp.path();
        let cases = [
            (external("past_end", DataType::Uint8, &[8], "w.data", 12, 8), "past the end"),
            (external("wrong_length", DataType::Uint8, &[8], "w.data", 0, 4), "bytes of external data"),
            (external("escape", DataType::Uint8, &[8], "../w.data", 0, 8), "relative path"),
            (external("absolute", DataType::Uint8, &[8], "/etc/passwd", 0, 8), "relative path"),
            (external("missing", DataType::Uint8, &[8], "nope.data", 0, 8), "nope.data"),
            (external("negative", DataType::Uint8, &[-8], "w.data", 0, 8), "negative dimension"),
            (external("huge", DataType::Float, &[1 << 40, 1 << 30], "w.data", 0, 8), "overflows"),
            (external("large", DataType::Float, &[1 << 40], "w.data", 0, 1 << 42), "past the end"),
        ];
        for (proto, want) in cases {
            let err = format!("{:#}", load_tensor(&proto, Some(&text)).unwrap_err());
            assert!(err.contains(want), "{}: {err}", proto.name);
        }
        let mut buf = vec![];
        let err = Reader.read_bytes_from_path(&mut buf, &dir.join("w.data"), 10, Some(8)).unwrap_err();
        assert!(format!("{err:#}").contains("past the end"), "{err:#}");
        Reader.read_bytes_from_path(&mut buf, &dir.join("w.data"), 10, Some(6)).unwrap();
        assert_eq!(buf, [7u8; 6]);
    }
}

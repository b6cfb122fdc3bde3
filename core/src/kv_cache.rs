//! One layer's KV cache for one session: keys and values head-major (`[kv_head][position][dim]`,
//! so each head's positions are contiguous for the attention kernels to stream), held as f32 or
//! f16 or int8 ([`KvPrecision`]), with room reserved for whole blocks of positions.

use std::borrow::Cow;

use tract_onnx::prelude::f16;
#[cfg(not(target_arch = "aarch64"))]
use tract_onnx::prelude::tract_data::half::slice::HalfFloatSliceExt;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::ensure;

/// Positions a layer cache grows by when full.
const GROWTH_POSITIONS: usize = 256;

/// The element type a session's KV cache is held in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvPrecision {
    /// Half precision (llama.cpp's default): half the memory and half the bytes attention reads
    /// per token; keys and values are rounded to 11 significant bits when stored.
    #[default]
    F16,
    /// Single precision: exactly the ONNX graph's arithmetic.
    F32,
    /// 8-bit: each position's `dim` values of a head as int8 with one f32 scale (`max |x| / 127`),
    /// a quarter of f32's memory plus 4 bytes per position and head (0.53× f16 at dim 64); a
    /// value is off by at most half a step of its position's scale.
    Q8,
}

/// One head's keys or values, `[positions][dim]` contiguous.
#[derive(Clone, Copy)]
pub(crate) enum Head<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// Position `j`'s values are `codes[j * dim..][..dim] * scales[j]`.
    Q8 {
        codes: &'a [i8],
        scales: &'a [f32],
    },
}

impl<'a> Head<'a> {
    /// Values held (positions × dim).
    pub(crate) fn len(self) -> usize {
        match self {
            Head::F32(v) => v.len(),
            Head::F16(v) => v.len(),
            Head::Q8 { codes, .. } => codes.len(),
        }
    }

    /// The first `n` positions of `dim` values.
    pub(crate) fn first(self, n: usize, dim: usize) -> Head<'a> {
        match self {
            Head::F32(v) => Head::F32(&v[..n * dim]),
            Head::F16(v) => Head::F16(&v[..n * dim]),
            Head::Q8 { codes, scales } => Head::Q8 { codes: &codes[..n * dim], scales: &scales[..n] },
        }
    }

    /// All values as f32 (borrowed when held as f32).
    pub(crate) fn to_f32(self) -> Cow<'a, [f32]> {
        match self {
            Head::F32(v) => Cow::Borrowed(v),
            Head::F16(v) => {
                let mut out = vec![0f32; v.len()];
                widen(v, &mut out);
                Cow::Owned(out)
            }
            Head::Q8 { codes, scales } => {
                let mut out = vec![0f32; codes.len()];
                let dim = codes.len() / scales.len().max(1);
                for ((out, codes), &scale) in out.chunks_exact_mut(dim).zip(codes.chunks_exact(dim)).zip(scales) {
                    dequantize(codes, scale, out);
                }
                Cow::Owned(out)
            }
        }
    }

    /// Position `j` (`out.len()` values) as f32: borrowed, or widened into `out`.
    pub(crate) fn position<'b>(self, j: usize, out: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        let dim = out.len();
        match self {
            Head::F32(v) => &v[j * dim..][..dim],
            Head::F16(v) => {
                widen(&v[j * dim..][..dim], out);
                out
            }
            Head::Q8 { codes, scales } => {
                dequantize(&codes[j * dim..][..dim], scales[j], out);
                out
            }
        }
    }
}

/// One position's int8 codes times its scale, into `out`.
fn dequantize(codes: &[i8], scale: f32, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = c as f32 * scale;
    }
}

/// `src` as f32 into `dst`: NEON `fcvtl` on aarch64 (`half` would convert in software on cores
/// without FP16 arithmetic), `half`'s conversion (F16C on x86) elsewhere.
fn widen(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "aarch64")]
    crate::simd_neon::widen(src, dst);
    #[cfg(not(target_arch = "aarch64"))]
    src.convert_to_f32_slice(dst);
}

/// `src` rounded to f16 into `dst`, as [`widen`] chooses.
fn narrow(src: &[f32], dst: &mut [f16]) {
    #[cfg(target_arch = "aarch64")]
    crate::simd_neon::narrow(src, dst);
    #[cfg(not(target_arch = "aarch64"))]
    dst.convert_from_f32_slice(src);
}

/// Keys or values of all heads.
#[derive(Clone, Debug)]
enum Buffer {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// Codes, and one scale per position of each head.
    Q8(Vec<i8>, Vec<f32>),
}

impl Buffer {
    fn new(precision: KvPrecision) -> Self {
        match precision {
            KvPrecision::F32 => Buffer::F32(Vec::new()),
            KvPrecision::F16 => Buffer::F16(Vec::new()),
            KvPrecision::Q8 => Buffer::Q8(Vec::new(), Vec::new()),
        }
    }

    /// Bytes one position of one head takes.
    fn position_bytes(&self, dim: usize) -> usize {
        match self {
            Buffer::F32(_) => 4 * dim,
            Buffer::F16(_) => 2 * dim,
            Buffer::Q8(..) => dim + 4,
        }
    }

    /// Re-lays `heads` heads of `len` positions × `dim` from `old` positions per head to `new`.
    fn relayout(&mut self, heads: usize, dim: usize, len: usize, old: usize, new: usize) {
        fn move_heads<T: Copy + Default>(v: &mut Vec<T>, heads: usize, dim: usize, len: usize, old: usize, new: usize) {
            let mut out = vec![T::default(); heads * new * dim];
            for h in 0..heads {
                out[h * new * dim..][..len * dim].copy_from_slice(&v[h * old * dim..][..len * dim]);
            }
            *v = out;
        }
        match self {
            Buffer::F32(v) => move_heads(v, heads, dim, len, old, new),
            Buffer::F16(v) => move_heads(v, heads, dim, len, old, new),
            Buffer::Q8(codes, scales) => {
                move_heads(codes, heads, dim, len, old, new);
                move_heads(scales, heads, 1, len, old, new);
            }
        }
    }

    /// Stores one position's `values` (`dim` of them) at value index `start` (rounded to f16 or
    /// to int8 when held so).
    fn write(&mut self, start: usize, values: &[f32]) {
        match self {
            Buffer::F32(v) => v[start..][..values.len()].copy_from_slice(values),
            Buffer::F16(v) => narrow(values, &mut v[start..][..values.len()]),
            Buffer::Q8(codes, scales) => {
                let amax = values.iter().fold(0f32, |m, x| m.max(x.abs()));
                let scale = amax / 127.0;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                for (c, x) in codes[start..][..values.len()].iter_mut().zip(values) {
                    *c = (x * inv).round().clamp(-127.0, 127.0) as i8;
                }
                scales[start / values.len()] = scale;
            }
        }
    }

    /// `len` values (whole positions of `dim`) at `start`.
    fn part(&self, start: usize, len: usize, dim: usize) -> Head<'_> {
        match self {
            Buffer::F32(v) => Head::F32(&v[start..][..len]),
            Buffer::F16(v) => Head::F16(&v[start..][..len]),
            Buffer::Q8(codes, scales) => {
                Head::Q8 { codes: &codes[start..][..len], scales: &scales[start / dim..][..len / dim] }
            }
        }
    }
}

/// One layer's keys and values for one session (see the module docs).
#[derive(Clone, Debug)]
pub struct LayerKv {
    heads: usize,
    dim: usize,
    len: usize,
    capacity: usize,
    keys: Buffer,
    values: Buffer,
}

impl LayerKv {
    /// An empty cache held at `precision`.
    pub fn new(precision: KvPrecision) -> Self {
        LayerKv { heads: 0, dim: 0, len: 0, capacity: 0, keys: Buffer::new(precision), values: Buffer::new(precision) }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes of the keys and values held.
    pub fn bytes(&self) -> usize {
        2 * self.len * self.heads * self.keys.position_bytes(self.dim)
    }

    /// Holds keys and values at `precision` from now on; only an empty cache changes (false
    /// otherwise).
    pub fn set_precision(&mut self, precision: KvPrecision) -> bool {
        if self.len > 0 {
            return false;
        }
        *self = LayerKv::new(precision);
        true
    }

    /// Keeps the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `k`, `v` (`[1, heads, seq, dim]`, the same heads and dim as held so far).
    pub fn append(&mut self, k: &ndarray::ArrayViewD<f32>, v: &ndarray::ArrayViewD<f32>) -> TractResult<()> {
        ensure!(
            k.ndim() == 4 && k.shape() == v.shape() && k.shape()[0] == 1,
            "keys {:?}, values {:?}",
            k.shape(),
            v.shape()
        );
        let (heads, seq, dim) = (k.shape()[1], k.shape()[2], k.shape()[3]);
        if self.len == 0 {
            (self.heads, self.dim) = (heads, dim);
        }
        ensure!((heads, dim) == (self.heads, self.dim), "{heads} heads of {dim} after {} of {}", self.heads, self.dim);
        if self.len + seq > self.capacity {
            // Whole blocks of positions rather than doubling: a long context would otherwise
            // reserve up to twice the cache it uses.
            let capacity = (self.len + seq).max(self.len + GROWTH_POSITIONS);
            for buffer in [&mut self.keys, &mut self.values] {
                buffer.relayout(heads, dim, self.len, self.capacity, capacity);
            }
            self.capacity = capacity;
        }
        let mut row = Vec::with_capacity(dim);
        for (buffer, new) in [(&mut self.keys, k), (&mut self.values, v)] {
            for h in 0..heads {
                for s in 0..seq {
                    row.clear();
                    row.extend(new.slice(ndarray::s![0, h, s, ..]).iter());
                    buffer.write((h * self.capacity + self.len + s) * dim, &row);
                }
            }
        }
        self.len += seq;
        Ok(())
    }

    /// Head `h`'s keys, `[len][dim]`.
    pub(crate) fn keys(&self, h: usize) -> Head<'_> {
        self.keys.part(h * self.capacity * self.dim, self.len * self.dim, self.dim)
    }

    /// Head `h`'s values, `[len][dim]`.
    pub(crate) fn values(&self, h: usize) -> Head<'_> {
        self.values.part(h * self.capacity * self.dim, self.len * self.dim, self.dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(heads: usize, seq: usize, dim: usize, base: f32) -> ndarray::ArrayD<f32> {
        ndarray::ArrayD::from_shape_fn(vec![1, heads, seq, dim], |i| base + (i[1] * 100 + i[2] * 10 + i[3]) as f32)
    }

    fn values(head: Head) -> Vec<f32> {
        head.to_f32().into_owned()
    }

    #[test]
    fn appends_grow_truncate_and_keep_heads_contiguous() {
        for precision in [KvPrecision::F32, KvPrecision::F16, KvPrecision::Q8] {
            let mut kv = LayerKv::new(precision);
            // Past the first block, so the cache is re-laid out once.
            let (first, second) = (tensor(2, 200, 4, 0.0), tensor(2, 100, 4, 1000.0));
            kv.append(&first.view(), &(&first + 0.5).view()).unwrap();
            kv.append(&second.view(), &(&second + 0.5).view()).unwrap();
            assert_eq!(kv.len(), 300);
            let position = match precision {
                KvPrecision::F32 => 4 * 4,
                KvPrecision::F16 => 2 * 4,
                KvPrecision::Q8 => 4 + 4,
            };
            assert_eq!(kv.bytes(), 2 * 300 * 2 * position);
            for h in 0..2 {
                let (keys, vals) = (values(kv.keys(h)), values(kv.values(h)));
                assert_eq!(keys.len(), 300 * 4);
                for (j, block) in keys.chunks_exact(4).enumerate() {
                    let (base, s) = if j < 200 { (0.0, j) } else { (1000.0, j - 200) };
                    let want: Vec<f32> = (0..4).map(|d| base + (h * 100 + s * 10 + d) as f32).collect();
                    let tolerance = match precision {
                        KvPrecision::F32 => 0.0,
                        KvPrecision::F16 => 1.0, // near 3000
                        // Half a step of the position's scale (its largest value / 127).
                        KvPrecision::Q8 => (want[3] + 0.5) / 254.0 * 1.0001,
                    };
                    assert!(block.iter().zip(&want).all(|(a, b)| (a - b).abs() <= tolerance), "{h} {j}");
                    assert!((vals[j * 4] - want[0] - 0.5).abs() <= tolerance);
                }
            }
            kv.truncate(250);
            assert_eq!(values(kv.keys(1)).len(), 250 * 4);
            assert!(!kv.set_precision(KvPrecision::F32), "a cache that holds positions keeps its type");
            let other = tensor(3, 1, 4, 0.0);
            assert!(kv.append(&other.view(), &other.view()).is_err(), "head count changed");
            kv.truncate(0);
            assert!(kv.set_precision(KvPrecision::F32));
        }
    }
}

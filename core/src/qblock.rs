//! What 4- and 8-bit block weights share: blocks of 32 along `k` with a scale and an optional
//! offset each ([`Blocks`]), and activation rows quantized per block to int8 ([`QuantizedRows`])
//! exactly as onnxruntime's MLAS does for `MatMulNBits` with `accuracy_level = 4`
//! (`scale = amax / 127`, `q = round_half_even(x * (127 / amax))`): the integer products of a
//! block are then the ones onnxruntime computes.

use std::ops::Range;

use tract_onnx::prelude::{f16, Tensor};

/// Values per block.
pub const BLOCK: usize = 32;

/// How far ahead, in bytes of codes, the x86 decode kernels prefetch the weight rows (and their
/// scales and offsets as many rows ahead): decode streams every weight from memory once per
/// token, and the hardware prefetcher alone left ~5% of it on the table here (`pocketlm bench`,
/// medians of 8 interleaved runs: 143.7 → 152.8 tok/s at 1 thread, 173.8 → 182.8 at 2; 8 KiB
/// beat 1 and 4 KiB). Not measured on ARM yet, so the NEON kernels do not prefetch.
#[cfg(target_arch = "x86_64")]
pub const PREFETCH_BYTES: usize = 8192;

/// Bytes of weight rows a product with several activation rows (prefill) computes before moving
/// on to the next ones: the tile stays in the L1 cache while every activation row passes, so each
/// activation row is read from farther away once per tile instead of once per weight row, which
/// had made the 4-bit prefill wait on the L2 cache (default model, means of 6 interleaved runs:
/// 525 → 632 tok/s at 1 thread, 831 → 1039 at 2; the 8-bit kernel, one activation row at a time,
/// is unchanged).
const TILE_BYTES: usize = 16 * 1024;

/// `rows` cut into consecutive tiles of about [`TILE_BYTES`] of weight rows (`row_bytes` each),
/// at least four rows per tile.
pub(crate) fn prefill_tiles(rows: Range<usize>, row_bytes: usize) -> impl Iterator<Item = Range<usize>> {
    let per_tile = (TILE_BYTES / row_bytes.max(1)).max(4);
    let end = rows.end;
    rows.step_by(per_tile).map(move |start| start..end.min(start + per_tile))
}

/// The integer dot-product instructions this CPU offers, best first: the 4- and 8-bit kernels are
/// chosen from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each architecture constructs only its own variants
pub enum Isa {
    /// x86-64 AVX-VNNI (`vpdpbusd`) with FMA and F16C.
    AvxVnni,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    NeonDotprod,
    /// aarch64 NEON.
    Neon,
    /// Portable Rust.
    Scalar,
}

impl Isa {
    /// The best level this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            // Every AVX2 CPU also has FMA and F16C (the block parameters are f16); checked anyway.
            let fma = std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c");
            if fma && std::is_x86_feature_detected!("avxvnni") {
                return Isa::AvxVnni;
            }
            if fma && std::is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                return Isa::NeonDotprod;
            }
            return Isa::Neon;
        }
        #[allow(unreachable_code)]
        Isa::Scalar
    }

    /// Name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::AvxVnni => "x86_64 AVX-VNNI",
            Isa::Avx2 => "x86_64 AVX2+FMA",
            Isa::NeonDotprod => "aarch64 NEON dotprod (sdot)",
            Isa::Neon => "aarch64 NEON",
            Isa::Scalar => "scalar",
        }
    }
}

/// The bytes of a quantized matrix's codes, held in a tract tensor so that a weight imported from
/// ONNX can be repacked in place in the tensor that holds its file bytes (no second copy at load).
#[derive(Debug, Clone, PartialEq)]
pub struct Codes(Tensor);

impl Codes {
    /// Takes `t`'s bytes (any shape, `u8` data); `None` if `t` is not plain memory.
    pub fn from_tensor(mut t: Tensor) -> Option<Self> {
        t.try_as_plain_ram_mut().ok()?;
        Some(Codes(t))
    }

    /// A copy of `bytes`.
    #[cfg(test)]
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Codes(Tensor::from_shape(&[bytes.len()], bytes).expect("1-D shape of its own length"))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The bytes, mutable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }

    /// The bytes as signed codes.
    pub fn signed(&self) -> &[i8] {
        let b = self.bytes();
        // SAFETY: i8 and u8 have the same size, alignment and validity.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const i8, b.len()) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }
}

/// The shape of an `[n, k]` block-quantized matrix and its per-block scales and offsets
/// (`[n][k / 32]` each; offsets only when the weight is asymmetric), held as f16: the precision
/// llama.cpp's block formats store them in, so a model converted from a GGUF keeps them exactly
/// (half the bytes of f32: 15 MB less memory and 13% fewer bytes read per token on the default
/// model). Values that f16 cannot hold exactly are rounded to nearest (relative error at most
/// 2^-11, below the int8 activation rounding the kernels add); values out of its range are refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocks {
    n: usize,
    k: usize,
    scales: Vec<f16>,
    offsets: Option<Vec<f16>>,
}

/// `values` as f16, or `None` if one overflows or a nonzero one flushes to zero. Each value is
/// narrowed as it comes, so a weight's block parameters are never held as f32.
pub(crate) fn narrow(values: impl IntoIterator<Item = f32>) -> Option<Vec<f16>> {
    let values = values.into_iter();
    let mut out = Vec::with_capacity(values.size_hint().0);
    let mut rounded = 0;
    for v in values {
        let h = f16::from_f32(v);
        if h.is_finite() != v.is_finite() || (v != 0.0 && h.to_f32() == 0.0) {
            return None;
        }
        rounded += usize::from(h.to_f32() != v);
        out.push(h);
    }
    if rounded > 0 {
        log::debug!("{rounded} of {} block parameters rounded to f16", out.len());
    }
    Some(out)
}

impl Blocks {
    /// `None` unless `k` is a multiple of [`BLOCK`], scales and offsets have `n * k / 32` values,
    /// and f16 holds them (see [`Blocks`]).
    #[cfg(test)]
    pub fn new(n: usize, k: usize, scales: Vec<f32>, offsets: Option<Vec<f32>>) -> Option<Self> {
        let offsets = match offsets {
            Some(o) => Some(narrow(o)?),
            None => None,
        };
        Self::from_f16(n, k, narrow(scales)?, offsets)
    }

    /// `None` unless `k` is a multiple of [`BLOCK`] and scales and offsets have `n * k / 32`
    /// values (see [`narrow`]).
    pub fn from_f16(n: usize, k: usize, scales: Vec<f16>, offsets: Option<Vec<f16>>) -> Option<Self> {
        let count = n.checked_mul(k)? / BLOCK;
        let ok = k.is_multiple_of(BLOCK) && scales.len() == count && offsets.as_ref().is_none_or(|o| o.len() == count);
        ok.then_some(Blocks { n, k, scales, offsets })
    }

    /// Output features (rows).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features (columns).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes of scales and offsets.
    pub fn bytes(&self) -> usize {
        2 * (self.scales.len() + self.offsets.as_ref().map_or(0, Vec::len))
    }

    /// Adds `extra` (`[n * k / 32]`) to the block offsets; `None` if the count is wrong or a sum
    /// does not fit f16.
    pub fn add_offsets(&mut self, extra: &[f32]) -> Option<()> {
        if extra.len() != self.scales.len() {
            return None;
        }
        self.offsets = Some(match &self.offsets {
            Some(o) => narrow(o.iter().zip(extra).map(|(o, e)| o.to_f32() + e))?,
            None => narrow(extra.iter().copied())?,
        });
        Some(())
    }

    /// Row `j`'s scales and offsets (empty when symmetric).
    #[inline]
    pub(crate) fn row(&self, j: usize) -> (&[f16], &[f16]) {
        let nb = self.k / BLOCK;
        (&self.scales[j * nb..][..nb], self.offsets.as_ref().map_or(&[][..], |o| &o[j * nb..][..nb]))
    }

    /// Rows `rows`' scales and offsets, row after row (offsets empty when symmetric).
    pub(crate) fn rows(&self, rows: Range<usize>) -> (&[f16], &[f16]) {
        let nb = self.k / BLOCK;
        let part = rows.start * nb..rows.end * nb;
        (&self.scales[part.clone()], self.offsets.as_ref().map_or(&[][..], |o| &o[part]))
    }

    /// True when the scales are exactly `scales` and there are no offsets.
    pub fn is_symmetric_with(&self, scales: &[f32]) -> bool {
        self.offsets.is_none()
            && scales.len() == self.scales.len()
            && self.scales.iter().zip(scales).all(|(h, &s)| h.to_f32() == s)
    }
}

/// Activation rows quantized per block: int8 values, block scales and exact float block sums;
/// on CPUs with AVX-VNNI also a [`Paired`] copy for the 4-bit kernel that reads two blocks per load,
/// on aarch64 each block's `8 Σ q` (what the NEON 4-bit kernel's unsigned codes add to its sum).
#[derive(Debug, Default, Clone)]
pub struct QuantizedRows {
    rows: usize,
    q: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<f32>,
    corrections: Vec<i32>,
    paired: Paired,
}

/// The activations laid out for a 4-bit kernel that loads two blocks' 32 bytes of codes at once
/// and takes the low nibbles of both blocks, then the high ones (x86 VNNI). Per pair of blocks
/// `(b, b + 1)`: `q` holds `q_b[..16], q_b+1[..16], q_b[16..], q_b+1[16..]` (64 bytes), `scales` the
/// eight lanes `[s_b; 4], [s_b+1; 4]`, and `corrections` `[8 Σ q_b; 4], [8 Σ q_b+1; 4]`: what
/// unsigned codes add to each block's sum. An odd last block keeps its natural order, with
/// `[s; 8]` and `[8 Σ q; 8]`. On AVX-512 VNNI CPUs `wide` re-lays `q` for the 512-bit prefill
/// kernel: per two pairs, their low-nibble halves then their high-nibble halves (128 bytes per
/// four blocks; blocks past the last multiple of four are not in it).
#[derive(Debug, Default, Clone)]
struct Paired {
    q: Vec<i8>,
    scales: Vec<f32>,
    corrections: Vec<i32>,
    wide: Vec<i8>,
}

/// One row of [`Paired`] (empty slices where the CPU's kernel does not use them).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only the VNNI kernel reads it
pub(crate) struct PairedRow<'a> {
    pub(crate) q: &'a [i8],
    pub(crate) scales: &'a [f32],
    pub(crate) corrections: &'a [i32],
    pub(crate) wide: &'a [i8],
}

/// One quantized activation row.
#[derive(Clone, Copy)]
pub(crate) struct XRow<'a> {
    pub(crate) q: &'a [i8],
    pub(crate) scales: &'a [f32],
    pub(crate) sums: &'a [f32],
    /// Each block's `8 Σ q` on aarch64 (empty elsewhere).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // only the NEON kernel reads it
    pub(crate) corrections: &'a [i32],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only the VNNI kernel reads it
    pub(crate) paired: PairedRow<'a>,
}

impl QuantizedRows {
    /// Quantizes `x` (`rows` rows of `k` values, `k` a multiple of [`BLOCK`]).
    pub fn quantize(x: &[f32], k: usize) -> Self {
        let rows = x.len() / k;
        let blocks = x.len() / BLOCK;
        let mut out = QuantizedRows {
            rows,
            q: vec![0; x.len()],
            scales: vec![0.0; blocks],
            sums: vec![0.0; blocks],
            ..Self::default()
        };
        // Eight blocks at a time: their sums are eight independent chains (each block still
        // summed in order from -0.0, as `Iterator::sum`, so bit for bit the same), which the
        // CPU overlaps instead of waiting on one long chain of additions per block; with SIMD,
        // one lane per block.
        let group8 = group8_kernel();
        let groups = x.chunks(GROUP_BLOCKS * BLOCK).zip(out.q.chunks_mut(GROUP_BLOCKS * BLOCK));
        let groups = groups.zip(out.scales.chunks_mut(GROUP_BLOCKS).zip(out.sums.chunks_mut(GROUP_BLOCKS)));
        for ((x, q), (scales, sums)) in groups {
            match group8 {
                // SAFETY: the kernel was chosen for this CPU; a full group is 256 values, 8 blocks.
                Some(kernel) if sums.len() == GROUP_BLOCKS => unsafe { kernel(x, q, scales, sums) },
                _ => quantize_group(x, q, scales, sums),
            }
        }
        match Isa::detect() {
            Isa::AvxVnni => out.pair(k),
            Isa::NeonDotprod | Isa::Neon => {
                out.corrections = out.q.chunks_exact(BLOCK).map(unsigned_correction).collect()
            }
            _ => {}
        }
        out
    }

    /// The rows of `parts`, in order, as one set (what quantizing their rows together gives).
    pub fn concat(parts: Vec<QuantizedRows>) -> Self {
        let mut parts = parts.into_iter();
        let Some(mut out) = parts.next() else { return Self::default() };
        for part in parts {
            out.rows += part.rows;
            out.q.extend_from_slice(&part.q);
            out.scales.extend_from_slice(&part.scales);
            out.sums.extend_from_slice(&part.sums);
            out.corrections.extend_from_slice(&part.corrections);
            out.paired.q.extend_from_slice(&part.paired.q);
            out.paired.scales.extend_from_slice(&part.paired.scales);
            out.paired.corrections.extend_from_slice(&part.paired.corrections);
            out.paired.wide.extend_from_slice(&part.paired.wide);
        }
        out
    }

    /// Fills [`Paired`] from `q` and `scales` (rows of `k` values).
    fn pair(&mut self, k: usize) {
        let nb = k / BLOCK;
        let lanes = nb.div_ceil(2) * 8;
        let paired = &mut self.paired;
        paired.q = Vec::with_capacity(self.q.len());
        paired.scales = Vec::with_capacity(self.rows * lanes);
        paired.corrections = Vec::with_capacity(self.rows * lanes);
        for (q, s) in self.q.chunks_exact(k).zip(self.scales.chunks_exact(nb)) {
            for (q, s) in q.chunks_exact(2 * BLOCK).zip(s.chunks_exact(2)) {
                let (a, b) = q.split_at(BLOCK);
                for half in [0, BLOCK / 2] {
                    paired.q.extend_from_slice(&a[half..][..BLOCK / 2]);
                    paired.q.extend_from_slice(&b[half..][..BLOCK / 2]);
                }
                for (q, s) in [(a, s[0]), (b, s[1])] {
                    paired.scales.extend([s; 4]);
                    paired.corrections.extend([unsigned_correction(q); 4]);
                }
            }
            if nb % 2 == 1 {
                let last = &q[k - BLOCK..];
                paired.q.extend_from_slice(last);
                paired.scales.extend([s[nb - 1]; 8]);
                paired.corrections.extend([unsigned_correction(last); 8]);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if avx512_vnni() {
            let doubles = nb / 4;
            paired.wide = Vec::with_capacity(self.rows * doubles * 4 * BLOCK);
            for row in paired.q.chunks_exact(k) {
                for pairs in row.chunks_exact(4 * BLOCK).take(doubles) {
                    let (p, next) = pairs.split_at(2 * BLOCK);
                    for half in [0..BLOCK, BLOCK..2 * BLOCK] {
                        paired.wide.extend_from_slice(&p[half.clone()]);
                        paired.wide.extend_from_slice(&next[half]);
                    }
                }
            }
        }
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `r`.
    #[inline]
    pub(crate) fn row(&self, r: usize) -> XRow<'_> {
        let (k, nb) = (self.q.len() / self.rows, self.scales.len() / self.rows);
        let p = &self.paired;
        let (lanes, wide) = (p.scales.len() / self.rows, p.wide.len() / self.rows);
        XRow {
            q: &self.q[r * k..][..k],
            scales: &self.scales[r * nb..][..nb],
            sums: &self.sums[r * nb..][..nb],
            corrections: self.corrections.get(r * nb..(r + 1) * nb).unwrap_or(&[]),
            paired: PairedRow {
                q: p.q.get(r * k..(r + 1) * k).unwrap_or(&[]),
                scales: p.scales.get(r * lanes..(r + 1) * lanes).unwrap_or(&[]),
                corrections: p.corrections.get(r * lanes..(r + 1) * lanes).unwrap_or(&[]),
                wide: p.wide.get(r * wide..(r + 1) * wide).unwrap_or(&[]),
            },
        }
    }
}

/// Whether this CPU has the AVX-512 features the 512-bit 4-bit prefill kernel is compiled for
/// (`q4::dot_vnni512_quad`; [`Paired`]'s `wide` layout is made only then).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_vnni() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// `8 Σ q` of one block: what a 4-bit kernel's unsigned codes (`code` instead of `code - 8`) add
/// to the block's integer sum.
fn unsigned_correction(block: &[i8]) -> i32 {
    8 * block.iter().map(|&v| i32::from(v)).sum::<i32>()
}

/// Blocks whose sums [`QuantizedRows::quantize`] computes together.
pub(crate) const GROUP_BLOCKS: usize = 8;

/// Quantizes a full group of [`GROUP_BLOCKS`] blocks (`x`, `q`: 256 values; `scales`, `sums`: 8)
/// exactly as [`quantize_group`] does.
type Group8Kernel = unsafe fn(&[f32], &mut [i8], &mut [f32], &mut [f32]);

/// The SIMD group quantizer for this CPU, if there is one (AVX2; NEON is base aarch64).
fn group8_kernel() -> Option<Group8Kernel> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return Some(crate::simd_x86::quantize8);
    }
    #[cfg(target_arch = "aarch64")]
    return Some(crate::simd_neon::quantize8);
    #[allow(unreachable_code)]
    None
}

/// Quantizes up to [`GROUP_BLOCKS`] whole blocks of `x` into `q`, with each block's scale
/// (`amax / 127`) and exact float sum: the portable reference the SIMD kernels match bit for bit.
fn quantize_group(x: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
    block_sums(x, sums);
    for ((block, q), scale) in x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(scales) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let inverse = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        *scale = amax / 127.0;
        for (q, v) in q.iter_mut().zip(block) {
            *q = round_to_i8(v * inverse);
        }
    }
}

/// `sums[i] = Σ x[32i..32i + 32]`, each in order from -0.0 (as `Iterator::sum`), for up to
/// [`GROUP_BLOCKS`] blocks at once.
#[inline]
fn block_sums(x: &[f32], sums: &mut [f32]) {
    let mut acc = [-0.0f32; GROUP_BLOCKS];
    let n = sums.len();
    if n == GROUP_BLOCKS {
        for j in 0..BLOCK {
            for (i, a) in acc.iter_mut().enumerate() {
                *a += x[i * BLOCK + j];
            }
        }
    } else {
        for j in 0..BLOCK {
            for (i, a) in acc.iter_mut().enumerate().take(n) {
                *a += x[i * BLOCK + j];
            }
        }
    }
    sums.copy_from_slice(&acc[..n]);
}

/// 1.5 · 2^23: added to a float of magnitude below 2^22, it leaves no fraction bits.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

/// `v` (|v| <= 127) rounded half to even, as `f32::round_ties_even(v) as i8`, in integer
/// arithmetic the compiler vectorizes: adding [`ROUND_MAGIC`] leaves no fraction bits (IEEE
/// addition rounds half to even), and the sum's low mantissa bits then hold the integer itself.
#[inline]
fn round_to_i8(v: f32) -> i8 {
    ((v + ROUND_MAGIC).to_bits() as i32 - ROUND_MAGIC.to_bits() as i32) as i8
}

/// `Σ_b o_b · Σ_i x_i`: a weight row's block-offset term against an activation row's block sums
/// (0 when symmetric).
pub(crate) fn offsets_dot(offsets: &[f16], sums: &[f32]) -> f32 {
    offsets.iter().zip(sums).map(|(o, s)| o.to_f32() * s).sum()
}

/// Test helper for the 4- and 8-bit products: `matmul` (a matrix's `matmul_rows`) over weight
/// `rows` for all rows of `x` (`k` wide) at once gives each activation row's result alone, bit
/// for bit, and writes nothing past `rows` in an output row (its stride leaves 3 spare values).
#[cfg(test)]
pub(crate) fn assert_rows_alone_match_together(
    x: &[f32],
    k: usize,
    rows: Range<usize>,
    matmul: impl Fn(&QuantizedRows, Range<usize>, &mut [f32], usize),
) {
    let (n, stride) = (rows.len(), rows.len() + 3);
    let mut y = vec![f32::NAN; x.len() / k * stride];
    matmul(&QuantizedRows::quantize(x, k), rows.clone(), &mut y, stride);
    for (r, row) in x.chunks_exact(k).enumerate() {
        let mut alone = vec![0f32; n];
        matmul(&QuantizedRows::quantize(row, k), rows.clone(), &mut alone, n);
        assert_eq!(alone, y[r * stride..][..n], "activation row {r}");
        assert!(y[r * stride + n..][..3].iter().all(|v| v.is_nan()), "written past the range");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_matches_the_mlas_rule() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.5) * 0.37).collect();
        let q = QuantizedRows::quantize(&x, 64);
        for b in 0..2 {
            let block = &x[b * 32..][..32];
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(q.scales[b], amax / 127.0);
            assert_eq!(q.sums[b], block.iter().sum::<f32>());
            for (q, v) in q.q[b * 32..][..32].iter().zip(block) {
                assert_eq!(*q, (v * (127.0 / amax)).round_ties_even() as i8);
            }
        }
        assert!(q.q.iter().any(|&v| v == 127 || v == -127), "the largest value maps to ±127");
        let zero = QuantizedRows::quantize(&[0.0; 32], 32);
        assert_eq!((zero.scales[0], zero.q.iter().all(|&v| v == 0)), (0.0, true));
    }

    #[test]
    fn rounding_to_i8_is_round_half_to_even() {
        // Quarter steps over the whole range (every .5 a tie), and values just off the ties.
        let quarters = (-508..=508).map(|i| i as f32 / 4.0);
        let near = (-127..127).flat_map(|i| [i as f32 + 0.5 - 1e-5, i as f32 + 0.5 + 1e-5]);
        for v in quarters.chain(near) {
            assert_eq!(round_to_i8(v), v.round_ties_even() as i8, "{v}");
        }
    }

    #[test]
    fn block_sums_are_bit_identical_to_summing_each_block_in_order_and_parts_concatenate() {
        // 11 blocks: one full group of eight and a partial one; zeros of both signs included.
        let mut x: Vec<f32> = (0..11 * 32).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1.37e-3).collect();
        x[64..96].fill(-0.0);
        x[96..128].fill(0.0);
        let q = QuantizedRows::quantize(&x, 11 * 32);
        for (b, block) in x.chunks_exact(32).enumerate() {
            assert_eq!(q.sums[b].to_bits(), block.iter().sum::<f32>().to_bits(), "block {b}");
        }
        let rows: Vec<f32> = x.iter().chain(&x).chain(&x).map(|v| v * 0.5).collect();
        let whole = QuantizedRows::quantize(&rows, 11 * 32);
        let parts = QuantizedRows::concat(vec![
            QuantizedRows::quantize(&rows[..11 * 32], 11 * 32),
            QuantizedRows::quantize(&rows[11 * 32..], 11 * 32),
        ]);
        assert_eq!(
            (parts.rows, &parts.q, &parts.scales, &parts.sums),
            (whole.rows, &whole.q, &whole.scales, &whole.sums)
        );
        assert_eq!(
            (&parts.paired.q, &parts.paired.scales, &parts.paired.corrections),
            (&whole.paired.q, &whole.paired.scales, &whole.paired.corrections)
        );
    }

    #[test]
    fn the_simd_group_quantizer_matches_the_portable_one_bit_for_bit() {
        let Some(kernel) = group8_kernel() else { return };
        // Varied magnitudes per block, exact ties after scaling (block 1: amax 127, halves),
        // zero blocks of both signs, a lone subnormal, and blocks holding NaN and infinities.
        let mut groups: Vec<Vec<f32>> = Vec::new();
        for seed in 0..40u32 {
            groups.push(
                (0..256u32)
                    .map(|i| {
                        let h = (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 20001;
                        (h as f32 - 10000.0) * 1e-4 * 10f32.powi((i / 32 + seed) as i32 % 7 - 3)
                    })
                    .collect(),
            );
        }
        let mut special: Vec<f32> = (0..256).map(|i| i as f32 * 0.01 - 1.0).collect();
        special[32..64].copy_from_slice(&std::array::from_fn::<f32, 32, _>(|i| i as f32 * 4.0 - 63.5));
        special[32] = 127.0;
        special[64..96].fill(-0.0);
        special[96..128].fill(0.0);
        special[130] = 1e-40;
        special[160] = f32::NAN;
        special[200] = f32::INFINITY;
        special[230] = f32::NEG_INFINITY;
        special[231] = f32::NAN;
        special[186] = f32::NAN;
        special[191] = f32::NAN;
        groups.push(special);
        for (g, x) in groups.iter().enumerate() {
            let (mut q, mut scales, mut sums) = ([0i8; 256], [0f32; 8], [0f32; 8]);
            let (mut q2, mut scales2, mut sums2) = ([0i8; 256], [0f32; 8], [0f32; 8]);
            quantize_group(x, &mut q, &mut scales, &mut sums);
            unsafe { kernel(x, &mut q2, &mut scales2, &mut sums2) };
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(q2, q, "group {g}");
            assert_eq!((bits(&scales2), bits(&sums2)), (bits(&scales), bits(&sums)), "group {g}");
        }
    }

    #[test]
    fn block_parameters_are_checked_and_offsets_accumulate() {
        assert!(Blocks::new(2, 48, vec![1.0; 3], None).is_none());
        assert!(Blocks::new(2, 32, vec![1.0; 1], None).is_none());
        assert!(Blocks::new(2, 32, vec![1.0; 2], Some(vec![0.0; 3])).is_none());
        let mut b = Blocks::new(2, 64, vec![1.0; 4], None).unwrap();
        assert_eq!(b.add_offsets(&[1.0; 3]), None);
        b.add_offsets(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        b.add_offsets(&[0.5; 4]).unwrap();
        let h = |v: &[f32]| v.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
        assert_eq!(b.row(1), (&h(&[1.0, 1.0])[..], &h(&[3.5, 4.5])[..]));
        // f16 holds them exactly, or to nearest; out of range is refused.
        let rounded = Blocks::new(1, 32, vec![0.1], None).unwrap();
        assert_eq!(rounded.row(0).0[0].to_f32(), 0.099975586);
        assert!(Blocks::new(1, 32, vec![1e5], None).is_none());
        assert!(Blocks::new(1, 32, vec![1e-9], None).is_none());
        assert!(b.add_offsets(&[1e5; 4]).is_none());
    }
}

//! 4-bit block weights and the int8-activation dot products that read them.
//!
//! A weight row of `k` values is stored as `k / 32` blocks of 32 four-bit codes, each block with a
//! scale `d` and, optionally, an offset `o` ([`Blocks`]): `w = (code - 8) * d + o`. Against an
//! activation row quantized per block ([`QuantizedRows`]),
//! `y = Σ_b d_b · sx_b · Σ_i (code_i - 8) · q_i + o_b · Σ_i x_i`: each block's integer dot
//! product is exact, only the float sums round.

use tract_onnx::prelude::{f16, Tensor};

#[cfg(target_arch = "x86_64")]
use crate::qblock::avx512_vnni;
#[cfg(target_arch = "x86_64")]
use crate::qblock::PREFETCH_BYTES;
use crate::qblock::{offsets_dot, prefill_tiles, Blocks, Codes, Isa, QuantizedRows, XRow, BLOCK};
#[cfg(target_arch = "aarch64")]
use crate::simd_neon::{sdot, widen4};
#[cfg(target_arch = "x86_64")]
use crate::simd_x86::{f16_to_f32, hsum, offsets_dot_x86};

/// A `[n, k]` 4-bit weight matrix (`k` a multiple of [`BLOCK`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Q4Matrix {
    /// `[n][k / 32][16]`: byte `j` of a block holds code `j` (low nibble) and code `j + 16`.
    codes: Codes,
    blocks: Blocks,
}

impl Q4Matrix {
    /// From ONNX `MatMulNBits` 4-bit data (`[n][k / 32][16]` bytes, element `2i` in the low
    /// nibble of byte `i`) and its block parameters, repacked block by block in place in `b`'s
    /// memory. Returns `None` if the sizes disagree or `b` is not plain memory.
    pub fn from_nbits(b: Tensor, blocks: Blocks) -> Option<Self> {
        let mut codes = Codes::from_tensor(b)?;
        if codes.len() != blocks.n() * blocks.k() / 2 {
            return None;
        }
        for block in codes.bytes_mut().chunks_exact_mut(BLOCK / 2) {
            let src: [u8; BLOCK / 2] = block.try_into().expect("chunks of BLOCK / 2");
            for (j, out) in block.iter_mut().enumerate() {
                let shift = 4 * (j % 2);
                let (lo, hi) = ((src[j / 2] >> shift) & 0x0F, (src[8 + j / 2] >> shift) & 0x0F);
                *out = lo | (hi << 4);
            }
        }
        Some(Q4Matrix { codes, blocks })
    }

    /// From codes in natural order (`codes[row * k + i]`, each 0..=15) and block parameters.
    /// Returns `None` if the sizes disagree.
    #[cfg(test)]
    pub fn new(codes: &[u8], blocks: Blocks) -> Option<Self> {
        if codes.len() != blocks.n() * blocks.k() {
            return None;
        }
        let mut packed = vec![0u8; codes.len() / 2];
        for (block, out) in codes.chunks_exact(BLOCK).zip(packed.chunks_exact_mut(BLOCK / 2)) {
            for j in 0..BLOCK / 2 {
                out[j] = (block[j] & 0x0F) | (block[j + BLOCK / 2] << 4);
            }
        }
        Some(Q4Matrix { codes: Codes::from_bytes(&packed), blocks })
    }

    /// Shape, scales and offsets.
    pub fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.blocks.bytes()
    }

    /// Row `j` as f32 (`(code - 8) * scale + offset` per block) into `out` (`k` values).
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let row_bytes = self.blocks.k() / 2;
        let (scales, offsets) = self.blocks.row(j);
        let codes = &self.codes.bytes()[j * row_bytes..][..row_bytes];
        for (b, (bytes, out)) in codes.chunks_exact(BLOCK / 2).zip(out.chunks_exact_mut(BLOCK)).enumerate() {
            let (scale, offset) = (scales[b].to_f32(), offsets.get(b).map_or(0.0, |o| o.to_f32()));
            let (low, high) = out.split_at_mut(BLOCK / 2);
            for ((&byte, low), high) in bytes.iter().zip(low).zip(high) {
                *low = ((byte & 0x0F) as f32 - 8.0) * scale + offset;
                *high = ((byte >> 4) as f32 - 8.0) * scale + offset;
            }
        }
    }

    /// Weight rows `rows`, in order (sliced once for the range, not per row).
    fn weight_rows(&self, rows: std::ops::Range<usize>) -> impl Iterator<Item = WRow<'_>> {
        let (row_bytes, nb) = (self.blocks.k() / 2, self.blocks.k() / BLOCK);
        let codes = &self.codes.bytes()[rows.start * row_bytes..rows.end * row_bytes];
        let (scales, offsets) = self.blocks.rows(rows);
        codes.chunks_exact(row_bytes).zip(scales.chunks_exact(nb)).enumerate().map(move |(i, (codes, scales))| WRow {
            codes,
            scales,
            offsets: offsets.get(i * nb..(i + 1) * nb).unwrap_or(&[]),
        })
    }

    /// `y[r][j] = Σ_i w[j][i] x_r[i]` for rows `j` in `rows` of the matrix and every quantized
    /// activation row `r` of `x`; `y` is `[x.rows()][rows.len()]`, row-major, stride `y_stride`.
    pub fn matmul_rows(&self, x: &QuantizedRows, rows: std::ops::Range<usize>, y: &mut [f32], y_stride: usize) {
        let row_bytes = self.blocks.k() / 2;
        // The kernel is chosen once for all weight rows.
        let kernel = dot_kernel(x.rows() == 1);
        if x.rows() == 1 {
            // Decode: one activation row.
            let x = x.row(0);
            let ws = self.weight_rows(rows.clone());
            #[cfg(target_arch = "x86_64")]
            if Isa::detect() == Isa::AvxVnni {
                let mut ws = ws;
                // Two weight rows per call share the activation's loads (same bits as one by one).
                let mut outs = y[..rows.len()].chunks_exact_mut(2);
                let pairs = std::iter::from_fn(|| Some([ws.next()?, ws.next()?]));
                for (out, pair) in (&mut outs).zip(pairs) {
                    // SAFETY: the CPU has AVX-VNNI (checked above); rows hold `k / 32` blocks.
                    out.copy_from_slice(&unsafe { dot_vnni_wrows::<2, true>(pair, &x) });
                }
                for (out, w) in outs.into_remainder().iter_mut().zip(ws) {
                    // SAFETY: as above.
                    *out = unsafe { kernel(&w, &x) };
                }
                return;
            }
            for (out, w) in y.iter_mut().zip(ws) {
                // SAFETY: `dot_kernel` returns only kernels whose CPU features are present.
                *out = unsafe { kernel(&w, &x) };
            }
            return;
        }
        // The activation rows' views, made once rather than per weight row (~2% of prefill).
        let xs: Vec<XRow> = (0..x.rows()).map(|r| x.row(r)).collect();
        let full = xs.len() / 4 * 4;
        let first = rows.start;
        #[cfg(target_arch = "x86_64")]
        let quads: Vec<Quad> = match Isa::detect() {
            Isa::AvxVnni => xs.chunks_exact(4).map(|x| Quad::new([x[0], x[1], x[2], x[3]])).collect(),
            _ => Vec::new(),
        };
        let dot4 = dot4_kernel();
        for tile in prefill_tiles(rows, row_bytes) {
            let ws: Vec<WRow> = self.weight_rows(tile.clone()).collect();
            // Four activation rows at a time share the unpacking of each weight row, and they
            // stay in cache while the tile's weight rows pass.
            for (g, x4) in xs.chunks_exact(4).enumerate() {
                for (j, w) in tile.clone().zip(&ws) {
                    // SAFETY: quads are made only on AVX-VNNI CPUs, wide codes only on AVX-512 VNNI
                    // ones, and `dot4_kernel` returns only kernels whose CPU features are present;
                    // rows hold `k / 32` blocks.
                    let acc = unsafe {
                        #[cfg(target_arch = "x86_64")]
                        if let Some(quad) = quads.get(g) {
                            if quad.wide() {
                                dot_vnni512_quad(w, quad)
                            } else {
                                dot_vnni_quad(w, quad)
                            }
                        } else {
                            dot4(w, [x4[0], x4[1], x4[2], x4[3]])
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        dot4(w, [x4[0], x4[1], x4[2], x4[3]])
                    };
                    for (i, a) in acc.into_iter().enumerate() {
                        y[(4 * g + i) * y_stride + j - first] = a;
                    }
                }
            }
            for (r, xr) in xs.iter().enumerate().skip(full) {
                for (j, w) in tile.clone().zip(&ws) {
                    // SAFETY: as above.
                    y[r * y_stride + j - first] = unsafe { kernel(w, xr) };
                }
            }
        }
    }
}

/// One weight row: packed codes, block scales and block offsets (empty when symmetric).
#[derive(Clone, Copy)]
struct WRow<'a> {
    codes: &'a [u8],
    scales: &'a [f16],
    offsets: &'a [f16],
}

/// A kernel for one weight row times one activation row,
/// `Σ_b d_b · sx_b · Σ_i (code_i - 8) · q_i + Σ_b o_b · Σ_i x_i`. Unsafe to call on a CPU without
/// the features it is compiled for.
type DotKernel = unsafe fn(&WRow, &XRow) -> f32;

/// Name of the 4-bit kernel `dot_kernel` picks on this CPU, and of the prefill kernel where it
/// differs (for logs and benchmarks).
pub fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::AvxVnni && avx512_vnni() {
        return "x86_64 AVX-VNNI (prefill: AVX-512 VNNI)";
    }
    Isa::detect().name()
}

/// The fastest [`DotKernel`] this CPU runs (safe to call here); for `decode` (one activation
/// row: each weight row is read once) one that prefetches the rows ahead.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // prefetching kernels are x86 only
fn dot_kernel(decode: bool) -> DotKernel {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni if decode => dot_vnni::<true>,
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => dot_vnni::<false>,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => dot_avx2,
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDotprod => dot_neon_dotprod,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => dot_neon,
        _ => dot_scalar,
    }
}

/// A kernel for four activation rows at once (the weight row is unpacked once). Unsafe to call on
/// a CPU without the features it is compiled for.
type Dot4Kernel = unsafe fn(&WRow, [XRow; 4]) -> [f32; 4];

/// The fastest [`Dot4Kernel`] this CPU runs, for CPUs without AVX-VNNI (`matmul_rows` runs
/// [`dot_vnni_quad`] on those with it).
fn dot4_kernel() -> Dot4Kernel {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => dot4_avx2::<4>,
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDotprod => dot4_neon_dotprod,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => dot4_neon,
        _ => dot4_scalar,
    }
}

/// Four activation rows one by one, portably.
unsafe fn dot4_scalar(w: &WRow, x: [XRow; 4]) -> [f32; 4] {
    x.map(|x| dot_scalar(w, &x))
}

/// The exact integer dot product of one block: `Σ_i (code_i - 8) · q_i`.
fn block_dot(codes: &[u8], q: &[i8]) -> i32 {
    (0..BLOCK / 2)
        .map(|j| {
            let lo = (codes[j] & 0x0F) as i32 - 8;
            let hi = (codes[j] >> 4) as i32 - 8;
            lo * q[j] as i32 + hi * q[j + BLOCK / 2] as i32
        })
        .sum()
}

fn dot_scalar(w: &WRow, x: &XRow) -> f32 {
    let mut acc = 0f32;
    for b in 0..w.scales.len() {
        let i = block_dot(&w.codes[b * BLOCK / 2..][..BLOCK / 2], &x.q[b * BLOCK..][..BLOCK]);
        acc += i as f32 * (w.scales[b].to_f32() * x.scales[b]);
    }
    acc + offsets_dot(w.offsets, x.sums)
}

/// `R` activation rows against one weight row, signed codes (maddubs with the sign moved onto q).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_avx2<const R: usize>(w: &WRow, x: [XRow; R]) -> [f32; R] {
    use std::arch::x86_64::*;
    let nb = w.scales.len();
    debug_assert!(w.codes.len() >= nb * BLOCK / 2);
    debug_assert!(x.iter().all(|x| x.q.len() >= nb * BLOCK && x.scales.len() >= nb));
    let low = _mm256_set1_epi8(0x0F);
    let eight = _mm256_set1_epi8(8);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let raw = _mm_loadu_si128(w.codes.as_ptr().add(b * BLOCK / 2) as *const __m128i);
        // [codes 0..16 | codes 16..32] as signed bytes in -8..=7.
        let signed = _mm256_sub_epi8(_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low), eight);
        let magnitude = _mm256_sign_epi8(signed, signed);
        let d = f16_to_f32(*w.scales.get_unchecked(b));
        for r in 0..R {
            let q = _mm256_loadu_si256(x[r].q.as_ptr().add(b * BLOCK) as *const __m256i);
            // maddubs multiplies unsigned by signed: move the code's sign onto q.
            let products = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(q, signed));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
            let scale = _mm256_set1_ps(d * *x[r].scales.get_unchecked(b));
            acc[r] = _mm256_fmadd_ps(sums, scale, acc[r]);
        }
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum(acc[r]) + offsets_dot_x86(w.offsets, x[r].sums);
    }
    out
}

/// [`dot4_avx2`] for one activation row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(w: &WRow, x: &XRow) -> f32 {
    dot4_avx2::<1>(w, [*x])[0]
}

/// One activation row with AVX-VNNI ([`dot_vnni_wrows`]); with `PREFETCH`, the weight rows
/// ahead are prefetched (decode).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot_vnni<const PREFETCH: bool>(w: &WRow, x: &XRow) -> f32 {
    dot_vnni_wrows::<1, PREFETCH>([*w], x)[0]
}

// The AVX-VNNI kernels read two blocks per step: one 32-byte load holds both blocks' codes; their
// low nibbles (codes 0..16 of each) and high nibbles (16..32) are multiplied, as unsigned values,
// by the `Paired` activations laid out to match (`qblock.rs`), giving four partial sums per block
// (lanes 0..4: block 2p, 4..8: block 2p + 1). Horizontal adds then make each block's exact integer
// sum, the `8 · Σ q` the unsigned codes add is subtracted in the integers, and one conversion and
// FMA serve every (row, block) lane of the step: `acc += (I - c) · (d · s)`, pairs alternating
// between two accumulators. Every row's lanes see the same operations in the same order whether
// it is computed with one weight row, two, or against four activation rows ([`dot_vnni_quad`]), so
// a result has the same bits in decode and in prefill.

/// Weight row `w`'s block scales for pair `p`: `[d_2p × 4, d_2p+1 × 4]`, from one 4-byte load of
/// two f16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn pair_scales(w: &WRow, p: usize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let halves = _mm_cvtsi32_si128(std::ptr::read_unaligned(w.scales.as_ptr().add(2 * p) as *const i32));
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_cvtph_ps(halves)), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
}

/// The unsigned codes of weight row `w`'s pair `p` times the paired activation codes `q` (64
/// bytes): four partial sums per block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
#[inline]
unsafe fn pair_partials(w: &WRow, p: usize, q: *const i8) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let low = _mm256_set1_epi8(0x0F);
    let raw = _mm256_loadu_si256(w.codes.as_ptr().add(p * BLOCK) as *const __m256i);
    let (lo, hi) = (_mm256_and_si256(raw, low), _mm256_and_si256(_mm256_srli_epi16(raw, 4), low));
    let ints = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lo, _mm256_loadu_si256(q as *const __m256i));
    _mm256_dpbusd_avx_epi32(ints, hi, _mm256_loadu_si256(q.add(BLOCK) as *const __m256i))
}

/// The odd last block of weight row `w` against `x` (0 when the block count is even), as
/// `(I - c) · (d · s)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c,avxvnni")]
#[inline]
unsafe fn odd_block(w: &WRow, x: &XRow) -> f32 {
    use std::arch::x86_64::*;
    let nb = w.scales.len();
    if nb.is_multiple_of(2) {
        return 0.0;
    }
    let (b, lanes) = (nb - 1, nb / 2 * 8);
    let raw = _mm_loadu_si128(w.codes.as_ptr().add(b * BLOCK / 2) as *const __m128i);
    let block = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
    let q = _mm256_loadu_si256(x.paired.q.as_ptr().add(b * BLOCK) as *const __m256i);
    let ints = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), block, q);
    let h = _mm_add_epi32(_mm256_castsi256_si128(ints), _mm256_extracti128_si256(ints, 1));
    let h = _mm_hadd_epi32(h, h);
    let total = _mm_cvtsi128_si32(_mm_hadd_epi32(h, h));
    let (c, s) = (*x.paired.corrections.get_unchecked(lanes), *x.paired.scales.get_unchecked(lanes));
    (total - c) as f32 * (f16_to_f32(*w.scales.get_unchecked(b)) * s)
}

/// Row `i`'s result from the two accumulators: its lane for even blocks plus its lane for odd
/// ones, then the odd last block and the offsets term.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn finish(acc: [std::arch::x86_64::__m256; 2], i: usize, w: &WRow, x: &XRow) -> f32 {
    use std::arch::x86_64::*;
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1]));
    (lanes[i] + lanes[4 + i]) + odd_block(w, x) + offsets_dot_x86(w.offsets, x.sums)
}

/// One activation row against `W` (1 or 2) weight rows: the activation's codes, corrections and
/// scales are loaded once per pair for both rows, and after the horizontal adds weight row `i`'s
/// block sums sit in lanes `i` (even block) and `4 + i` (odd block).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot_vnni_wrows<const W: usize, const PREFETCH: bool>(w: [WRow; W], x: &XRow) -> [f32; W] {
    use std::arch::x86_64::*;
    const { assert!(W == 1 || W == 2) };
    let nb = x.scales.len();
    let pairs = nb / 2;
    debug_assert!(w.iter().all(|w| w.scales.len() == nb && w.codes.len() >= nb * BLOCK / 2));
    debug_assert!(x.paired.q.len() >= nb * BLOCK && x.paired.scales.len() >= nb.div_ceil(2) * 8);
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut p = 0;
    // Two pairs (64 bytes of codes per row: one cache line) per iteration.
    while p + 2 <= pairs {
        if PREFETCH {
            // Each row's codes `PREFETCH_BYTES` ahead, and its scales and offsets as many blocks
            // ahead every 32 blocks (`wrapping_add`: past the matrix's end it is a hint).
            let ahead = 2 * p + PREFETCH_BYTES / (BLOCK / 2);
            for w in &w {
                _mm_prefetch::<_MM_HINT_T0>(w.codes.as_ptr().wrapping_add(ahead * BLOCK / 2) as *const i8);
                if p % 16 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(w.scales.as_ptr().wrapping_add(ahead) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(w.offsets.as_ptr().wrapping_add(ahead) as *const i8);
                }
            }
        }
        wrows_pair(&w, x, p, &mut acc[0]);
        wrows_pair(&w, x, p + 1, &mut acc[1]);
        p += 2;
    }
    if p < pairs {
        wrows_pair(&w, x, p, &mut acc[0]);
    }
    let mut out = [0f32; W];
    for (i, (out, w)) in out.iter_mut().zip(&w).enumerate() {
        *out = finish(acc, i, w, x);
    }
    out
}

/// Pair `p` of [`dot_vnni_wrows`] into `acc`. A function, not a closure, so that it is always
/// inlined (closures the optimiser left out of line cost 8% of decode and 18% of prefill).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn wrows_pair<const W: usize>(w: &[WRow; W], x: &XRow, p: usize, acc: &mut std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let q = x.paired.q.as_ptr().add(p * 2 * BLOCK);
    let (sums, d) = if W == 1 {
        let i = pair_partials(&w[0], p, q);
        let h = _mm256_hadd_epi32(i, i);
        (_mm256_hadd_epi32(h, h), pair_scales(&w[0], p))
    } else {
        let h = _mm256_hadd_epi32(pair_partials(&w[0], p, q), pair_partials(&w[1], p, q));
        let d = _mm256_blend_ps::<0b1010_1010>(pair_scales(&w[0], p), pair_scales(&w[1], p));
        (_mm256_hadd_epi32(h, h), d)
    };
    let ints = _mm256_sub_epi32(sums, _mm256_loadu_si256(x.paired.corrections.as_ptr().add(p * 8) as *const __m256i));
    let scale = _mm256_mul_ps(d, _mm256_loadu_ps(x.paired.scales.as_ptr().add(p * 8)));
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), scale, *acc);
}

/// Four activation rows' block parameters interleaved for [`dot_vnni_quad`]: per pair, lanes 0..4
/// hold rows 0..4's values for the even block, lanes 4..8 for the odd one. Made once per product
/// and used for every weight row.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Quad<'a> {
    x: [XRow<'a>; 4],
    scales: Vec<f32>,
    corrections: Vec<i32>,
}

#[cfg(target_arch = "x86_64")]
impl<'a> Quad<'a> {
    fn new(x: [XRow<'a>; 4]) -> Self {
        let lanes = x[0].scales.len() / 2 * 8;
        let (mut scales, mut corrections) = (Vec::with_capacity(lanes), Vec::with_capacity(lanes));
        for pair in (0..lanes).step_by(8) {
            for lane in [pair, pair + 4] {
                scales.extend(x.iter().map(|x| x.paired.scales[lane]));
                corrections.extend(x.iter().map(|x| x.paired.corrections[lane]));
            }
        }
        Quad { x, scales, corrections }
    }

    /// Whether every row has the codes [`dot_vnni512_quad`] reads (made only on AVX-512 VNNI
    /// CPUs, and only for whole groups of four blocks).
    fn wide(&self) -> bool {
        self.x.iter().all(|x| !x.paired.wide.is_empty())
    }
}

/// [`dot_vnni_quad`] two pairs at a time in 512-bit registers (prefill on AVX-512 VNNI CPUs): the
/// 64 bytes of codes of pairs `p` and `p + 1` are unpacked once, each activation row takes two
/// `vpdpbusd` against its re-laid codes (`PairedRow::wide`), and the horizontal adds become two
/// rounds of two-source permutes and adds. The integer block sums are exact whatever the order,
/// and every float lane sees what it sees in [`dot_vnni_quad`] (the low half of the accumulator is
/// its `acc[0]`, the high half its `acc[1]`), so the results have the same bits.
///
/// # Safety
/// The CPU must have AVX-512 F, BW, DQ and VNNI, AVX-VNNI, FMA and F16C ([`Quad::wide`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c,avxvnni")]
unsafe fn dot_vnni512_quad(w: &WRow, quad: &Quad) -> [f32; 4] {
    use std::arch::x86_64::*;
    let nb = w.scales.len();
    let (pairs, doubles) = (nb / 2, nb / 4);
    let x = &quad.x;
    debug_assert!(x.iter().all(|x| x.paired.wide.len() >= doubles * 4 * BLOCK) && quad.scales.len() >= pairs * 8);
    let low = _mm512_set1_epi8(0x0F);
    // Pair sums of rows (a, b): per pair, a's four then b's four (even block's two, odd's two).
    let first = _mm512_setr_epi32(0, 2, 4, 6, 16, 18, 20, 22, 8, 10, 12, 14, 24, 26, 28, 30);
    let second = _mm512_add_epi32(first, _mm512_set1_epi32(1));
    // Block totals per pair: rows 0..4 of the even block, then of the odd one.
    let first_totals = _mm512_setr_epi32(0, 4, 16, 20, 2, 6, 18, 22, 8, 12, 24, 28, 10, 14, 26, 30);
    let second_totals = _mm512_add_epi32(first_totals, _mm512_set1_epi32(1));
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let mut acc = _mm512_setzero_ps();
    for g in 0..doubles {
        let raw = _mm512_loadu_si512(w.codes.as_ptr().add(g * 2 * BLOCK) as *const __m512i);
        let (lo, hi) = (_mm512_and_si512(raw, low), _mm512_and_si512(_mm512_srli_epi16::<4>(raw), low));
        let at = g * 4 * BLOCK;
        let rows01 = pair_sums(wide_partials(lo, hi, &x[0], at), wide_partials(lo, hi, &x[1], at), first, second);
        let rows23 = pair_sums(wide_partials(lo, hi, &x[2], at), wide_partials(lo, hi, &x[3], at), first, second);
        let sums = pair_sums(rows01, rows23, first_totals, second_totals);
        let p = 2 * g;
        let ints = _mm512_sub_epi32(sums, _mm512_loadu_si512(quad.corrections.as_ptr().add(p * 8) as *const __m512i));
        let halves = _mm_loadl_epi64(w.scales.as_ptr().add(2 * p) as *const __m128i);
        let d = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_cvtph_ps(halves)));
        let scale = _mm512_mul_ps(d, _mm512_loadu_ps(quad.scales.as_ptr().add(p * 8)));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), scale, acc);
    }
    let mut acc = [_mm512_castps512_ps256(acc), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)))];
    if 2 * doubles < pairs {
        quad_pair(w, quad, 2 * doubles, &mut acc[0]);
    }
    [finish(acc, 0, w, &x[0]), finish(acc, 1, w, &x[1]), finish(acc, 2, w, &x[2]), finish(acc, 3, w, &x[3])]
}

/// Activation row `x`'s partial sums against the unpacked codes `lo`, `hi` of two pairs, from its
/// re-laid codes at `at` ([`dot_vnni512_quad`]; a function, not a closure, as [`wrows_pair`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn wide_partials(
    lo: std::arch::x86_64::__m512i,
    hi: std::arch::x86_64::__m512i,
    x: &XRow,
    at: usize,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let q = x.paired.wide.as_ptr().add(at);
    let ints = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(q as *const __m512i));
    _mm512_dpbusd_epi32(ints, hi, _mm512_loadu_si512(q.add(2 * BLOCK) as *const __m512i))
}

/// `a` and `b`'s lanes picked by `first` plus those picked by `second` (two-source permutes).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_sums(
    a: std::arch::x86_64::__m512i,
    b: std::arch::x86_64::__m512i,
    first: std::arch::x86_64::__m512i,
    second: std::arch::x86_64::__m512i,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    _mm512_add_epi32(_mm512_permutex2var_epi32(a, first, b), _mm512_permutex2var_epi32(a, second, b))
}

/// Four activation rows against one weight row (prefill): after the horizontal adds, row `r`'s
/// block sums sit in lanes `r` and `4 + r`, the same values and operations as in
/// [`dot_vnni_wrows`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot_vnni_quad(w: &WRow, quad: &Quad) -> [f32; 4] {
    use std::arch::x86_64::*;
    let nb = w.scales.len();
    let pairs = nb / 2;
    debug_assert!(quad.x.iter().all(|x| x.scales.len() == nb && x.paired.q.len() >= nb * BLOCK));
    debug_assert!(quad.scales.len() >= pairs * 8 && quad.corrections.len() >= pairs * 8);
    let x = &quad.x;
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut p = 0;
    while p + 2 <= pairs {
        quad_pair(w, quad, p, &mut acc[0]);
        quad_pair(w, quad, p + 1, &mut acc[1]);
        p += 2;
    }
    if p < pairs {
        quad_pair(w, quad, p, &mut acc[0]);
    }
    [finish(acc, 0, w, &x[0]), finish(acc, 1, w, &x[1]), finish(acc, 2, w, &x[2]), finish(acc, 3, w, &x[3])]
}

/// Pair `p` of [`dot_vnni_quad`] into `acc` (a function so that it is always inlined, as
/// [`wrows_pair`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn quad_pair(w: &WRow, quad: &Quad, p: usize, acc: &mut std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let (x, at) = (&quad.x, p * 2 * BLOCK);
    let low = _mm256_hadd_epi32(
        pair_partials(w, p, x[0].paired.q.as_ptr().add(at)),
        pair_partials(w, p, x[1].paired.q.as_ptr().add(at)),
    );
    let high = _mm256_hadd_epi32(
        pair_partials(w, p, x[2].paired.q.as_ptr().add(at)),
        pair_partials(w, p, x[3].paired.q.as_ptr().add(at)),
    );
    let sums = _mm256_hadd_epi32(low, high);
    let ints = _mm256_sub_epi32(sums, _mm256_loadu_si256(quad.corrections.as_ptr().add(p * 8) as *const __m256i));
    let scale = _mm256_mul_ps(pair_scales(w, p), _mm256_loadu_ps(quad.scales.as_ptr().add(p * 8)));
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), scale, *acc);
}

/// One activation row with NEON `sdot` (ARMv8.2 dot product: most phones since 2018).
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_neon_dotprod(w: &WRow, x: &XRow) -> f32 {
    let [y] = dot_rows_neon::<1, true>(w, [x]);
    y
}

/// One activation row with baseline NEON (Cortex-A53 class cores): widening byte multiplies.
#[cfg(target_arch = "aarch64")]
unsafe fn dot_neon(w: &WRow, x: &XRow) -> f32 {
    let [y] = dot_rows_neon::<1, false>(w, [x]);
    y
}

/// Four activation rows with NEON `sdot` (prefill).
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot4_neon_dotprod(w: &WRow, x: [XRow; 4]) -> [f32; 4] {
    dot_rows_neon::<4, true>(w, x.each_ref())
}

/// Four activation rows with baseline NEON (prefill).
#[cfg(target_arch = "aarch64")]
unsafe fn dot4_neon(w: &WRow, x: [XRow; 4]) -> [f32; 4] {
    dot_rows_neon::<4, false>(w, x.each_ref())
}

/// `R` activation rows against one weight row with NEON (`sdot` if `SDOT`, else widening byte
/// multiplies). Each group of four blocks is unpacked once for all rows; per row, the blocks'
/// integer sums are made exact by pairwise adds (block `b`'s total in lane `b % 4`) and scaled by
/// one multiply-add. For one row (decode) the codes stay unsigned (0..16: two instructions per 16
/// bytes instead of four) and the `8 Σ q` that adds to each block's sum is subtracted from its
/// total (`XRow::corrections`): the main loop takes 45 instructions per four blocks instead of 49
/// (`sdot` build). For several rows the codes are made signed once instead (subtracting per row
/// would cost more: 121 instructions for four rows against 131). Either way the block totals
/// are the same integers, so a row gives the same bits alone (decode) or with others (prefill).
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn dot_rows_neon<const R: usize, const SDOT: bool>(w: &WRow, x: [&XRow; R]) -> [f32; R] {
    use std::arch::aarch64::*;
    let nb = w.scales.len();
    debug_assert!(w.codes.len() >= nb * BLOCK / 2);
    debug_assert!(x.iter().all(|x| x.q.len() >= nb * BLOCK && x.scales.len() >= nb));
    debug_assert!(R > 1 || x[0].corrections.len() >= nb);
    let unsigned = R == 1;
    let (low, eight) = (vdupq_n_u8(0x0F), vdupq_n_s8(if unsigned { 0 } else { 8 }));
    // Block `b`'s codes, less 8 unless `unsigned`: (first 16, last 16).
    let unpack = |b: usize| {
        let raw = vld1q_u8(w.codes.as_ptr().add(b * BLOCK / 2));
        let (lo, hi) = (vreinterpretq_s8_u8(vandq_u8(raw, low)), vreinterpretq_s8_u8(vshrq_n_u8(raw, 4)));
        if unsigned {
            (lo, hi)
        } else {
            (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
        }
    };
    // Four partial integer sums of one block of codes against the 32 activation codes at `q`.
    let partials = |(w_lo, w_hi): (int8x16_t, int8x16_t), q: *const i8| {
        let (x_lo, x_hi) = (vld1q_s8(q), vld1q_s8(q.add(16)));
        if SDOT {
            sdot(sdot(vdupq_n_s32(0), w_lo, x_lo), w_hi, x_hi)
        } else {
            // |code · q| <= 15 · 128 (unsigned codes; 8 · 128 signed): two products per i16
            // lane cannot overflow.
            let p_lo = vmlal_s8(vmull_s8(vget_low_s8(w_lo), vget_low_s8(x_lo)), vget_low_s8(w_hi), vget_low_s8(x_hi));
            let p_hi = vmlal_high_s8(vmull_high_s8(w_lo, x_lo), w_hi, x_hi);
            vpadalq_s16(vpaddlq_s16(p_lo), p_hi)
        }
    };
    let mut acc = [vdupq_n_f32(0.0); R];
    let full = nb / 4 * 4;
    for b in (0..full).step_by(4) {
        let codes: [(int8x16_t, int8x16_t); 4] = std::array::from_fn(|i| unpack(b + i));
        let dw = widen4(w.scales.as_ptr().add(b));
        for (acc, x) in acc.iter_mut().zip(x) {
            let q = x.q.as_ptr().add(b * BLOCK);
            let s: [int32x4_t; 4] = std::array::from_fn(|i| partials(codes[i], q.add(i * BLOCK)));
            let totals = vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3]));
            let totals = if unsigned { vsubq_s32(totals, vld1q_s32(x.corrections.as_ptr().add(b))) } else { totals };
            let d = vmulq_f32(dw, vld1q_f32(x.scales.as_ptr().add(b)));
            *acc = vfmaq_f32(*acc, vcvtq_f32_s32(totals), d);
        }
    }
    if full < nb {
        // The last one to three blocks, the same way with zeros in the missing lanes.
        let count = nb - full;
        let codes: [Option<(int8x16_t, int8x16_t)>; 4] = std::array::from_fn(|i| (i < count).then(|| unpack(full + i)));
        let mut dw = [f16::ZERO; 4];
        dw[..count].copy_from_slice(&w.scales[full..]);
        let dw = widen4(dw.as_ptr());
        for (acc, x) in acc.iter_mut().zip(x) {
            let q = x.q.as_ptr().add(full * BLOCK);
            let s: [int32x4_t; 4] =
                std::array::from_fn(|i| codes[i].map_or(vdupq_n_s32(0), |c| partials(c, q.add(i * BLOCK))));
            let totals = vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3]));
            let totals = if unsigned {
                let c: [i32; 4] = std::array::from_fn(|i| if i < count { x.corrections[full + i] } else { 0 });
                vsubq_s32(totals, vld1q_s32(c.as_ptr()))
            } else {
                totals
            };
            let dx: [f32; 4] = std::array::from_fn(|i| if i < count { x.scales[full + i] } else { 0.0 });
            let d = vmulq_f32(dw, vld1q_f32(dx.as_ptr()));
            *acc = vfmaq_f32(*acc, vcvtq_f32_s32(totals), d);
        }
    }
    std::array::from_fn(|r| vaddvq_f32(acc[r]) + crate::simd_neon::offsets_dot(w.offsets, x[r].sums))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qblock::assert_rows_alone_match_together;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn q4(n: usize, k: usize, codes: &[u8], scales: Vec<f32>, offsets: Option<Vec<f32>>) -> Option<Q4Matrix> {
        Blocks::new(n, k, scales, offsets).and_then(|blocks| Q4Matrix::new(codes, blocks))
    }

    fn matrix(n: usize, k: usize, offsets: bool, seed: &mut u64) -> (Q4Matrix, Vec<f64>) {
        let codes: Vec<u8> = (0..n * k).map(|_| (lcg(seed) % 16) as u8).collect();
        // Block parameters f16 holds exactly, as a GGUF's are.
        let h = |v: f32| f16::from_f32(v).to_f32();
        let scales: Vec<f32> = (0..n * k / BLOCK).map(|_| h((lcg(seed) % 1000) as f32 * 1e-4)).collect();
        let offs: Option<Vec<f32>> =
            offsets.then(|| (0..n * k / BLOCK).map(|_| h((lcg(seed) % 1000) as f32 * 1e-4 - 0.05)).collect());
        let dense = (0..n * k)
            .map(|i| {
                let b = i / BLOCK;
                (codes[i] as f64 - 8.0) * scales[b] as f64 + offs.as_ref().map_or(0.0, |o| o[b] as f64)
            })
            .collect();
        (q4(n, k, &codes, scales, offs).unwrap(), dense)
    }

    #[test]
    fn matmul_matches_a_reference_on_the_quantized_activations() {
        let mut seed = 7;
        for &(n, k, rows, offsets) in &[
            (5, 32, 1, false),
            (7, 96, 3, true),
            (6, 96, 5, true),
            (64, 576, 2, true),
            (9, 576, 8, false),
            (3, 1536, 1, false),
            (67, 576, 1, true),
        ] {
            let (w, dense) = matrix(n, k, offsets, &mut seed);
            let x: Vec<f32> = (0..rows * k).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
            let qx = QuantizedRows::quantize(&x, k);
            // Reference in f64: dequantized activations (int8 * scale) for the symmetric part,
            // exact sums for the offsets, as the kernel defines it.
            let mut y = vec![0f32; rows * (n - 1)];
            w.matmul_rows(&qx, 1..n, &mut y, n - 1);
            for r in 0..rows {
                for j in 1..n {
                    let mut want = 0f64;
                    for i in 0..k {
                        let b = i / BLOCK;
                        let xi = qx.row(r).q[i] as f64 * qx.row(r).scales[b] as f64;
                        let off = w.blocks.row(j).1.get(b).map_or(0.0, |o| o.to_f64());
                        want += (dense[j * k + i] - off) * xi + off * x[r * k + i] as f64;
                    }
                    let got = y[r * (n - 1) + j - 1] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "n {n} k {k} r {r} j {j}: {got} vs {want}"
                    );
                }
            }
            // The quantized product stays close to the float one.
            let exact: f64 = (0..k).map(|i| dense[k + i] * x[i] as f64).sum();
            let got = y[0] as f64;
            assert!((got - exact).abs() < 0.02 * (1.0 + exact.abs()) + 0.05, "{got} vs {exact}");
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_with_others() {
        let mut seed = 5;
        // Block counts 3, 7 and 18: the NEON kernels' groups of four blocks and their tails.
        for k in [96, 224, 576] {
            // Seven weight rows: decode takes two at a time, then the last alone.
            let (w, _) = matrix(7, k, true, &mut seed);
            let x: Vec<f32> = (0..6 * k).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
            let mut together = vec![0f32; 6 * 7];
            w.matmul_rows(&QuantizedRows::quantize(&x, k), 0..7, &mut together, 7);
            for (r, row) in x.chunks_exact(k).enumerate() {
                let mut alone = vec![0f32; 7];
                w.matmul_rows(&QuantizedRows::quantize(row, k), 0..7, &mut alone, 7);
                assert_eq!(alone, together[r * 7..][..7], "k {k} row {r}");
            }
        }
    }

    #[test]
    fn prefill_tiles_cover_every_weight_row_of_a_range_once() {
        let mut seed = 3;
        // 512 bytes per weight row make 32-row tiles: rows 5..150 span five, the last partial;
        // nine activation rows are two groups of four and one alone.
        let (n, k, rows) = (150, 1024, 5..150);
        let (w, _) = matrix(n, k, true, &mut seed);
        let x: Vec<f32> = (0..9 * k).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
        assert_rows_alone_match_together(&x, k, rows, |x, rows, y, stride| w.matmul_rows(x, rows, y, stride));
    }

    #[test]
    fn every_kernel_agrees_with_the_scalar_one() {
        let mut seed = 11;
        // An even block count (the default model's) and odd ones (the kernels' last-block path;
        // 7: a group of four blocks and a tail of three on NEON).
        for k in [576, 96, 224] {
            let (w, _) = matrix(4, k, false, &mut seed);
            let x: Vec<f32> = (0..k).map(|_| (lcg(&mut seed) % 2001) as f32 / 500.0 - 2.0).collect();
            let qx = QuantizedRows::quantize(&x, k);
            let nb = k / BLOCK;
            let x = qx.row(0);
            let offsets: Vec<f16> = (0..nb).map(|b| f16::from_f32(b as f32 * 0.01 - 0.05)).collect();
            for j in 0..8 {
                let offsets = if j % 2 == 0 { &offsets[..] } else { &[][..] };
                let w = WRow {
                    codes: &w.codes.bytes()[(j % 4) * nb * 16..][..nb * 16],
                    scales: w.blocks.row(j % 4).0,
                    offsets,
                };
                let slow = dot_scalar(&w, &x);
                let magnitude = 1.0 + slow.abs();
                // SAFETY: `dot_kernel` returns only kernels whose CPU features are present.
                let fast = unsafe { dot_kernel(true)(&w, &x) };
                assert!((fast - slow).abs() <= 1e-5 * magnitude, "{fast} vs {slow}");
                // SAFETY: `dot4_kernel` returns only kernels whose CPU features are present.
                for fast in unsafe { dot4_kernel()(&w, [x; 4]) } {
                    assert!((fast - slow).abs() <= 1e-5 * magnitude, "{fast} vs {slow}");
                }
                #[cfg(target_arch = "x86_64")]
                if Isa::detect() == Isa::AvxVnni {
                    let quad = Quad::new([x; 4]);
                    // SAFETY: checked above.
                    let ymm = unsafe { dot_vnni_quad(&w, &quad) };
                    for fast in ymm {
                        assert!((fast - slow).abs() <= 1e-5 * magnitude, "{fast} vs {slow}");
                    }
                    assert_eq!(quad.wide(), avx512_vnni() && k >= 4 * BLOCK);
                    if quad.wide() {
                        // SAFETY: wide codes are made only on AVX-512 VNNI CPUs.
                        assert_eq!(unsafe { dot_vnni512_quad(&w, &quad) }, ymm, "k {k}: not the same bits");
                    }
                }
                #[cfg(target_arch = "x86_64")]
                if Isa::detect() != Isa::Scalar {
                    // SAFETY: checked above.
                    let avx2 = unsafe { dot_avx2(&w, &x) };
                    assert!((avx2 - slow).abs() <= 1e-5 * magnitude, "{avx2} vs {slow}");
                    // SAFETY: as above.
                    for fast in unsafe { dot4_avx2::<4>(&w, [x; 4]) } {
                        assert!((fast - slow).abs() <= 1e-5 * magnitude, "{fast} vs {slow}");
                    }
                }
                #[cfg(target_arch = "aarch64")]
                {
                    // SAFETY: baseline NEON everywhere; `sdot` only where the CPU has it.
                    let mut fast = vec![unsafe { dot_neon(&w, &x) }];
                    fast.extend(unsafe { dot4_neon(&w, [x; 4]) });
                    if Isa::detect() == Isa::NeonDotprod {
                        fast.push(unsafe { dot_neon_dotprod(&w, &x) });
                        fast.extend(unsafe { dot4_neon_dotprod(&w, [x; 4]) });
                    }
                    for fast in fast {
                        assert!((fast - slow).abs() <= 1e-5 * magnitude, "{fast} vs {slow}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_fastest_kernel_for_this_cpu_is_selected() {
        let name = kernel_name();
        eprintln!("4-bit kernel: {name}");
        #[cfg(target_arch = "x86_64")]
        {
            let (fma, f16c) = (std::is_x86_feature_detected!("fma"), std::is_x86_feature_detected!("f16c"));
            if std::is_x86_feature_detected!("avxvnni") && fma && f16c {
                let wide = std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vnni");
                assert_eq!(name, if wide { "x86_64 AVX-VNNI (prefill: AVX-512 VNNI)" } else { "x86_64 AVX-VNNI" });
            } else if std::is_x86_feature_detected!("avx2") && fma && f16c {
                assert_eq!(name, "x86_64 AVX2+FMA");
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            assert_eq!(name, "aarch64 NEON dotprod (sdot)");
        } else {
            assert_eq!(name, "aarch64 NEON");
        }
    }

    #[test]
    fn onnx_nibble_order_is_repacked_exactly() {
        let mut seed = 4;
        let codes: Vec<u8> = (0..3 * 64).map(|_| (lcg(&mut seed) % 16) as u8).collect();
        let onnx: Vec<u8> = codes.chunks_exact(2).map(|p| p[0] | (p[1] << 4)).collect();
        let scales = vec![0.5; 6];
        let blocks = Blocks::new(3, 64, scales, None).unwrap();
        let a = Q4Matrix::new(&codes, blocks.clone()).unwrap();
        let tensor = |bytes: &[u8]| Tensor::from_shape(&[bytes.len()], bytes).unwrap();
        let b = Q4Matrix::from_nbits(tensor(&onnx), blocks.clone()).unwrap();
        assert_eq!(a, b);
        assert!(Q4Matrix::from_nbits(tensor(&onnx[1..]), blocks).is_none());
    }

    #[test]
    fn mismatched_sizes_are_refused() {
        assert!(q4(2, 48, &[0; 96], vec![1.0; 3], None).is_none());
        assert!(q4(2, 32, &[0; 64], vec![1.0; 1], None).is_none());
        assert!(q4(2, 32, &[0; 64], vec![1.0; 2], Some(vec![0.0; 3])).is_none());
        assert!(q4(2, 32, &[0; 32], vec![1.0; 2], None).is_none());
    }
}

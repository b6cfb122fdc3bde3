//! 8-bit block weights (`w = q · d + o`, `q` in -128..=127, blocks of 32 along `k`, scales and
//! optional offsets in [`Blocks`]) and their int8-activation dot products: the LM head
//! and embedding precision of llama.cpp's GGUF files (Q8_0), and the 8-bit model variant.

use tract_onnx::prelude::{f16, Tensor};

#[cfg(target_arch = "x86_64")]
use crate::qblock::PREFETCH_BYTES;
use crate::qblock::{offsets_dot, prefill_tiles, Blocks, Codes, Isa, QuantizedRows, XRow, BLOCK};
#[cfg(target_arch = "aarch64")]
use crate::simd_neon::{sdot, widen4};
#[cfg(target_arch = "x86_64")]
use crate::simd_x86::{f16_to_f32, hsum, offsets_dot_x86};

/// A `[n, k]` 8-bit weight matrix (`k` a multiple of [`BLOCK`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Matrix {
    /// `[n][k]` signed codes.
    codes: Codes,
    blocks: Blocks,
}

impl Q8Matrix {
    /// From signed codes `[n * k]` and block parameters; `None` if the sizes disagree.
    #[cfg(test)]
    pub fn new(codes: Vec<i8>, blocks: Blocks) -> Option<Self> {
        let bytes: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
        (codes.len() == blocks.n() * blocks.k()).then(|| Q8Matrix { codes: Codes::from_bytes(&bytes), blocks })
    }

    /// From ONNX `MatMulNBits` 8-bit data (`[n * k]` unsigned codes, zero point 128), turned
    /// into signed codes in place in `b`'s memory; `None` if the sizes disagree.
    pub fn from_nbits(b: Tensor, blocks: Blocks) -> Option<Self> {
        let mut codes = Codes::from_tensor(b)?;
        if codes.len() != blocks.n() * blocks.k() {
            return None;
        }
        codes.bytes_mut().iter_mut().for_each(|c| *c ^= 0x80); // u8 - 128 as i8
        Some(Q8Matrix { codes, blocks })
    }

    /// Shape, scales and offsets.
    pub fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.blocks.bytes()
    }

    /// Row `j` as f32 (`code * scale + offset` per block) into `out` (`k` values).
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let k = self.blocks.k();
        let (scales, offsets) = self.blocks.row(j);
        for (b, (codes, out)) in
            self.codes.signed()[j * k..][..k].chunks_exact(BLOCK).zip(out.chunks_exact_mut(BLOCK)).enumerate()
        {
            let (scale, offset) = (scales[b].to_f32(), offsets.get(b).map_or(0.0, |o| o.to_f32()));
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = c as f32 * scale + offset;
            }
        }
    }

    /// Row `j`'s codes as unsigned bytes (code + 128, as an ONNX uint8 table holds them).
    pub fn unsigned_row(&self, j: usize, out: &mut [u8]) {
        let k = self.blocks.k();
        for (o, &c) in out.iter_mut().zip(&self.codes.bytes()[j * k..][..k]) {
            *o = c ^ 0x80;
        }
    }

    /// True when `scales` (`[n, k / 32]`) are exactly this symmetric matrix's block scales.
    pub fn has_scales(&self, scales: &[f32]) -> bool {
        self.blocks.is_symmetric_with(scales)
    }

    /// True when `table` (`[n, k]` uint8, code + 128) and `scales` (`[n, k / 32]`) hold exactly
    /// this symmetric matrix.
    pub fn equals_u8_table(&self, table: &[u8], scales: &[f32]) -> bool {
        table.len() == self.codes.len()
            && self.has_scales(scales)
            && table.chunks(4096).zip(self.codes.bytes().chunks(4096)).all(|(t, c)| {
                // Chunked so the comparison vectorizes (28 MB on the default model: ~2 ms, not 9).
                t.iter().zip(c).fold(0u8, |acc, (&t, &c)| acc | (t ^ 0x80 ^ c)) == 0
            })
    }

    /// As [`crate::q4::Q4Matrix::matmul_rows`].
    pub fn matmul_rows(&self, x: &QuantizedRows, rows: std::ops::Range<usize>, y: &mut [f32], y_stride: usize) {
        let k = self.blocks.k();
        let kernel = dot_kernel(x.rows() == 1);
        let codes = self.codes.signed();
        let xs: Vec<XRow> = (0..x.rows()).map(|r| x.row(r)).collect();
        let weight_row = |j: usize| {
            let (scales, offsets) = self.blocks.row(j);
            WRow8 { codes: &codes[j * k..][..k], scales, offsets }
        };
        let first = rows.start;
        // Each activation row stays in cache while a tile of weight rows passes.
        for tile in prefill_tiles(rows, k) {
            let ws: Vec<WRow8> = tile.clone().map(weight_row).collect();
            for (r, xr) in xs.iter().enumerate() {
                let out = &mut y[r * y_stride + tile.start - first..][..ws.len()];
                for (out, w) in out.iter_mut().zip(&ws) {
                    // SAFETY: `dot_kernel` returns only kernels whose CPU features are present.
                    *out = unsafe { kernel(w, xr) };
                }
            }
        }
    }
}

/// One 8-bit weight row: codes, and f16 block parameters the kernels widen as they go.
struct WRow8<'a> {
    codes: &'a [i8],
    scales: &'a [f16],
    offsets: &'a [f16],
}

type DotKernel = unsafe fn(&WRow8, &XRow) -> f32;

/// Name of the 8-bit kernel this CPU runs.
pub fn kernel_name() -> &'static str {
    Isa::detect().name()
}

/// The fastest kernel this CPU runs; for `decode` (one activation row: each weight row is read
/// once) one that prefetches the rows ahead, else (each weight row read for several activation
/// rows, already in cache after the first) one that does not.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // prefetching kernels are x86 only
fn dot_kernel(decode: bool) -> DotKernel {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni if decode => dot_vnni::<true>,
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => dot_vnni::<false>,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if decode => dot_avx2::<true>,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => dot_avx2::<false>,
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDotprod => dot_neon_dotprod,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => dot_neon,
        _ => dot_scalar,
    }
}

fn dot_scalar(w: &WRow8, x: &XRow) -> f32 {
    let mut acc = 0f32;
    for (b, (codes, q)) in w.codes.chunks_exact(BLOCK).zip(x.q.chunks_exact(BLOCK)).enumerate() {
        let i: i32 = codes.iter().zip(q).map(|(&c, &q)| c as i32 * q as i32).sum();
        acc += i as f32 * (w.scales[b].to_f32() * x.scales[b]);
    }
    acc + offsets_dot(w.offsets, x.sums)
}

/// [`dot_avx2`] with AVX-VNNI: one `vpdpbusd` per block instead of maddubs + madd.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot_vnni<const PREFETCH: bool>(w: &WRow8, x: &XRow) -> f32 {
    dot_x86::<true, PREFETCH>(w, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2<const PREFETCH: bool>(w: &WRow8, x: &XRow) -> f32 {
    dot_x86::<false, PREFETCH>(w, x)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_x86<const VNNI: bool, const PREFETCH: bool>(w: &WRow8, x: &XRow) -> f32 {
    use std::arch::x86_64::*;
    let nb = w.scales.len();
    debug_assert!(w.codes.len() >= nb * BLOCK && x.q.len() >= nb * BLOCK && x.scales.len() >= nb);
    let ones = _mm256_set1_epi16(1);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    // Block `b` into `acc`, scaled by `d` (the weight's block scale).
    // Block `b` into `acc`, scaled by `scale` (the weight's and the activation's block scales'
    // product in every lane).
    let block = |b: usize, scale: __m256, acc: &mut __m256| {
        let c = _mm256_loadu_si256(w.codes.as_ptr().add(b * BLOCK) as *const __m256i);
        let q = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
        // |c| as unsigned times q with c's sign: |c| <= 128, |q| <= 127, pairs fit i16.
        let (magnitude, signed) = (_mm256_sign_epi8(c, c), _mm256_sign_epi8(q, c));
        let products = if VNNI {
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), magnitude, signed)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed), ones)
        };
        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(products), scale, *acc);
    };
    // Even blocks on one accumulator, odd on the other.
    let mut b = 0;
    while b + 2 <= nb {
        if PREFETCH {
            // The codes `PREFETCH_BYTES` ahead (one line per two blocks), the scales as many
            // blocks ahead every 16 (`wrapping_add`: past the matrix's end it is only a hint).
            _mm_prefetch::<_MM_HINT_T0>(w.codes.as_ptr().wrapping_add(b * BLOCK + PREFETCH_BYTES));
            if b % 16 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(w.scales.as_ptr().wrapping_add(b + PREFETCH_BYTES / BLOCK) as *const i8);
            }
        }
        // Both blocks' f16 weight scales widened by one 32-bit load (zero-extending: no
        // dependency on a register's old value), times the activation's: [d_b, d_b+1, 0, 0].
        let dw = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(w.scales.as_ptr().add(b) as *const i32)));
        let d = _mm_mul_ps(dw, _mm_castpd_ps(_mm_load_sd(x.scales.as_ptr().add(b) as *const f64)));
        block(b, _mm256_broadcastss_ps(d), &mut acc0);
        block(b + 1, _mm256_broadcastss_ps(_mm_movehdup_ps(d)), &mut acc1);
        b += 2;
    }
    if b < nb {
        block(b, _mm256_set1_ps(f16_to_f32(*w.scales.get_unchecked(b)) * *x.scales.get_unchecked(b)), &mut acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1)) + offsets_dot_x86(w.offsets, x.sums)
}

/// One activation row with NEON `sdot` (ARMv8.2 dot product).
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_neon_dotprod(w: &WRow8, x: &XRow) -> f32 {
    dot_neon_impl::<true>(w, x)
}

/// One activation row with baseline NEON: widening byte multiplies.
#[cfg(target_arch = "aarch64")]
unsafe fn dot_neon(w: &WRow8, x: &XRow) -> f32 {
    dot_neon_impl::<false>(w, x)
}

/// Four blocks at a time: their exact integer sums by pairwise adds (block `b` in lane `b % 4`),
/// scaled by one multiply-add; the last one to three blocks one by one.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn dot_neon_impl<const SDOT: bool>(w: &WRow8, x: &XRow) -> f32 {
    use std::arch::aarch64::*;
    let nb = w.scales.len();
    debug_assert!(w.codes.len() >= nb * BLOCK && x.q.len() >= nb * BLOCK && x.scales.len() >= nb);
    // Four partial integer sums of block `b`.
    let partials = |b: usize| {
        let mut sums = vdupq_n_s32(0);
        for half in 0..2 {
            let c = vld1q_s8(w.codes.as_ptr().add(b * BLOCK + 16 * half));
            let q = vld1q_s8(x.q.as_ptr().add(b * BLOCK + 16 * half));
            sums = if SDOT {
                sdot(sums, c, q)
            } else {
                // |c · q| <= 16256 fits i16; pairs are widened before adding.
                vpadalq_s16(vpadalq_s16(sums, vmull_s8(vget_low_s8(c), vget_low_s8(q))), vmull_high_s8(c, q))
            };
        }
        sums
    };
    let mut acc = vdupq_n_f32(0.0);
    let full = nb / 4 * 4;
    for b in (0..full).step_by(4) {
        let totals = vpaddq_s32(vpaddq_s32(partials(b), partials(b + 1)), vpaddq_s32(partials(b + 2), partials(b + 3)));
        let d = vmulq_f32(widen4(w.scales.as_ptr().add(b)), vld1q_f32(x.scales.as_ptr().add(b)));
        acc = vfmaq_f32(acc, vcvtq_f32_s32(totals), d);
    }
    // The last one to three blocks' scales widened like the others (zeros past the end).
    let mut tail = [f16::ZERO; 4];
    tail[..nb - full].copy_from_slice(&w.scales[full..]);
    let mut dw = [0f32; 4];
    vst1q_f32(dw.as_mut_ptr(), widen4(tail.as_ptr()));
    let tail: f32 =
        (full..nb).map(|b| vaddvq_s32(partials(b)) as f32 * (dw[b - full] * *x.scales.get_unchecked(b))).sum();
    vaddvq_f32(acc) + tail + crate::simd_neon::offsets_dot(w.offsets, x.sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qblock::assert_rows_alone_match_together;

    #[test]
    fn matmul_matches_the_integer_reference_and_kernels_agree() {
        // Block counts 3 and 7: the NEON kernels' groups of four blocks and their tails.
        for k in [96, 224] {
            matches_the_integer_reference(k);
        }
        eprintln!("8-bit kernel: {}", kernel_name());
        assert!(Blocks::new(2, 48, vec![1.0; 3], None).is_none());
        assert!(Q8Matrix::new(vec![0; 63], Blocks::new(2, 32, vec![1.0; 2], None).unwrap()).is_none());
    }

    #[test]
    fn prefill_tiles_cover_every_weight_row_of_a_range_once() {
        let mut seed = 9u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        // 2 048 bytes per weight row make 8-row tiles: rows 3..40 span five, the last partial.
        let (n, k, rows) = (40, 2048, 3..40);
        let codes: Vec<i8> = (0..n * k).map(|_| (next() % 256) as u8 as i8).collect();
        let scales: Vec<f32> =
            (0..n * k / BLOCK).map(|_| f16::from_f32((next() % 1000) as f32 * 1e-4).to_f32()).collect();
        let w = Q8Matrix::new(codes, Blocks::new(n, k, scales, None).unwrap()).unwrap();
        let x: Vec<f32> = (0..5 * k).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
        assert_rows_alone_match_together(&x, k, rows, |x, rows, y, stride| w.matmul_rows(x, rows, y, stride));
    }

    fn matches_the_integer_reference(k: usize) {
        let n = 6;
        let mut seed = 5u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        let codes: Vec<i8> = (0..n * k).map(|_| (next() % 256) as u8 as i8).collect();
        // Block parameters f16 holds exactly, as a GGUF's are.
        let h = |v: f32| f16::from_f32(v).to_f32();
        let scales: Vec<f32> = (0..n * k / BLOCK).map(|_| h((next() % 1000) as f32 * 1e-4)).collect();
        let offsets: Vec<f32> = (0..n * k / BLOCK).map(|_| h((next() % 100) as f32 * 1e-3 - 0.05)).collect();
        let x: Vec<f32> = (0..2 * k).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
        let blocks = Blocks::new(n, k, scales.clone(), Some(offsets.clone())).unwrap();
        let m = Q8Matrix::new(codes.clone(), blocks).unwrap();
        let qx = QuantizedRows::quantize(&x, k);
        let mut y = vec![0f32; 2 * n];
        m.matmul_rows(&qx, 0..n, &mut y, n);
        for r in 0..2 {
            let xr = qx.row(r);
            for j in 0..n {
                let mut want = 0f64;
                for i in 0..k {
                    let b = i / BLOCK;
                    want += codes[j * k + i] as f64
                        * scales[j * k / BLOCK + b] as f64
                        * xr.q[i] as f64
                        * xr.scales[b] as f64;
                }
                want += (0..k / BLOCK).map(|b| offsets[j * k / BLOCK + b] as f64 * xr.sums[b] as f64).sum::<f64>();
                let got = y[r * n + j] as f64;
                assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "row {r} col {j}: {got} vs {want}");
                let (scales, offsets) = m.blocks.row(j);
                let w = WRow8 { codes: &codes[j * k..][..k], scales, offsets };
                assert!((dot_scalar(&w, &xr) as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()));
                #[cfg(target_arch = "x86_64")]
                if Isa::detect() != Isa::Scalar {
                    // SAFETY: checked above.
                    let avx2 = unsafe { dot_avx2::<true>(&w, &xr) } as f64;
                    assert!((avx2 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{avx2} vs {want}");
                }
                #[cfg(target_arch = "aarch64")]
                {
                    // SAFETY: baseline NEON; `sdot` only where the CPU has it.
                    let neon = unsafe { dot_neon(&w, &xr) } as f64;
                    assert!((neon - want).abs() <= 1e-4 * (1.0 + want.abs()), "{neon} vs {want}");
                    if Isa::detect() == Isa::NeonDotprod {
                        let sdot = unsafe { dot_neon_dotprod(&w, &xr) } as f64;
                        assert!((sdot - want).abs() <= 1e-4 * (1.0 + want.abs()), "{sdot} vs {want}");
                    }
                }
            }
        }
    }
}

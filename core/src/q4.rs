//! 4-bit block weights and the int8-activation dot products that read them.
//!
//! A weight row of `k` values is stored as `k / 32` blocks of 32 four-bit codes, each block with a
//! scale `d` and, optionally, an offset `o`: `w = (code - 8) * d + o`. An activation row is
//! quantized per block of 32 to int8 exactly as onnxruntime's MLAS does for `MatMulNBits` with
//! `accuracy_level = 4` (`scale = amax / 127`, `q = round_half_even(x * (127 / amax))`), so
//! `y = Σ_b d_b · sx_b · Σ_i (code_i - 8) · q_i + o_b · Σ_i x_i` has the same integer products
//! onnxruntime computes. Each block's integer dot product is exact; only the float sums round.

/// Values per block.
pub const BLOCK: usize = 32;

/// A `[n, k]` 4-bit weight matrix (`k` a multiple of [`BLOCK`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Q4Matrix {
    n: usize,
    k: usize,
    /// `[n][k / 32][16]`: byte `j` of a block holds code `j` (low nibble) and code `j + 16`.
    codes: Vec<u8>,
    /// `[n][k / 32]` block scales.
    scales: Vec<f32>,
    /// `[n][k / 32]` block offsets, when the weight is asymmetric.
    offsets: Option<Vec<f32>>,
}

impl Q4Matrix {
    /// From codes in natural order (`codes[row * k + i]`, each 0..=15), scales and optional
    /// offsets (both `[n * k / 32]`). Returns `None` if the sizes disagree.
    pub fn new(n: usize, k: usize, codes: &[u8], scales: Vec<f32>, offsets: Option<Vec<f32>>) -> Option<Self> {
        let blocks = n * k / BLOCK;
        if !k.is_multiple_of(BLOCK) || codes.len() != n * k || scales.len() != blocks {
            return None;
        }
        if offsets.as_ref().is_some_and(|o| o.len() != blocks) {
            return None;
        }
        let mut packed = vec![0u8; blocks * BLOCK / 2];
        for (block, out) in codes.chunks_exact(BLOCK).zip(packed.chunks_exact_mut(BLOCK / 2)) {
            for j in 0..BLOCK / 2 {
                out[j] = (block[j] & 0x0F) | (block[j + BLOCK / 2] << 4);
            }
        }
        Some(Q4Matrix { n, k, codes: packed, scales, offsets })
    }

    /// Output features (rows).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features (columns).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * (self.scales.len() + self.offsets.as_ref().map_or(0, Vec::len))
    }

    /// Adds `extra` (`[n * k / 32]`) to the block offsets.
    pub fn add_offsets(&mut self, extra: &[f32]) -> Option<()> {
        if extra.len() != self.scales.len() {
            return None;
        }
        match &mut self.offsets {
            Some(o) => o.iter_mut().zip(extra).for_each(|(o, e)| *o += e),
            None => self.offsets = Some(extra.to_vec()),
        }
        Some(())
    }

    /// `y[r][j] = Σ_i w[j][i] x_r[i]` for rows `j` in `rows` of the matrix and every quantized
    /// activation row `r` of `x`; `y` is `[x.rows()][rows.len()]`, row-major, stride `y_stride`.
    pub fn matmul_rows(&self, x: &QuantizedRows, rows: std::ops::Range<usize>, y: &mut [f32], y_stride: usize) {
        let nb = self.k / BLOCK;
        for (jj, j) in rows.enumerate() {
            let codes = &self.codes[j * nb * BLOCK / 2..][..nb * BLOCK / 2];
            let scales = &self.scales[j * nb..][..nb];
            let offsets = self.offsets.as_ref().map(|o| &o[j * nb..][..nb]);
            for r in 0..x.rows {
                let mut acc = dot(codes, scales, &x.q[r * self.k..][..self.k], &x.scales[r * nb..][..nb]);
                if let Some(offsets) = offsets {
                    acc += offsets.iter().zip(&x.sums[r * nb..][..nb]).map(|(o, s)| o * s).sum::<f32>();
                }
                y[r * y_stride + jj] = acc;
            }
        }
    }
}

/// Activation rows quantized per block: int8 values, block scales and exact float block sums.
#[derive(Debug, Default, Clone)]
pub struct QuantizedRows {
    rows: usize,
    q: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<f32>,
}

impl QuantizedRows {
    /// Quantizes `x` (`rows` rows of `k` values, `k` a multiple of [`BLOCK`]).
    pub fn quantize(x: &[f32], k: usize) -> Self {
        let rows = x.len() / k;
        let blocks = x.len() / BLOCK;
        let mut out = QuantizedRows { rows, q: vec![0; x.len()], scales: vec![0.0; blocks], sums: vec![0.0; blocks] };
        for (b, block) in x.chunks_exact(BLOCK).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let inverse = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            out.scales[b] = amax / 127.0;
            out.sums[b] = block.iter().sum();
            for (q, v) in out.q[b * BLOCK..][..BLOCK].iter_mut().zip(block) {
                *q = round_ties_even(v * inverse) as i8;
            }
        }
        out
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Rounds half to even like `f32::round_ties_even` for |v| < 2^22 (here |v| <= 127), in plain
/// float arithmetic the compiler vectorizes: adding and removing 1.5 · 2^23 leaves no fraction bits,
/// and IEEE addition rounds half to even.
#[inline]
fn round_ties_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// `Σ_b d_b · sx_b · Σ_i (code_i - 8) · q_i` over one weight row.
fn dot(codes: &[u8], scales: &[f32], q: &[i8], q_scales: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot_avx2(codes, scales, q, q_scales) };
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot_neon_dotprod(codes, scales, q, q_scales) };
    }
    dot_scalar(codes, scales, q, q_scales)
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

fn dot_scalar(codes: &[u8], scales: &[f32], q: &[i8], q_scales: &[f32]) -> f32 {
    let mut acc = 0f32;
    for b in 0..scales.len() {
        let i = block_dot(&codes[b * BLOCK / 2..][..BLOCK / 2], &q[b * BLOCK..][..BLOCK]);
        acc += i as f32 * (scales[b] * q_scales[b]);
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(codes: &[u8], scales: &[f32], q: &[i8], q_scales: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let nb = scales.len();
    debug_assert!(codes.len() >= nb * BLOCK / 2 && q.len() >= nb * BLOCK && q_scales.len() >= nb);
    let low = _mm256_set1_epi8(0x0F);
    let eight = _mm256_set1_epi8(8);
    let ones = _mm256_set1_epi16(1);
    // Two accumulators halve the FMA dependency chain.
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for b in 0..nb {
        let raw = _mm_loadu_si128(codes.as_ptr().add(b * BLOCK / 2) as *const __m128i);
        // [codes 0..16 | codes 16..32] as signed bytes in -8..=7.
        let w = _mm256_sub_epi8(_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low), eight);
        let x = _mm256_loadu_si256(q.as_ptr().add(b * BLOCK) as *const __m256i);
        // maddubs multiplies unsigned by signed: move w's sign onto x.
        let products = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
        let scale = _mm256_set1_ps(*scales.get_unchecked(b) * *q_scales.get_unchecked(b));
        if b % 2 == 0 {
            acc0 = _mm256_fmadd_ps(sums, scale, acc0);
        } else {
            acc1 = _mm256_fmadd_ps(sums, scale, acc1);
        }
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_neon_dotprod(codes: &[u8], scales: &[f32], q: &[i8], q_scales: &[f32]) -> f32 {
    use std::arch::aarch64::*;
    let nb = scales.len();
    debug_assert!(codes.len() >= nb * BLOCK / 2 && q.len() >= nb * BLOCK && q_scales.len() >= nb);
    let low = vdupq_n_u8(0x0F);
    let eight = vdupq_n_s8(8);
    let mut acc = vdupq_n_f32(0.0);
    for b in 0..nb {
        let raw = vld1q_u8(codes.as_ptr().add(b * BLOCK / 2));
        let w_lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(raw, low)), eight);
        let w_hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(raw, 4)), eight);
        let x_lo = vld1q_s8(q.as_ptr().add(b * BLOCK));
        let x_hi = vld1q_s8(q.as_ptr().add(b * BLOCK + 16));
        let sums = vdotq_s32(vdotq_s32(vdupq_n_s32(0), w_lo, x_lo), w_hi, x_hi);
        let scale = *scales.get_unchecked(b) * *q_scales.get_unchecked(b);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(sums), scale);
    }
    vaddvq_f32(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn matrix(n: usize, k: usize, offsets: bool, seed: &mut u64) -> (Q4Matrix, Vec<f64>) {
        let codes: Vec<u8> = (0..n * k).map(|_| (lcg(seed) % 16) as u8).collect();
        let scales: Vec<f32> = (0..n * k / BLOCK).map(|_| (lcg(seed) % 1000) as f32 * 1e-4).collect();
        let offs: Option<Vec<f32>> =
            offsets.then(|| (0..n * k / BLOCK).map(|_| (lcg(seed) % 1000) as f32 * 1e-4 - 0.05).collect());
        let dense = (0..n * k)
            .map(|i| {
                let b = i / BLOCK;
                (codes[i] as f64 - 8.0) * scales[b] as f64 + offs.as_ref().map_or(0.0, |o| o[b] as f64)
            })
            .collect();
        (Q4Matrix::new(n, k, &codes, scales, offs).unwrap(), dense)
    }

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
    fn matmul_matches_a_reference_on_the_quantized_activations() {
        let mut seed = 7;
        for &(n, k, rows, offsets) in &[(5, 32, 1, false), (7, 96, 3, true), (64, 576, 2, true), (3, 1536, 1, false)] {
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
                        let xi = qx.q[r * k + i] as f64 * qx.scales[r * k / BLOCK + b] as f64;
                        let off = w.offsets.as_ref().map_or(0.0, |o| o[j * k / BLOCK + b] as f64);
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
    fn every_kernel_agrees_with_the_scalar_one() {
        let mut seed = 11;
        let (w, _) = matrix(4, 576, false, &mut seed);
        let x: Vec<f32> = (0..576).map(|_| (lcg(&mut seed) % 2001) as f32 / 500.0 - 2.0).collect();
        let qx = QuantizedRows::quantize(&x, 576);
        let nb = 576 / BLOCK;
        for j in 0..4 {
            let codes = &w.codes[j * nb * 16..][..nb * 16];
            let scales = &w.scales[j * nb..][..nb];
            let fast = dot(codes, scales, &qx.q, &qx.scales);
            let slow = dot_scalar(codes, scales, &qx.q, &qx.scales);
            assert!((fast - slow).abs() <= 1e-5 * (1.0 + slow.abs()), "{fast} vs {slow}");
        }
    }

    #[test]
    fn mismatched_sizes_are_refused() {
        assert!(Q4Matrix::new(2, 48, &[0; 96], vec![1.0; 3], None).is_none());
        assert!(Q4Matrix::new(2, 32, &[0; 64], vec![1.0; 1], None).is_none());
        assert!(Q4Matrix::new(2, 32, &[0; 64], vec![1.0; 2], Some(vec![0.0; 3])).is_none());
    }
}

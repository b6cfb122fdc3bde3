//! Small x86 SIMD helpers the kernels share (`q4`, `q8`, `attention_x86`), and the AVX2 form of
//! the activation quantizer (`qblock`).

use std::arch::x86_64::*;

use tract_onnx::prelude::f16;

use crate::qblock::{BLOCK, GROUP_BLOCKS, ROUND_MAGIC};

/// The sum of the eight f32 lanes of `acc`: high half onto low, then pairs, then the last two.
///
/// # Safety
/// The CPU must have AVX.
#[target_feature(enable = "avx")]
#[inline]
pub(crate) unsafe fn hsum(acc: __m256) -> f32 {
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
}

/// One f16 block parameter as f32 with F16C (the kernels' callers have checked the CPU has it).
/// The value reaches the vector register through a general one (`movzx`, `vmovd`): inserting it
/// into a vector register directly (`vpinsrw`, what LLVM makes of `_mm_cvtsi32_si128` here)
/// would wait on whatever that register held last, in a kernel an accumulator (measured on the
/// 8-bit kernel: decode 204 -> 164 tok/s).
#[target_feature(enable = "f16c")]
#[inline]
pub(crate) fn f16_to_f32(h: f16) -> f32 {
    let v: __m128i;
    // SAFETY: `vmovd` from a general register, no memory access; AVX is implied by F16C.
    unsafe {
        std::arch::asm!("vmovd {v}, {bits:e}", v = lateout(xmm_reg) v, bits = in(reg) u32::from(h.to_bits()),
            options(pure, nomem, nostack, preserves_flags));
    }
    _mm_cvtss_f32(_mm_cvtph_ps(v))
}

/// `qblock::offsets_dot` with AVX2, FMA and F16C.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn offsets_dot_x86(offsets: &[f16], sums: &[f32]) -> f32 {
    let n = offsets.len().min(sums.len());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let o = _mm256_cvtph_ps(_mm_loadu_si128(offsets.as_ptr().add(i) as *const __m128i));
        acc = _mm256_fmadd_ps(o, _mm256_loadu_ps(sums.as_ptr().add(i)), acc);
        i += 8;
    }
    hsum(acc) + (i..n).map(|i| f16_to_f32(offsets[i]) * sums[i]).sum::<f32>()
}

/// `qblock::quantize_group` for a full group of eight blocks (`x`, `q`: 256 values; `scales`,
/// `sums`: 8), bit for bit: each block's sum runs in order in its own lane (eight rows of eight
/// transposed per step), the absolute maximum ignores NaN as `f32::max` does, and `q` keeps the
/// low byte of each rounded value as `as i8` does.
///
/// # Safety
/// The CPU must have AVX2 (the slices' lengths are checked).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn quantize8(x: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
    assert!(
        x.len() == GROUP_BLOCKS * BLOCK
            && q.len() == x.len()
            && scales.len() == GROUP_BLOCKS
            && sums.len() == GROUP_BLOCKS
    );
    let p = x.as_ptr();
    let mut acc = _mm256_set1_ps(-0.0);
    for c in (0..BLOCK).step_by(8) {
        let columns = transpose8(std::array::from_fn(|b| _mm256_loadu_ps(p.add(b * BLOCK + c))));
        for column in columns {
            acc = _mm256_add_ps(acc, column);
        }
    }
    _mm256_storeu_ps(sums.as_mut_ptr(), acc);

    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let magic = _mm256_set1_ps(ROUND_MAGIC);
    let magic_bits = _mm256_set1_epi32(ROUND_MAGIC.to_bits() as i32);
    // Byte 0 of each 32-bit value to byte 4·i + (0..4) of each 128-bit half, the rest zero.
    let low_bytes: [__m256i; 4] = std::array::from_fn(|i| {
        let mut m = [-1i8; 16];
        for j in 0..4 {
            m[4 * i + j] = 4 * j as i8;
        }
        let m = _mm_loadu_si128(m.as_ptr() as *const __m128i);
        _mm256_set_m128i(m, m)
    });
    for (b, scale) in scales.iter_mut().enumerate() {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(b * BLOCK + 8 * i)));
        let mut m = _mm256_setzero_ps();
        for v in v {
            // `maxps` returns its second operand when either is NaN: NaN never enters `m`.
            m = _mm256_max_ps(_mm256_and_ps(v, abs), m);
        }
        let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
        let inverse = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        *scale = amax / 127.0;
        let inverse = _mm256_set1_ps(inverse);
        let mut packed = _mm256_setzero_si256();
        for (v, low) in v.into_iter().zip(low_bytes) {
            let rounded = _mm256_add_ps(_mm256_mul_ps(v, inverse), magic);
            let int = _mm256_sub_epi32(_mm256_castps_si256(rounded), magic_bits);
            packed = _mm256_or_si256(packed, _mm256_shuffle_epi8(int, low));
        }
        // Each half holds values 0-3 of the four vectors, then 4-7: put them back in order.
        let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr().add(b * BLOCK) as *mut __m256i, ordered);
    }
}

/// The 8×8 transpose of `r`: lane `i` of output `j` is lane `j` of `r[i]`.
#[target_feature(enable = "avx")]
#[inline]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_all_eight_lanes_and_widens_f16_exactly() {
        if !is_x86_feature_detected!("avx") || !is_x86_feature_detected!("f16c") {
            return;
        }
        let lanes = [1.0f32, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
        let total = unsafe { hsum(_mm256_loadu_ps(lanes.as_ptr())) };
        assert_eq!(total, 255.0);
        for v in [0.0f32, -1.5, 65504.0, 6.1e-5, 0.333] {
            let h = f16::from_f32(v);
            assert_eq!(unsafe { f16_to_f32(h) }, h.to_f32());
        }
    }
}

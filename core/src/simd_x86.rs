//! Small x86 SIMD helpers the kernels share (`q4`, `q8`, `attention_x86`).

use std::arch::x86_64::*;

use tract_onnx::prelude::f16;

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

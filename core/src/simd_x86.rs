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
#[target_feature(enable = "f16c")]
#[inline]
pub(crate) fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
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

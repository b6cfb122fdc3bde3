//! Small aarch64 NEON helpers the kernels share (`q4`, `q8`): instructions whose `std::arch`
//! intrinsics are not stable yet, written as inline assembly.

use std::arch::aarch64::{float32x4_t, int32x4_t, int8x16_t, vld1_u16};

use tract_onnx::prelude::f16;

/// `acc + Σ` of each four adjacent `a·b` byte products (`sdot`, ARMv8.2 dot product).
///
/// # Safety
/// The CPU must have the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(crate) unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    std::arch::asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
        options(pure, nomem, nostack));
    acc
}

/// Four f16 at `p` as f32 (`fcvtl`: base AArch64 SIMD, no FP16 extension needed).
///
/// # Safety
/// `p` must point to four readable f16 values.
#[inline(always)]
pub(crate) unsafe fn widen4(p: *const f16) -> float32x4_t {
    let halves = vld1_u16(p as *const u16);
    let out;
    std::arch::asm!("fcvtl {out:v}.4s, {halves:v}.4h", out = lateout(vreg) out, halves = in(vreg) halves,
        options(pure, nomem, nostack));
    out
}

#[cfg(test)]
mod tests {
    use std::arch::aarch64::*;

    use super::*;

    #[test]
    fn sdot_sums_each_four_products_and_fcvtl_widens_exactly() {
        let h = [f16::from_f32(1.5), f16::from_f32(-0.333), f16::from_f32(65504.0), f16::from_f32(6.1e-5)];
        let mut out = [0f32; 4];
        unsafe { vst1q_f32(out.as_mut_ptr(), widen4(h.as_ptr())) };
        assert_eq!(out, h.map(f16::to_f32));
        if !std::arch::is_aarch64_feature_detected!("dotprod") {
            return;
        }
        let a: [i8; 16] = std::array::from_fn(|i| i as i8 * 9 - 70);
        let b: [i8; 16] = std::array::from_fn(|i| 127 - i as i8 * 17);
        let mut sums = [0i32; 4];
        unsafe {
            let acc = sdot(vdupq_n_s32(1000), vld1q_s8(a.as_ptr()), vld1q_s8(b.as_ptr()));
            vst1q_s32(sums.as_mut_ptr(), acc);
        }
        let want: [i32; 4] =
            std::array::from_fn(|l| 1000 + (0..4).map(|i| a[4 * l + i] as i32 * b[4 * l + i] as i32).sum::<i32>());
        assert_eq!(sums, want);
    }
}

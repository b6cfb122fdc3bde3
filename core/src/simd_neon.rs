//! Small aarch64 NEON helpers the kernels share (`q4`, `q8`): instructions whose `std::arch`
//! intrinsics are not stable yet, written as inline assembly; and the NEON form of the
//! activation quantizer (`qblock`).

use std::arch::aarch64::{float32x4_t, int32x4_t, int8x16_t, uint16x4_t, vld1_u16, vld1q_f32, vst1_u16, vst1q_f32};

use tract_onnx::prelude::f16;

use crate::qblock::{BLOCK, GROUP_BLOCKS, ROUND_MAGIC};

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

/// `src` as f32 into `dst` (as many as both hold), four at a time with `fcvtl`: base AArch64
/// SIMD, where `half` converts in software on cores without FP16 arithmetic (Cortex-A53).
pub(crate) fn widen(src: &[f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let full = n / 4 * 4;
    for i in (0..full).step_by(4) {
        // SAFETY: `i + 4 <= n` values on both sides.
        unsafe { vst1q_f32(dst.as_mut_ptr().add(i), widen4(src.as_ptr().add(i))) };
    }
    for i in full..n {
        dst[i] = src[i].to_f32();
    }
}

/// `src` rounded to f16 (to nearest, ties to even, as `half` rounds) into `dst`, four at a time
/// with `fcvtn` (base AArch64 SIMD).
pub(crate) fn narrow(src: &[f32], dst: &mut [f16]) {
    let n = src.len().min(dst.len());
    let full = n / 4 * 4;
    for i in (0..full).step_by(4) {
        // SAFETY: `i + 4 <= n` values on both sides; `fcvtn` touches no memory.
        unsafe {
            let x = vld1q_f32(src.as_ptr().add(i));
            let halves: uint16x4_t;
            std::arch::asm!("fcvtn {out:v}.4h, {x:v}.4s", out = lateout(vreg) halves, x = in(vreg) x,
                options(pure, nomem, nostack));
            vst1_u16(dst.as_mut_ptr().add(i) as *mut u16, halves);
        }
    }
    for i in full..n {
        dst[i] = f16::from_f32(src[i]);
    }
}

/// `qblock::offsets_dot` four blocks at a time (`fcvtl`, fused multiply-add), the last one to
/// three with zeros past the end: per value `half` would call a conversion behind a CPU feature
/// check, or convert in software on cores without FP16 arithmetic.
pub(crate) fn offsets_dot(offsets: &[f16], sums: &[f32]) -> f32 {
    use std::arch::aarch64::{vaddvq_f32, vdupq_n_f32, vfmaq_f32};
    let n = offsets.len().min(sums.len());
    let full = n / 4 * 4;
    // SAFETY: every load reads four values below `n`, or from the padded copies.
    unsafe {
        let mut acc = vdupq_n_f32(0.0);
        for i in (0..full).step_by(4) {
            acc = vfmaq_f32(acc, widen4(offsets.as_ptr().add(i)), vld1q_f32(sums.as_ptr().add(i)));
        }
        if full < n {
            let (mut o, mut x) = ([f16::ZERO; 4], [0f32; 4]);
            o[..n - full].copy_from_slice(&offsets[full..n]);
            x[..n - full].copy_from_slice(&sums[full..n]);
            acc = vfmaq_f32(acc, widen4(o.as_ptr()), vld1q_f32(x.as_ptr()));
        }
        vaddvq_f32(acc)
    }
}

/// `qblock::quantize_group` for a full group of eight blocks (`x`, `q`: 256 values; `scales`,
/// `sums`: 8), bit for bit: each block's sum runs in order in its own lane (four rows of four
/// transposed per step), the absolute maximum ignores NaN as `f32::max` does (`fmaxnm`), and `q`
/// keeps the low byte of each rounded value as `as i8` does (`xtn`).
///
/// Panics unless the slices have those lengths.
pub(crate) fn quantize8(x: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
    use std::arch::aarch64::*;
    assert!(
        x.len() == GROUP_BLOCKS * BLOCK
            && q.len() == x.len()
            && scales.len() == GROUP_BLOCKS
            && sums.len() == GROUP_BLOCKS
    );
    // SAFETY: NEON is base aarch64; every load and store is within the checked lengths.
    unsafe {
        let p = x.as_ptr();
        for first in [0, 4] {
            let mut acc = vdupq_n_f32(-0.0);
            for c in (0..BLOCK).step_by(4) {
                let r: [float32x4_t; 4] = std::array::from_fn(|b| vld1q_f32(p.add((first + b) * BLOCK + c)));
                let t0 = vreinterpretq_f64_f32(vtrn1q_f32(r[0], r[1]));
                let t1 = vreinterpretq_f64_f32(vtrn2q_f32(r[0], r[1]));
                let t2 = vreinterpretq_f64_f32(vtrn1q_f32(r[2], r[3]));
                let t3 = vreinterpretq_f64_f32(vtrn2q_f32(r[2], r[3]));
                for column in [vtrn1q_f64(t0, t2), vtrn1q_f64(t1, t3), vtrn2q_f64(t0, t2), vtrn2q_f64(t1, t3)] {
                    acc = vaddq_f32(acc, vreinterpretq_f32_f64(column));
                }
            }
            vst1q_f32(sums.as_mut_ptr().add(first), acc);
        }

        let magic = vdupq_n_f32(ROUND_MAGIC);
        let magic_bits = vdupq_n_s32(ROUND_MAGIC.to_bits() as i32);
        for (b, scale) in scales.iter_mut().enumerate() {
            let v: [float32x4_t; 8] = std::array::from_fn(|i| vld1q_f32(p.add(b * BLOCK + 4 * i)));
            let mut m = vdupq_n_f32(0.0);
            for v in v {
                m = vmaxnmq_f32(m, vabsq_f32(v));
            }
            let amax = vmaxnmvq_f32(m);
            let inverse = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            *scale = amax / 127.0;
            let inverse = vdupq_n_f32(inverse);
            let ints: [int16x4_t; 8] = std::array::from_fn(|i| {
                let rounded = vaddq_f32(vmulq_f32(v[i], inverse), magic);
                vmovn_s32(vsubq_s32(vreinterpretq_s32_f32(rounded), magic_bits))
            });
            for h in [0, 4] {
                let lo = vmovn_s16(vcombine_s16(ints[h], ints[h + 1]));
                let hi = vmovn_s16(vcombine_s16(ints[h + 2], ints[h + 3]));
                vst1q_s8(q.as_mut_ptr().add(b * BLOCK + 4 * h), vcombine_s8(lo, hi));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::arch::aarch64::*;

    use super::*;

    #[test]
    fn the_offsets_term_sums_every_block() {
        for n in [0, 1, 3, 4, 18, 48, 49] {
            let offsets: Vec<f16> = (0..n).map(|i| f16::from_f32(i as f32 * 0.25 - 3.0)).collect();
            let sums: Vec<f32> = (0..n).map(|i| 1.5 - i as f32 * 0.125).collect();
            let want: f64 = offsets.iter().zip(&sums).map(|(o, s)| o.to_f64() * *s as f64).sum();
            let got = offsets_dot(&offsets, &sums) as f64;
            assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "n {n}: {got} vs {want}");
        }
    }

    #[test]
    fn slices_widen_and_round_as_half_does() {
        let mut values: Vec<f32> =
            vec![0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 1e9, -1e9, 6.1e-5, 5.96e-8, 3e-8, 1e-10];
        values.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)]);
        values.extend((0..1000).map(|i| ((i * 7919) % 20011) as f32 * 0.0137 - 137.0));
        let mut narrowed = vec![f16::ZERO; values.len()];
        narrow(&values, &mut narrowed);
        for (x, h) in values.iter().zip(&narrowed) {
            let want = f16::from_f32(*x);
            assert!(h.to_bits() == want.to_bits() || (h.is_nan() && want.is_nan()), "{x}: {h} vs {want}");
        }
        let mut widened = vec![0f32; narrowed.len()];
        widen(&narrowed, &mut widened);
        for (h, x) in narrowed.iter().zip(&widened) {
            assert!(x.to_bits() == h.to_f32().to_bits() || (x.is_nan() && h.is_nan()), "{h}: {x}");
        }
    }

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

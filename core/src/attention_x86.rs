//! Decode attention on x86 (AVX2, FMA, F16C) for one KV head: a few query rows against the head's
//! contiguous `[positions][dim]` keys and values (f32, f16 or int8), streamed in order. Each key is
//! loaded (and widened) once for up to four query rows; each value row once per query row, into
//! eight accumulators held in registers.

use std::arch::x86_64::*;

use tract_onnx::prelude::f16;

use crate::simd_x86::hsum;

/// Query rows that share one pass over the keys.
const GROUP: usize = 4;

/// Positions ahead of the one being read whose cache lines the kernels ask for: the KV cache is
/// read once per step, after the weights have streamed through every cache level, and a head's
/// positions are too few for the hardware prefetcher to ramp up on its own.
const AHEAD: usize = 16;

/// Asks for the cache lines of position `j` (`dim` values) of `x`, if it has one.
#[inline(always)]
unsafe fn prefetch_position<E>(x: &[E], j: usize, dim: usize) {
    let bytes = dim * std::mem::size_of::<E>();
    if (j + 1) * dim <= x.len() {
        let start = x.as_ptr().add(j * dim) as *const i8;
        for line in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(start.add(line));
        }
    }
}

/// A KV cache element the kernels load eight at a time as f32 (int8 codes unscaled: the caller
/// applies each position's scale).
pub(crate) trait Lanes: Copy {
    /// Eight values from `p` as f32.
    ///
    /// # Safety
    /// `p` must point to eight readable values, on a CPU with AVX and F16C.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Lanes for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Lanes for i8 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }
}

impl Lanes for f16 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// `scores[r * total + j] = q[r] · keys[j]` for `rows` query rows (`q` is `[rows][dim]`) and every
/// position `j < total` (masking is left to the softmax).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `dim` must be a multiple of 64 and the slices hold
/// `rows × dim`, `total × dim` and `rows × total` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn scores<E: Lanes>(q: &[f32], keys: &[E], rows: usize, dim: usize, scores: &mut [f32]) {
    let total = keys.len() / dim;
    debug_assert!(q.len() >= rows * dim && scores.len() >= rows * total && dim.is_multiple_of(8));
    for g in (0..rows).step_by(GROUP) {
        let (q, scores) = (&q[g * dim..], &mut scores[g * total..]);
        match (rows - g).min(GROUP) {
            1 => score_group::<E, 1>(q, keys, dim, scores),
            2 => score_group::<E, 2>(q, keys, dim, scores),
            3 => score_group::<E, 3>(q, keys, dim, scores),
            _ => score_group::<E, 4>(q, keys, dim, scores),
        }
    }
}

/// [`scores`] for the first `N` rows of `q`.
#[inline(always)]
unsafe fn score_group<E: Lanes, const N: usize>(q: &[f32], keys: &[E], dim: usize, scores: &mut [f32]) {
    let total = keys.len() / dim;
    let q = q.as_ptr();
    for j in 0..total {
        let key = keys.as_ptr().add(j * dim);
        prefetch_position(keys, j + AHEAD, dim);
        let mut acc = [_mm256_setzero_ps(); N];
        for c in (0..dim).step_by(8) {
            let k = E::load8(key.add(c));
            for (i, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i * dim + c)), k, *acc);
            }
        }
        for (i, acc) in acc.into_iter().enumerate() {
            *scores.get_unchecked_mut(i * total + j) = hsum(acc);
        }
    }
}

/// `out[r] = Σ_j probs[r * total + j] · values[j]` for `rows` rows (masked positions hold
/// probability 0).
///
/// # Safety
/// As [`scores`], with `dim` a multiple of 64, `probs` holding `rows × total` values and `out`
/// `rows × dim`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn mix<E: Lanes>(probs: &[f32], values: &[E], rows: usize, dim: usize, out: &mut [f32]) {
    let total = values.len() / dim;
    debug_assert!(probs.len() >= rows * total && out.len() >= rows * dim && dim.is_multiple_of(64));
    for r in 0..rows {
        let probs = probs.as_ptr().add(r * total);
        // 64 output values (eight registers) per pass over the values.
        for c0 in (0..dim).step_by(64) {
            let mut acc = [_mm256_setzero_ps(); 8];
            for j in 0..total {
                if r == 0 && c0 == 0 {
                    prefetch_position(values, j + AHEAD, dim);
                }
                let p = _mm256_broadcast_ss(&*probs.add(j));
                let value = values.as_ptr().add(j * dim + c0);
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(p, E::load8(value.add(8 * c)), *acc);
                }
            }
            for (c, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(r * dim + c0 + 8 * c), *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_and_mix_match_plain_sums_for_every_row_group_and_key_tail() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")) {
            return;
        }
        let dim = 64;
        let value = |i: usize| ((i * 7919 % 2003) as f32 - 1001.0) / 1001.0;
        for rows in 1..=7 {
            for total in [0, 1, 3, 4, 5, 9, 70] {
                let q: Vec<f32> = (0..rows * dim).map(|i| value(i + 17)).collect();
                let keys: Vec<f16> = (0..total * dim).map(|i| f16::from_f32(value(i + 5))).collect();
                let mut got = vec![f32::NAN; rows * total];
                unsafe { scores(&q, &keys, rows, dim, &mut got) };
                for r in 0..rows {
                    for j in 0..total {
                        let want: f64 = (0..dim).map(|c| q[r * dim + c] as f64 * keys[j * dim + c].to_f64()).sum();
                        let g = got[r * total + j] as f64;
                        assert!((g - want).abs() < 1e-4, "rows {rows} total {total} ({r}, {j}): {g} vs {want}");
                    }
                }
                let probs: Vec<f32> = (0..rows * total).map(|i| value(i + 3).abs()).collect();
                let mut out = vec![f32::NAN; rows * dim];
                unsafe { mix(&probs, &keys, rows, dim, &mut out) };
                for r in 0..rows {
                    for c in 0..dim {
                        let want: f64 =
                            (0..total).map(|j| probs[r * total + j] as f64 * keys[j * dim + c].to_f64()).sum();
                        let g = out[r * dim + c] as f64;
                        assert!((g - want).abs() < 1e-4, "rows {rows} total {total} ({r}, {c}): {g} vs {want}");
                    }
                }
            }
        }
    }
}

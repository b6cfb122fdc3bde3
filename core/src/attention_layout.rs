//! The sequence-major form of [`crate::attention::CachedAttention`]: it reads the q, k and v
//! projections as they come out of their products (`[1, seq, heads · dim]`), applies the rotary
//! embedding to q and k itself, and writes its output the same way, so the ten reshapes and
//! transposes and the two [`crate::rope::Rope`] ops each layer had around it leave the plan (at
//! one token per step those layouts are the same memory, and each op cost a dispatch).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use crate::filled::filled;
use crate::rope::rotate;

/// Sizes of one sequence-major call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Positions in this call.
    seq: usize,
    /// Query heads.
    q_heads: usize,
    /// Key and value heads.
    kv_heads: usize,
    /// Values per head.
    dim: usize,
}

impl Layout {
    /// The sizes of `q` `[1, seq, q_heads · dim]`, `k` `[1, seq, kv_heads · dim]` and `cos`
    /// `[1, 1, seq, dim]`, checked.
    pub(crate) fn of(q: &Tensor, k: &Tensor, cos: &Tensor, q_heads: usize) -> TractResult<Layout> {
        let (qs, ks, cs) = (q.shape(), k.shape(), cos.shape());
        ensure!(qs.len() == 3 && ks.len() == 3 && cs.len() == 4, "attention inputs {qs:?}, {ks:?}, {cs:?}");
        let (seq, dim) = (qs[1], cs[3]);
        ensure!(
            q_heads > 0 && dim > 0 && dim.is_multiple_of(2) && qs[2] == q_heads * dim && ks[1] == seq && cs[2] == seq
        );
        let kv_heads = ks[2] / dim;
        ensure!(
            kv_heads > 0 && ks[2].is_multiple_of(dim) && q_heads.is_multiple_of(kv_heads),
            "{q_heads} query heads, k {ks:?}"
        );
        Ok(Layout { seq, q_heads, kv_heads, dim })
    }

    /// Query heads per key head.
    fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    /// `x` `[1, seq, heads · dim]` as `[1, heads, seq, dim]`, each row rotated by `cos`, `sin`
    /// `[1, 1, seq, dim]` when given; with `group` > 1, as `[1, heads / group, group · seq, dim]`
    /// (query head `h · group + g` at rows `g · seq..`), the stacked layout the attention reads.
    fn head_major(&self, x: &[f32], heads: usize, rope: Option<(&[f32], &[f32])>) -> TractResult<Tensor> {
        let (seq, dim) = (self.seq, self.dim);
        let group = if heads == self.q_heads { self.group() } else { 1 };
        // `[heads, seq]` and `[heads / group, group · seq]` are the same order of rows.
        filled(&[1, heads / group, group * seq, dim], |out| {
            for (s, row) in x.chunks_exact(heads * dim).enumerate() {
                for (head, x) in row.chunks_exact(dim).enumerate() {
                    let o = &mut out[(head * seq + s) * dim..][..dim];
                    match rope {
                        Some((cos, sin)) => rotate(x, &cos[s * dim..][..dim], &sin[s * dim..][..dim], o),
                        None => o.copy_from_slice(x),
                    }
                }
            }
        })
    }

    /// The inputs of the head-major form (q, k, v, positions) from the sequence-major ones (q, k,
    /// v, positions, cos, sin).
    pub(crate) fn to_head_major(self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        let views = [0, 1, 2, 4, 5].map(|i| inputs[i].to_plain_array_view::<f32>());
        let [q, k, v, cos, sin] = views;
        let (q, k, v, cos, sin) = (q?, k?, v?, cos?, sin?);
        let slices = [&q, &k, &v, &cos, &sin].map(|view| view.as_slice());
        let [Some(q), Some(k), Some(v), Some(cos), Some(sin)] = slices else {
            bail!("attention inputs must be contiguous")
        };
        ensure!(v.len() == k.len() && cos.len() == self.seq * self.dim && sin.len() == cos.len());
        Ok(tvec![
            self.head_major(q, self.q_heads, Some((cos, sin)))?.into_tvalue(),
            self.head_major(k, self.kv_heads, Some((cos, sin)))?.into_tvalue(),
            self.head_major(v, self.kv_heads, None)?.into_tvalue(),
            inputs[3].clone(),
        ])
    }

    /// The head-major output `[1, kv_heads, group · seq, dim]` as `[1, seq, q_heads · dim]`.
    pub(crate) fn to_sequence_major(self, out: &Tensor) -> TractResult<Tensor> {
        let (seq, dim, heads) = (self.seq, self.dim, self.q_heads);
        let view = out.to_plain_array_view::<f32>()?;
        let x = view.as_slice().context("attention output must be contiguous")?;
        ensure!(x.len() == seq * heads * dim);
        filled(&[1, seq, heads * dim], |flat| {
            for (r, row) in x.chunks_exact(dim).enumerate() {
                // Row `r` is query head `r / seq` (`kv · group + g`) at position `r % seq`.
                let (head, s) = (r / seq, r % seq);
                flat[(s * heads + head) * dim..][..dim].copy_from_slice(row);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{CachedAttention, LayerCache};
    use crate::kv_cache::KvPrecision;
    use crate::rope::Rope;

    /// `x` `[1, seq, heads · dim]` as `[1, heads, seq, dim]`.
    fn transpose(x: &[f32], seq: usize, heads: usize, dim: usize) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for s in 0..seq {
            for h in 0..heads {
                out[(h * seq + s) * dim..][..dim].copy_from_slice(&x[(s * heads + h) * dim..][..dim]);
            }
        }
        out
    }

    #[test]
    fn sequence_major_attention_gives_the_bits_of_rope_and_the_head_major_form() {
        let (q_heads, kv_heads, dim) = (6, 2, 8);
        let value = |i: usize, seed: usize| (((i + seed) * 7919 % 2003) as f32 - 1001.0) / 1001.0;
        let t = |shape: &[usize], v: &[f32]| Tensor::from_shape(shape, v).unwrap().into_tvalue();
        let ctx = EvalContext::out_of_plan();
        for precision in [KvPrecision::F32, KvPrecision::F16] {
            let head_major = CachedAttention { scale_bits: 0.35f32.to_bits(), sequence_major: None };
            let sequence_major = CachedAttention { sequence_major: Some(q_heads), ..head_major.clone() };
            let mut states = [&head_major, &sequence_major].map(|op| op.state(&ctx).unwrap().unwrap());
            for state in &mut states {
                assert!(state.downcast_mut::<LayerCache>().unwrap().set_precision(precision));
            }
            // A prefill of 5 positions (GEMM path: 15 query rows per head), then two decode steps.
            let mut past = 0;
            for seq in [5usize, 1, 1] {
                let q: Vec<f32> = (0..seq * q_heads * dim).map(|i| value(i, past + 1)).collect();
                let k: Vec<f32> = (0..seq * kv_heads * dim).map(|i| value(i, past + 2)).collect();
                let v: Vec<f32> = (0..seq * kv_heads * dim).map(|i| value(i, past + 3)).collect();
                let cos: Vec<f32> = (0..seq * dim).map(|i| (i as f32 * 0.1 + past as f32).cos()).collect();
                let sin: Vec<f32> = (0..seq * dim).map(|i| (i as f32 * 0.1 + past as f32).sin()).collect();
                let positions = Tensor::from_shape(&[1, seq], &(past as i64..(past + seq) as i64).collect::<Vec<_>>())
                    .unwrap()
                    .into_tvalue();
                let (cos, sin) = (t(&[1, 1, seq, dim], &cos), t(&[1, 1, seq, dim], &sin));
                // The head-major form after the graph's own reshapes and Rope ops.
                let rope = |x: &[f32], heads: usize| {
                    let x = t(&[1, heads, seq, dim], &transpose(x, seq, heads, dim));
                    Rope.eval(&ctx, tvec![x, cos.clone(), sin.clone()]).unwrap().remove(0)
                };
                let q4 = rope(&q, q_heads).into_tensor().into_shape(&[1, kv_heads, q_heads / kv_heads * seq, dim]);
                let inputs = tvec![
                    q4.unwrap().into_tvalue(),
                    rope(&k, kv_heads),
                    t(&[1, kv_heads, seq, dim], &transpose(&v, seq, kv_heads, dim)),
                    positions.clone()
                ];
                let want = states[0].eval(&ctx, &head_major, inputs).unwrap().remove(0);
                let inputs = tvec![
                    t(&[1, seq, q_heads * dim], &q),
                    t(&[1, seq, kv_heads * dim], &k),
                    t(&[1, seq, kv_heads * dim], &v),
                    positions,
                    cos.clone(),
                    sin.clone()
                ];
                let got = states[1].eval(&ctx, &sequence_major, inputs).unwrap().remove(0);
                assert_eq!(got.shape(), [1, seq, q_heads * dim]);
                let want: Vec<f32> = want.to_plain_array_view::<f32>().unwrap().iter().copied().collect();
                let got: Vec<f32> = got.to_plain_array_view::<f32>().unwrap().iter().copied().collect();
                // The head-major output `[1, kv, group · seq, dim]` is `[1, q_heads, seq, dim]`.
                let want_flat = {
                    let mut out = vec![0f32; want.len()];
                    for h in 0..q_heads {
                        for s in 0..seq {
                            out[(s * q_heads + h) * dim..][..dim].copy_from_slice(&want[(h * seq + s) * dim..][..dim]);
                        }
                    }
                    out
                };
                assert_eq!(got, want_flat, "{precision:?} seq {seq} after {past}");
                past += seq;
            }
        }
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused() {
        let t = |shape: &[usize]| Tensor::zero::<f32>(shape).unwrap();
        assert!(Layout::of(&t(&[1, 2, 48]), &t(&[1, 2, 16]), &t(&[1, 1, 2, 8]), 6).is_ok());
        assert!(Layout::of(&t(&[1, 2, 48]), &t(&[1, 2, 16]), &t(&[1, 1, 2, 8]), 5).is_err());
        assert!(Layout::of(&t(&[1, 2, 48]), &t(&[1, 3, 16]), &t(&[1, 1, 2, 8]), 6).is_err());
        assert!(Layout::of(&t(&[1, 2, 48]), &t(&[1, 2, 16]), &t(&[1, 1, 2, 7]), 6).is_err());
        assert!(Layout::of(&t(&[2, 48]), &t(&[1, 2, 16]), &t(&[1, 1, 2, 8]), 6).is_err());
        assert!(Layout::of(&t(&[1, 2, 48]), &t(&[1, 2, 0]), &t(&[1, 1, 2, 8]), 6).is_err());
    }
}

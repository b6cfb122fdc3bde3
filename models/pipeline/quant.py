"""Block-wise 4-bit weight quantization in the layout of ONNX `MatMulNBits` / `GatherBlockQuantized`.

Format (symmetric, what tract imports as its native Q4_0 and onnxruntime runs as is): a weight
`W [N, K]` (PyTorch (out, in) layout) is split along K into blocks of 32; each block has one
scale `s` and 32 codes `q` in 0..15 with `w ≈ (q - 8) * s`. Codes are packed two per byte, the
even element in the low nibble. Scales are rounded to float16 values (stored as float32), since
tract keeps them as f16: both runtimes then compute with identical weights.
"""
import numpy as np

BLOCK = 32

# Candidate divisors for a block's scale: s = m / t with m the block's value of largest magnitude
# (sign kept). t = -8 is llama.cpp's Q4_0 rule (m maps to code 0 exactly); the others trade
# clipping of m for finer steps. Per block the candidate with the least squared error wins.
_DIVISORS = np.array([-8.0, -7.5, -7.0, -6.5, -6.0, 7.0, 7.5, -8.5, -9.0], np.float32)


def _quantize_blocks(blocks: np.ndarray):
    """blocks [B, 32] f32 -> (codes [B, 32] uint8, scales [B] f32, f16-exact)."""
    idx = np.argmax(np.abs(blocks), axis=1)
    m = blocks[np.arange(len(blocks)), idx]
    best_err = np.full(len(blocks), np.inf, np.float32)
    best_codes = np.zeros(blocks.shape, np.uint8)
    best_scale = np.zeros(len(blocks), np.float32)
    for t in _DIVISORS:
        s = (m / t).astype(np.float16).astype(np.float32)
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s != 0)
        q = np.clip(np.rint(blocks * inv[:, None]) + 8, 0, 15)
        err = np.sum((blocks - (q - 8) * s[:, None]) ** 2, axis=1)
        better = err < best_err
        best_err[better] = err[better]
        best_codes[better] = q[better].astype(np.uint8)
        best_scale[better] = s[better]
    return best_codes, best_scale


def quantize_q4(w: np.ndarray, rows_per_chunk: int = 4096):
    """W [N, K] f32 (K a multiple of 32) -> (packed uint8 [N, K/32, 16], scales f32 [N, K/32])."""
    n, k = w.shape
    assert k % BLOCK == 0, f"K={k} is not a multiple of {BLOCK}"
    packed = np.empty((n, k // BLOCK, BLOCK // 2), np.uint8)
    scales = np.empty((n, k // BLOCK), np.float32)
    for r in range(0, n, rows_per_chunk):
        rows = np.asarray(w[r:r + rows_per_chunk], np.float32)
        codes, s = _quantize_blocks(rows.reshape(-1, BLOCK))
        codes = codes.reshape(len(rows), k // BLOCK, BLOCK)
        packed[r:r + len(rows)] = codes[:, :, 0::2] | (codes[:, :, 1::2] << 4)
        scales[r:r + len(rows)] = s.reshape(len(rows), k // BLOCK)
    return packed, scales


def quantize_q4_1(w: np.ndarray, rows_per_chunk: int = 4096):
    """W [N, K] f32 -> asymmetric 4-bit blocks (codes uint8 [N, K], d, m f32 [N, K/32]) with
    weight ≈ d * code + m, d and m f16-exact: per block the least-squares best of a few ranges
    shrunk from [min, max] (llama.cpp's Q4_1 uses [min, max] alone)."""
    n, k = w.shape
    codes = np.empty((n, k), np.uint8)
    ds = np.empty((n, k // BLOCK), np.float32)
    ms = np.empty((n, k // BLOCK), np.float32)
    for r in range(0, n, rows_per_chunk):
        blocks = np.asarray(w[r:r + rows_per_chunk], np.float32).reshape(-1, BLOCK)
        lo, hi = blocks.min(axis=1), blocks.max(axis=1)
        best = (np.full(len(blocks), np.inf, np.float32), None, None, None)
        err_b, codes_b, d_b, m_b = best
        for shrink_lo in (0.0, 0.03, 0.06):
            for shrink_hi in (0.0, 0.03, 0.06):
                span = hi - lo
                m = (lo + shrink_lo * span).astype(np.float16).astype(np.float32)
                d = (((hi - shrink_hi * span) - m) / 15).astype(np.float16).astype(np.float32)
                inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
                q = np.clip(np.rint((blocks - m[:, None]) * inv[:, None]), 0, 15)
                err = np.sum((blocks - (q * d[:, None] + m[:, None])) ** 2, axis=1)
                if codes_b is None:
                    err_b, codes_b, d_b, m_b = err, q.astype(np.uint8), d, m
                    continue
                better = err < err_b
                err_b = np.where(better, err, err_b)
                codes_b[better] = q[better].astype(np.uint8)
                d_b, m_b = np.where(better, d, d_b), np.where(better, m, m_b)
        rows = min(rows_per_chunk, n - r)
        codes[r:r + rows] = codes_b.reshape(rows, k)
        ds[r:r + rows] = d_b.reshape(rows, -1)
        ms[r:r + rows] = m_b.reshape(rows, -1)
    return codes, ds, ms


def from_q4_1(codes: np.ndarray, d: np.ndarray, m: np.ndarray):
    """Exact Q4_1 blocks (weight = d * code + m) in the symmetric format plus a per-block offset:
    d * code + m == (code - 8) * d + (m + 8 d). Returns (packed, scales, offsets) with offsets
    float16 [N, K/32] (the only rounding: |m + 8 d| to f16, relative 2^-11)."""
    n, k = codes.shape
    c = codes.reshape(n, k // BLOCK, BLOCK)
    packed = (c[:, :, 0::2] | (c[:, :, 1::2] << 4)).astype(np.uint8)
    return packed, d.astype(np.float32), (m + 8 * d).astype(np.float16)

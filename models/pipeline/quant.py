"""Block-wise weight quantization in the layouts of ONNX `MatMulNBits` (blocks of 32 along K).

4-bit: codes 0..15, stored as symmetric codes `(code - 8) * d` plus a per-block offset that
carries an asymmetric block exactly (`from_q4_1`); two codes per byte, the even element in the
low nibble. 8-bit: symmetric int8 codes times a per-block scale (`quantize_q8`), stored as
uint8 `code + 128`. Scales are f16-exact values (as llama.cpp stores them): float32 here, float16
in the file (`graph.py`).
"""
import numpy as np

BLOCK = 32


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
    packed = pack_nibbles(codes).reshape(n, k // BLOCK, BLOCK // 2)
    return packed, d.astype(np.float32), (m + 8 * d).astype(np.float16)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """4-bit codes [N, K] (0..15) -> [N, K/2] bytes, element 2i in the low nibble of byte i (the
    layout of `MatMulNBits` and `GatherBlockQuantized`)."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def quantize_q8(w: np.ndarray):
    """W [N, K] f32 -> (codes int8 [N, K], scales f32 [N, K/32]) with weight ≈ code * d, per block
    d = max|w| / 127 (f16-exact, as llama.cpp's Q8_0)."""
    n, k = w.shape
    assert k % BLOCK == 0, f"K={k} is not a multiple of {BLOCK}"
    blocks = np.asarray(w, np.float32).reshape(n, k // BLOCK, BLOCK)
    d = (np.abs(blocks).max(axis=2) / 127).astype(np.float16).astype(np.float32)
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    codes = np.clip(np.rint(blocks * inv[:, :, None]), -127, 127).astype(np.int8)
    return codes.reshape(n, k), d

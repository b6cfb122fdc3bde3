"""The tied embedding / LM head at mixed precision: the first `rows_8bit` token rows (the most
frequent: byte-level BPE numbers tokens in merge order) keep the GGUF's own 8-bit blocks, the rest
become a low-rank part (`low_rank`, optional) plus 4-bit symmetric blocks (`(code - 8) * d`, ONNX
`MatMulNBits` without zero points).

The 4-bit rows are rounded by GPTQ (Frantar et al., 2022) against the Gram matrix `X^T X` of the
hidden states that feed the head on calibration text (models/head_gram.py, committed so converted
files are byte-reproducible): each column's rounding error is spread over the columns not yet
rounded, along the inverse Gram, which minimises the error of the logits rather than of the
weights. Measured on the default model (onnxruntime, models/eval/heldout.txt, against the all-8-bit
table): all rows 4-bit to nearest +7.3% perplexity (the head's share; 4-bit token lookups alone
+0.02%); 11 550 rows 8-bit, the rest to nearest, +1.4%; 15 360 rows 8-bit, the rest GPTQ, +0.7%;
13 312 rows 8-bit, the rest rank 8 plus GPTQ, +0.3% (models/README.md).
"""
from dataclasses import dataclass

import numpy as np

from .probe import run_windows
from .quant import BLOCK

# Candidate scales per block: d = w_max / -f for the block's largest-magnitude weight w_max
# (llama.cpp's Q4_0 is f = 8); the least-squares best is kept.
_SCALE_DIVISORS = (8.0, 7.5, 7.0, 6.5, -7.0, -6.5)


@dataclass
class SplitHead:
    """Rows `[0, rows_8bit)` 8-bit (`codes8` int8, `scales8`), the rest 4-bit (`codes4` 0..15,
    weight `(code - 8) * scales4`); scales are f16-exact f32 `[rows, K/32]`. With a low-rank part
    (`low_a` [rest, r], `low_b` [r, K], f16-exact f32), a 4-bit row is `low_a @ low_b` plus its
    codes' values."""
    rows_8bit: int
    codes8: np.ndarray
    scales8: np.ndarray
    codes4: np.ndarray
    scales4: np.ndarray
    low_a: np.ndarray | None = None
    low_b: np.ndarray | None = None


def _block_scales(g: np.ndarray) -> np.ndarray:
    """Per row of `g` [N, 32] (float64), the f16-exact scale with the least squared error."""
    peak = g[np.arange(len(g)), np.argmax(np.abs(g), axis=1)]
    best_err, best = np.full(len(g), np.inf), np.zeros(len(g))
    for f in _SCALE_DIVISORS:
        d = (peak / -f).astype(np.float16).astype(np.float64)
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
        err = np.sum((g - np.clip(np.rint(g * inv[:, None]), -8, 7) * d[:, None]) ** 2, axis=1)
        better = err < best_err
        best_err, best = np.where(better, err, best_err), np.where(better, d, best)
    return best


def _damped(gram: np.ndarray, damp: float) -> np.ndarray:
    """`gram` (float64) normalised to a mean diagonal of 1, plus `damp` on the diagonal."""
    h = np.array(gram, np.float64)
    return h / np.mean(np.diag(h)) + damp * np.eye(len(h))


def gptq_q4_0(w: np.ndarray, gram: np.ndarray, damp: float, group: int = 128):
    """W [N, K] -> (codes uint8 [N, K] 0..15, scales f32 [N, K/32]) minimising the error of
    `W x` for inputs with Gram matrix `gram` [K, K] (normalised to a mean diagonal of 1, plus
    `damp` on the diagonal). Float64 throughout: deterministic up to the last bits of LAPACK."""
    n, k = w.shape
    w = np.array(w, np.float64)
    hinv = np.linalg.cholesky(np.linalg.inv(_damped(gram, damp))).T  # upper triangular
    codes = np.empty((n, k), np.uint8)
    scales = np.empty((n, k // BLOCK), np.float64)
    for i1 in range(0, k, group):
        i2 = min(i1 + group, k)
        part, errs, hp = w[:, i1:i2].copy(), np.zeros((n, i2 - i1)), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % BLOCK == 0:
                d = _block_scales(part[:, i:i + BLOCK])
                inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
                scales[:, col // BLOCK] = d
            q = np.clip(np.rint(part[:, i] * inv), -8, 7)
            codes[:, col] = (q + 8).astype(np.uint8)
            err = (part[:, i] - q * d) / hp[i, i]
            part[:, i:] -= np.outer(err, hp[i, i:])
            errs[:, i] = err
        w[:, i2:] -= errs @ hinv[i1:i2, i2:]
    return codes, scales.astype(np.float32)


def low_rank(w: np.ndarray, gram: np.ndarray, damp: float, rank: int):
    """The rank-`rank` `A @ B` (A [N, rank], B [rank, K], both f16-exact, float64) closest to
    W [N, K] in the error of `W x` for inputs with Gram matrix `gram` (normalised as in
    `gptq_q4_0`): the truncated SVD of `W L`, `L Lᵀ` the Gram matrix, mapped back by `L⁻¹`. Each
    singular vector's sign is fixed (B's largest-magnitude entry positive) so the bytes are
    reproducible."""
    chol = np.linalg.cholesky(_damped(gram, damp))
    u, s, vt = np.linalg.svd(np.asarray(w, np.float64) @ chol, full_matrices=False)
    a, b = u[:, :rank] * s[:rank], np.linalg.solve(chol.T, vt[:rank].T).T  # b = vt L⁻¹
    sign = np.sign(b[np.arange(rank), np.argmax(np.abs(b), axis=1)])
    a, b = a * sign, b * sign[:, None]
    return a.astype(np.float16).astype(np.float64), b.astype(np.float16).astype(np.float64)


def split_head(codes8: np.ndarray, scales8: np.ndarray, rows_8bit: int, gram, damp: float,
               rank: int = 0) -> SplitHead:
    """The 8-bit table (`codes8` int8 [V, K], `scales8` [V, K/32]) with rows from `rows_8bit` on
    re-rounded to 4 bits from their 8-bit values; `gram` None rounds to nearest (identity). With
    `rank`, those rows are first given a low-rank part (`low_rank`) and only the residual is
    rounded: a few directions every row shares set the 4-bit blocks' ranges, and taken out the
    residual quantizes far better (measured on the default model, in the same bytes: KL from the
    8-bit head over Debian's GPL-3 text 23.7 → 12.4 ×10⁻³ at rank 8, models/README.md)."""
    v, k = codes8.shape
    assert 0 < rows_8bit < v, rows_8bit
    rest = (codes8[rows_8bit:].astype(np.float32).reshape(v - rows_8bit, -1, BLOCK)
            * scales8[rows_8bit:, :, None]).reshape(v - rows_8bit, k).astype(np.float64)
    gram = np.eye(k) if gram is None else gram
    low_a = low_b = None
    if rank:
        low_a, low_b = low_rank(rest, gram, damp, rank)
        rest = rest - low_a @ low_b
        low_a, low_b = low_a.astype(np.float32), low_b.astype(np.float32)
    codes4, scales4 = gptq_q4_0(rest, gram, damp)
    return SplitHead(rows_8bit, codes8[:rows_8bit], scales8[:rows_8bit], codes4, scales4, low_a, low_b)


def head_inputs_gram(model, hp, windows: list, threads: int = 2) -> np.ndarray:
    """Run `model` (a graph whose `logits` node is the LM head) with onnxruntime on each token
    window (fresh cache, positions from 0); returns `X^T X` [K, K] float64 of the head's inputs."""
    hidden = next(n.input[0] for n in model.graph.node if n.output[0] == "logits")
    gram = np.zeros((hp.hidden_size, hp.hidden_size))
    for (x,) in run_windows(model, hp, [hidden], windows, threads):
        x = x.reshape(-1, hp.hidden_size).astype(np.float64)
        gram += x.T @ x
    return gram

"""The sliding-window perplexity rule of `pocketlm perplexity` (core/src/perplexity.rs), for peers.

Each window holds at most `window` tokens and starts `stride` after the previous one; every token
but the first is scored once, in the first window that has it as a target. `models/oracle.py`
(onnxruntime) and `bench/llama_perplexity.py` (llama.cpp) both score through `mean_nll`.
"""
import math

import numpy as np


def mean_nll(ids, window, stride, logits_of):
    """Mean negative log-likelihood (nats) of `ids` and the number of tokens scored.

    `logits_of(begin, end)` evaluates `ids[begin:end]` in a fresh context and returns its logits,
    one row per position.
    """
    nll, scored, begin, done = 0.0, 0, 0, 1
    while True:
        end = min(begin + window, len(ids))
        logits = np.asarray(logits_of(begin, end), dtype=np.float64)
        for target in range(max(done, begin + 1), end):
            row = logits[target - begin - 1]
            top = row.max()
            nll -= row[ids[target]] - top - math.log(np.exp(row - top).sum())
            scored += 1
        done = end
        if end == len(ids):
            break
        begin += stride
    return nll / scored, scored

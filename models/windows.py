"""The sliding-window perplexity rule of `pocketlm perplexity` (core/src/perplexity.rs), for peers.

Each window holds at most `window` tokens and starts `stride` after the previous one; every token
but the first is scored once, in the first window that has it as a target. `models/oracle.py`
(onnxruntime) and `bench/llama_perplexity.py` (llama.cpp) both score through `mean_nll`.
"""
import math

import numpy as np


def token_nll(ids, window, stride, logits_of):
    """Negative log-likelihood (nats) of each scored token, in text order (`ids[1:]`).

    `logits_of(begin, end)` evaluates `ids[begin:end]` in a fresh context and returns its logits,
    one row per position.
    """
    out, begin, done = [], 0, 1
    while True:
        end = min(begin + window, len(ids))
        logits = np.asarray(logits_of(begin, end), dtype=np.float64)
        for target in range(max(done, begin + 1), end):
            row = logits[target - begin - 1]
            top = row.max()
            out.append(-(row[ids[target]] - top - math.log(np.exp(row - top).sum())))
        done = end
        if end == len(ids):
            break
        begin += stride
    return out


def mean_nll(ids, window, stride, logits_of):
    """Mean negative log-likelihood (nats) of `ids` and the number of tokens scored (`token_nll`)."""
    nll = token_nll(ids, window, stride, logits_of)
    return sum(nll) / len(nll), len(nll)


def paired(ours, theirs):
    """Two runtimes' per-token NLLs on the same tokens: the mean difference `ours - theirs` (nats),
    its standard error, and their perplexity ratio with a 95% interval (normal approximation).
    Per-token differences vary far less than the NLLs themselves, so this resolves much smaller
    gaps than comparing two perplexities with their own intervals."""
    d = np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)
    assert len(d) > 1, "at least two tokens"
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    return {"mean_nll_diff": mean, "std_error": se, "perplexity_ratio": math.exp(mean),
            "ratio_95": [math.exp(mean - 1.96 * se), math.exp(mean + 1.96 * se)]}

"""Tests of the sliding-window scoring rule and the paired comparison (models/windows.py).

    python -m unittest discover -s models/tests
"""
import math
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from windows import mean_nll, paired, token_nll  # noqa: E402

VOCAB = 7


def logits_for(ids):
    """A fake model: at position p of a window starting at `begin`, the logit of token t is
    `t * (p + 1) / 10 + begin / 100` (so a token's score depends on its window and position)."""
    def logits_of(begin, end):
        return [[t * (p + 1) / 10 + begin / 100 for t in range(VOCAB)] for p in range(end - begin)]
    return logits_of


def log_softmax(row, t):
    top = max(row)
    return row[t] - top - math.log(sum(math.exp(v - top) for v in row))


class TokenNll(unittest.TestCase):
    def test_every_token_is_scored_once_in_its_first_window(self):
        ids = [i % VOCAB for i in range(1, 23)]
        window, stride = 8, 3
        got = token_nll(ids, window, stride, logits_for(ids))
        self.assertEqual(len(got), len(ids) - 1)
        # Target t is scored in the first window [b, b + 8) with b < t < b + 8, b a multiple of 3.
        logits_of = logits_for(ids)
        for t in range(1, len(ids)):
            b = next(b for b in range(0, t, stride) if t < b + window)
            want = -log_softmax(logits_of(b, b + window)[t - b - 1], ids[t])
            self.assertAlmostEqual(got[t - 1], want, places=9, msg=f"token {t}")
        nll, scored = mean_nll(ids, window, stride, logits_of)
        self.assertEqual(scored, len(ids) - 1)
        self.assertAlmostEqual(nll, sum(got) / len(got), places=12)


class Paired(unittest.TestCase):
    def test_identical_runs_have_ratio_one(self):
        r = paired([1.0, 2.0, 3.5], [1.0, 2.0, 3.5])
        self.assertEqual((r["mean_nll_diff"], r["std_error"], r["perplexity_ratio"]), (0.0, 0.0, 1.0))

    def test_difference_and_interval(self):
        rng = np.random.default_rng(1)
        theirs = rng.gamma(2.0, 1.5, 5000)  # NLLs spread far more than their differences
        d = 0.01 + rng.normal(0, 0.1, 5000)
        r = paired(theirs + d, theirs)
        self.assertAlmostEqual(r["mean_nll_diff"], d.mean(), places=12)
        self.assertAlmostEqual(r["std_error"], d.std(ddof=1) / math.sqrt(5000), places=12)
        self.assertAlmostEqual(r["perplexity_ratio"], math.exp(d.mean()), places=12)
        lo, hi = r["ratio_95"]
        self.assertLess(lo, math.exp(0.01))
        self.assertGreater(hi, math.exp(0.01))
        self.assertAlmostEqual(math.log(hi) - math.log(lo), 2 * 1.96 * r["std_error"], places=12)


if __name__ == "__main__":
    unittest.main()

"""Tests of the split LM head (models/pipeline/head.py) and its graph (pipeline/graph.py), run by
onnxruntime.

    python -m unittest discover -s models/tests
"""
import os
import sys
import unittest

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import graph  # noqa: E402
from pipeline.head import gptq_q4_0, low_rank, split_head  # noqa: E402
from pipeline.quant import quantize_q8  # noqa: E402


def dequantize4(codes, scales):
    n, k = codes.shape
    return ((codes.astype(np.float64) - 8).reshape(n, -1, 32) * scales[..., None]).reshape(n, k)


def output_error(w, w_hat, gram):
    """Mean over inputs with Gram matrix `gram` of ||(w - w_hat) x||^2."""
    e = (w - w_hat).astype(np.float64)
    return float(np.einsum("ij,jk,ik->", e, gram, e))


class GptqTest(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(7)
        self.w = rng.normal(0, 0.05, (64, 128)).astype(np.float32)
        mix = rng.normal(0, 1, (128, 128)) * np.linspace(0.1, 3, 128)
        x = rng.normal(0, 1, (2000, 128)) @ mix  # correlated, unevenly scaled inputs
        self.gram = x.T @ x

    def test_identity_gram_rounds_each_block_to_nearest(self):
        codes, scales = gptq_q4_0(self.w, np.eye(128), 0.0)
        self.assertTrue(((codes >= 0) & (codes <= 15)).all())
        self.assertTrue(np.array_equal(scales.astype(np.float16).astype(np.float32), scales), "f16-exact scales")
        inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
        nearest = np.clip(np.rint(self.w.reshape(64, -1, 32) * inv[..., None]), -8, 7).reshape(64, 128) + 8
        self.assertTrue(np.array_equal(codes, nearest))

    def test_gptq_lowers_the_output_error_for_its_inputs(self):
        rtn = dequantize4(*gptq_q4_0(self.w, np.eye(128), 0.0))
        gptq = dequantize4(*gptq_q4_0(self.w, self.gram, 0.01))
        self.assertLess(output_error(self.w, gptq, self.gram), 0.8 * output_error(self.w, rtn, self.gram))

    def test_deterministic(self):
        a = gptq_q4_0(self.w, self.gram, 0.01)
        b = gptq_q4_0(self.w, self.gram, 0.01)
        self.assertTrue(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))


class LowRankTest(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(11)
        # Rows sharing a few large directions (as the head's rare rows do), plus noise.
        self.w = rng.normal(0, 1, (300, 3)) @ rng.normal(0, 1, (3, 64)) + rng.normal(0, 0.05, (300, 64))
        mix = rng.normal(0, 1, (64, 64)) * np.linspace(0.2, 2, 64)
        x = rng.normal(0, 1, (1000, 64)) @ mix
        self.gram = x.T @ x

    def test_factors_are_f16_with_fixed_signs(self):
        a, b = low_rank(self.w, self.gram, 0.01, 3)
        self.assertEqual((a.shape, b.shape), ((300, 3), (3, 64)))
        for f in (a, b):
            self.assertTrue(np.array_equal(f.astype(np.float16).astype(np.float64), f))
        self.assertTrue((b[np.arange(3), np.argmax(np.abs(b), axis=1)] > 0).all())
        a2, b2 = low_rank(self.w, self.gram, 0.01, 3)
        self.assertTrue(np.array_equal(a, a2) and np.array_equal(b, b2))

    def test_gram_weighting_lowers_the_output_error(self):
        a, b = low_rank(self.w, self.gram, 0.01, 2)
        u, s, vt = np.linalg.svd(self.w, full_matrices=False)
        plain = (u[:, :2] * s[:2]) @ vt[:2]
        self.assertLess(output_error(self.w, a @ b, self.gram), output_error(self.w, plain, self.gram))

    def test_split_rows_with_a_low_rank_part_quantize_better(self):
        codes8, scales8 = quantize_q8(self.w.astype(np.float32))
        exact = (codes8.reshape(300, -1, 32) * scales8[..., None]).reshape(300, 64).astype(np.float64)
        errors = []
        for rank in (0, 3):
            head = split_head(codes8, scales8, 100, self.gram, 0.01, rank)
            rows = dequantize4(head.codes4, head.scales4)
            if rank:
                rows = rows + head.low_a.astype(np.float64) @ head.low_b.astype(np.float64)
            self.assertTrue(np.array_equal(head.codes8, codes8[:100]), "8-bit rows are kept exactly")
            errors.append(output_error(exact[100:], rows, self.gram))
        self.assertLess(errors[1], 0.5 * errors[0])


class SplitGraphTest(unittest.TestCase):
    """The split lookup and head in onnxruntime agree with the split table's values."""

    def test_lookup_and_logits_read_each_row_at_its_precision(self):
        self.check(rank=0)

    def test_with_a_low_rank_part(self):
        self.check(rank=4)

    def check(self, rank):
        rng = np.random.default_rng(3)
        vocab, k, split = 96, 64, 40
        codes8, scales8 = quantize_q8(rng.normal(0, 1, (vocab, k)).astype(np.float32))
        head = split_head(codes8, scales8, split, None, 0.0, rank)
        rare = dequantize4(head.codes4, head.scales4)
        if rank:
            rare = rare + head.low_a.astype(np.float64) @ head.low_b.astype(np.float64)
        table = np.concatenate([(head.codes8.reshape(split, -1, 32) * head.scales8[..., None]).reshape(split, k),
                                rare]).astype(np.float32)
        b = graph._Builder("q4")
        rows = graph._embedding_split(b, head)
        graph._lm_head_split(b, rows, head)
        g = helper.make_graph(b.nodes, "split", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "s"])],
                              [helper.make_tensor_value_info(rows, TensorProto.FLOAT, [1, "s", k]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "s", vocab])], b.inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph.OPSET),
                                                    helper.make_opsetid(graph.MS_DOMAIN, 1)])
        model.ir_version = 8
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        ids = np.array([[0, split - 1, split, vocab - 1, 7, 60]], np.int64)
        got_rows, logits = sess.run(None, {"input_ids": ids})
        # Exact rows; with a low-rank part, its f32 product rounds.
        np.testing.assert_allclose(got_rows[0], table[ids[0]], rtol=1e-6 if rank else 0, atol=1e-6 if rank else 0)
        # accuracy_level 4 quantizes the activations to int8: close, not exact.
        want = table[ids[0]].astype(np.float64) @ table.T.astype(np.float64)
        np.testing.assert_allclose(logits[0], want, rtol=0.02, atol=0.02 * np.abs(want).max())


if __name__ == "__main__":
    unittest.main()

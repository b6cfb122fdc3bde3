"""Tests of FFN and attention-head pruning (models/pipeline/prune.py) on small random models, run by onnxruntime.

    python -m unittest discover -s models/tests
"""
import os
import sys
import unittest
from dataclasses import replace

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.graph import build  # noqa: E402
from pipeline.probe import windows  # noqa: E402
from pipeline.prune import apply, apply_heads, collect, collect_heads, head_selection, select, selection  # noqa: E402
from tiny import TINY_Q4, RandomWeights  # noqa: E402

HP = replace(TINY_Q4, vocab_size=512)
DEAD = [np.arange(5, 101, 3), np.arange(0, 32)]  # 32 channels per layer whose gate row is zero


class DeadChannelWeights(RandomWeights):
    """Random weights where the DEAD channels of each layer never activate (silu(0) * up = 0);
    the embedding is drawn once, so two builds share all weights."""

    def embedding(self):
        if not hasattr(self, "_embedding"):
            self._embedding = super().embedding()
        return self._embedding

    def _draw_layer(self):
        w = super()._draw_layer()
        w["gate"][DEAD[len(self._layers)]] = 0.0
        return w


def logits(model, ids):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    empty = np.zeros((1, HP.num_kv_heads, 0, HP.head_dim), np.float32)
    feed = {f"past_key_values.{i}.{k}": empty for i in range(HP.num_layers) for k in ("key", "value")}
    feed.update(input_ids=np.array([ids], np.int64), position_ids=np.arange(len(ids), dtype=np.int64)[None, :])
    return sess.run(["logits"], feed)[0]


class PruneTest(unittest.TestCase):
    def setUp(self):
        self.weights = DeadChannelWeights(HP, seed=7)
        for i in range(HP.num_layers):
            self.weights.layer(i)  # draw in layer order, so DEAD[i] belongs to layer i
        self.ids = np.random.default_rng(1).integers(0, HP.vocab_size, 80).tolist()

    def test_select_keeps_highest_in_order_and_breaks_ties_by_index(self):
        score = np.array([0.5, 2.0, 0.5, 3.0, 0.5, 1.0])
        self.assertEqual(select(score, 3).tolist(), [1, 3, 5])
        self.assertEqual(select(score, 4).tolist(), [0, 1, 3, 5])

    def test_selection_rejects_sizes_that_break_4bit_blocks(self):
        rms = np.ones((2, 128))
        for keep in (0, 100, 160):
            with self.assertRaises(ValueError):
                selection(rms, keep)

    def test_activations_find_dead_channels_and_pruning_them_changes_nothing(self):
        full = build(HP, self.weights, quant="f32")
        rms = collect(full, HP, windows(self.ids, 32), threads=1)
        self.assertEqual(rms.shape, (HP.num_layers, HP.ffn_size))
        for layer, dead in enumerate(DEAD):
            self.assertTrue(np.all(rms[layer, dead] == 0))
            self.assertTrue(np.all(np.delete(rms[layer], dead) > 0))
        record = selection(rms, 96)
        self.assertEqual(record["pruned"], [d.tolist() for d in DEAD])
        small_hp, pruned = apply(HP, self.weights, record)
        self.assertEqual(small_hp.ffn_size, 96)
        small = build(small_hp, pruned, quant="f32")
        np.testing.assert_allclose(logits(small, self.ids), logits(full, self.ids), rtol=1e-4, atol=1e-4)

    def test_pruning_live_channels_changes_the_output(self):
        full = build(HP, self.weights, quant="f32")
        record = selection(np.tile(np.arange(HP.ffn_size, dtype=float), (HP.num_layers, 1)), 96)
        small = build(*apply(HP, self.weights, record), quant="f32")
        self.assertGreater(np.abs(logits(small, self.ids) - logits(full, self.ids)).max(), 1e-2)

    def test_4bit_gate_and_up_keep_the_source_blocks_exactly(self):
        record = selection(np.tile(np.arange(HP.ffn_size, dtype=float), (HP.num_layers, 1)), 64)
        _, pruned = apply(HP, self.weights, record)
        kept = np.arange(64, 128)
        for i in range(HP.num_layers):
            src, small = self.weights.layer_q4_1(i), pruned.layer_q4_1(i)
            for role in ("gate", "up"):
                for a, b in zip(src[role], small[role]):
                    np.testing.assert_array_equal(a[kept], b)
            self.assertNotIn("down", small)
            self.assertEqual(pruned.layer(i)["down"].shape, (HP.hidden_size, 64))

    def test_selection_for_another_shape_is_rejected(self):
        record = selection(np.ones((HP.num_layers + 1, HP.ffn_size)), 96)
        with self.assertRaises(ValueError):
            apply(HP, self.weights, record)


DEAD_HEADS = [[1, 2], [0, 3]]  # per layer, one query head of each K/V group (of 2) whose output is zero


class DeadHeadWeights(DeadChannelWeights):
    """Random weights where the DEAD_HEADS of each layer add nothing (zero output-projection
    columns)."""

    def _draw_layer(self):
        w = super()._draw_layer()
        d = HP.head_dim
        for h in DEAD_HEADS[len(self._layers)]:
            w["o"][:, h * d:(h + 1) * d] = 0.0
        return w


class HeadPruneTest(unittest.TestCase):
    def setUp(self):
        self.weights = DeadHeadWeights(HP, seed=11)
        for i in range(HP.num_layers):
            self.weights.layer(i)
        self.ids = np.random.default_rng(2).integers(0, HP.vocab_size, 80).tolist()

    def test_scores_find_dead_heads_and_pruning_them_changes_nothing(self):
        full = build(HP, self.weights, quant="f32")
        rms = collect_heads(full, HP, self.weights, windows(self.ids, 32), threads=1)
        self.assertEqual(rms.shape, (HP.num_layers, HP.num_heads))
        for layer, dead in enumerate(DEAD_HEADS):
            self.assertTrue(np.all(rms[layer, dead] == 0))
            self.assertTrue(np.all(np.delete(rms[layer], dead) > 0))
        record = head_selection(rms, HP.num_kv_heads, 1)
        self.assertEqual(record["pruned"], DEAD_HEADS)
        small_hp, pruned = apply_heads(HP, self.weights, record)
        self.assertEqual(small_hp.num_heads, HP.num_kv_heads)
        small = build(small_hp, pruned, quant="f32")
        np.testing.assert_allclose(logits(small, self.ids), logits(full, self.ids), rtol=1e-4, atol=1e-4)

    def test_every_group_keeps_the_same_number_of_heads(self):
        # The two best heads overall are both in group 0; each group still keeps one.
        rms = np.tile([3.0, 2.0, 1.0, 0.5], (HP.num_layers, 1))
        self.assertEqual(head_selection(rms, HP.num_kv_heads, 1)["pruned"], [[1, 3]] * HP.num_layers)
        with self.assertRaises(ValueError):
            head_selection(rms, HP.num_kv_heads, 3)

    def test_pruning_live_heads_changes_the_output_and_q_keeps_its_blocks(self):
        full = build(HP, self.weights, quant="f32")
        record = {"num_heads": HP.num_heads, "num_kv_heads": HP.num_kv_heads, "keep_per_group": 1,
                  "pruned": [[0, 2]] * HP.num_layers}
        small_hp, pruned = apply_heads(HP, self.weights, record)
        self.assertGreater(np.abs(logits(build(small_hp, pruned, quant="f32"), self.ids)
                                  - logits(full, self.ids)).max(), 1e-2)
        rows = np.r_[HP.head_dim:2 * HP.head_dim, 3 * HP.head_dim:4 * HP.head_dim]
        for i in range(HP.num_layers):
            for a, b in zip(self.weights.layer_q4_1(i)["q"], pruned.layer_q4_1(i)["q"]):
                np.testing.assert_array_equal(a[rows], b)
            self.assertNotIn("o", pruned.layer_q4_1(i))
            self.assertEqual(pruned.layer(i)["o"].shape, (HP.hidden_size, 2 * HP.head_dim))


if __name__ == "__main__":
    unittest.main()

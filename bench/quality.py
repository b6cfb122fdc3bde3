#!/usr/bin/env python3
"""Perplexity of pocketlm's weight formats against llama.cpp on the source GGUF, token by token.

    bash bench/quality.sh [--formats q4-head8,q4,q4-pruned] [--texts FILE,FILE]

For each text, every format is scored with `pocketlm perplexity --json` (sliding windows of 512,
stride 256) and llama.cpp once on the same token ids and windows (bench/llama_perplexity.py).
Prints a Markdown table: each format's perplexity, and its ratio to llama.cpp's with a 95%
interval from the per-token differences (models/windows.py `paired`). Texts: the committed
held-out story, and Debian's Apache-2.0, MPL-2.0 and GFDL-1.3 licence texts concatenated where
/usr/share/common-licenses has them (never used to choose anything in the model pipeline).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from llama_perplexity import llama_token_nll

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
from windows import paired  # noqa: E402  (models/ is not a package)

LICENCES = [Path("/usr/share/common-licenses") / n for n in ("Apache-2.0", "MPL-2.0", "GFDL-1.3")]


def texts(args, tmp):
    """(name, path) of each text to score."""
    if args.texts:
        return [(Path(p).name, p) for p in args.texts.split(",")]
    out = [("held-out story", str(ROOT / "models/eval/heldout.txt"))]
    if all(p.is_file() for p in LICENCES):
        path = os.path.join(tmp, "licences.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(p.read_text(encoding="utf-8") for p in LICENCES))
        out.append(("licence texts", path))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pocketlm", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--formats", default="q4-head8,q4,q4-pruned")
    ap.add_argument("--texts", help="comma-separated UTF-8 files instead of the default two")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    formats = args.formats.split(",")
    dirs = {f: subprocess.run([args.pocketlm, "fetch", "--weights", f], check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1] for f in formats}
    rows = {f: [] for f in formats}
    llama = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in texts(args, tmp):
            theirs = None
            for f in formats:
                out = subprocess.run([args.pocketlm, "perplexity", "--model", dirs[f], "--threads", str(args.threads),
                                      "--json", path], check=True, capture_output=True, text=True).stdout
                ours = json.loads(out.strip().splitlines()[-1])
                if theirs is None:  # every format shares the tokenizer, so the ids are the same
                    theirs = llama_token_nll(args.gguf, ours["token_ids"], ours["window"], ours["stride"], args.threads)
                    llama.append((name, math.exp(sum(theirs) / len(theirs)), len(theirs)))
                rows[f].append((ours["perplexity"], paired(ours["token_nll"], theirs)))
                print(f"scored {f} on {name}", file=sys.stderr, flush=True)
    head = " | ".join(f"{n} ({count} tokens; llama.cpp {ppl:.2f}) | ratio, 95% interval" for n, ppl, count in llama)
    print(f"| format | {head} |")
    print("|---" * (1 + 2 * len(llama)) + "|")
    for f in formats:
        cells = " | ".join(f"{ppl:.2f} | {p['perplexity_ratio']:.3f} [{p['ratio_95'][0]:.3f}, {p['ratio_95'][1]:.3f}]"
                           for ppl, p in rows[f])
        print(f"| {f} | {cells} |")


if __name__ == "__main__":
    main()

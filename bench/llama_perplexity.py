#!/usr/bin/env python3
"""llama.cpp's perplexity on the same token ids and sliding windows as `pocketlm perplexity`.

    pocketlm perplexity --json FILE > ours.json
    python bench/llama_perplexity.py --gguf FILE --ids-from ours.json

Reads the token ids, window and stride from pocketlm's JSON, evaluates each window in a fresh
llama.cpp context with logits for every position, and scores every token once by
models/windows.py (the rule of pocketlm's core/src/perplexity.rs). Prints one JSON line; its
`paired` field compares token by token with pocketlm's `token_nll` (ratio = pocketlm / llama.cpp,
with a 95% interval). bench/quality.py runs it for several formats and texts.
"""
import argparse
import json
import math
import sys
from pathlib import Path

from llama_cpp import Llama

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
from windows import paired, token_nll  # noqa: E402  (models/ is not a package)


def llama_token_nll(gguf, ids, window, stride, threads):
    """llama.cpp's negative log-likelihood of each scored token of `ids` (models/windows.py)."""
    llm = Llama(model_path=gguf, n_ctx=window, n_batch=window, n_threads=threads, n_threads_batch=threads,
                logits_all=True, verbose=False)

    def logits_of(begin, end):
        llm.reset()
        llm.eval(ids[begin:end])
        return llm.scores[: end - begin]

    return token_nll(ids, window, stride, logits_of)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ids-from", required=True, help="the JSON line of `pocketlm perplexity --json`")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with open(args.ids_from, encoding="utf-8") as f:
        ours = json.loads(f.read().strip().splitlines()[-1])
    theirs = llama_token_nll(args.gguf, ours["token_ids"], ours["window"], ours["stride"], args.threads)
    nll = sum(theirs) / len(theirs)
    print(json.dumps({"runtime": "llama.cpp", "gguf": args.gguf, "perplexity": math.exp(nll),
                      "mean_nll": nll, "scored_tokens": len(theirs), "window": ours["window"],
                      "stride": ours["stride"], "paired": paired(ours["token_nll"], theirs)}))


if __name__ == "__main__":
    main()

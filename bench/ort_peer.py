#!/usr/bin/env python3
"""onnxruntime on the same ONNX file and prompt as `pocketlm bench` (one run, one JSON line).

    python bench/ort_peer.py --model DIR --threads N --prompt-ids 1,2,3 --gen-tokens 128
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models"))

import numpy as np  # noqa: E402

import oracle  # noqa: E402
from peer import model_config, parse_args, time_greedy  # noqa: E402


def main():
    args, prompt = parse_args(__doc__)
    config = model_config(args.model)
    t = time.perf_counter()
    sess = oracle.session(args.model, args.threads)
    load_ms = (time.perf_counter() - t) * 1e3
    oracle.step(sess, prompt[:8], 0, oracle.empty_cache(config))  # warm-up, as pocketlm bench does
    state = {}

    def prefill(ids):
        logits, state["cache"] = oracle.step(sess, ids, 0, oracle.empty_cache(config))
        return int(np.argmax(logits))

    def step(token, pos):
        logits, state["cache"] = oracle.step(sess, [token], pos, state["cache"])
        return int(np.argmax(logits))

    time_greedy("onnxruntime", args.threads, load_ms, prompt, args.gen_tokens, prefill, step)


if __name__ == "__main__":
    main()

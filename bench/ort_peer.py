#!/usr/bin/env python3
"""onnxruntime on the same ONNX file and prompt as `pocketlm bench` (one run, one JSON line).

    python bench/ort_peer.py --model DIR --threads N --prompt-ids 1,2,3 --gen-tokens 128
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models"))

import numpy as np  # noqa: E402

import oracle  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--gen-tokens", type=int, default=128)
    args = ap.parse_args()
    with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    prompt = [int(x) for x in args.prompt_ids.split(",")]
    t = time.perf_counter()
    sess = oracle.session(args.model, args.threads)
    load_ms = (time.perf_counter() - t) * 1e3
    oracle.step(sess, prompt[:8], 0, oracle.empty_cache(config))  # warm-up, as pocketlm bench does
    t = time.perf_counter()
    logits, cache = oracle.step(sess, prompt, 0, oracle.empty_cache(config))
    token = int(np.argmax(logits))
    prefill_ms = (time.perf_counter() - t) * 1e3
    pos, generated = len(prompt), [token]
    t = time.perf_counter()
    for _ in range(args.gen_tokens - 1):
        logits, cache = oracle.step(sess, [token], pos, cache)
        pos += 1
        token = int(np.argmax(logits))
        generated.append(token)
    decode_ms = (time.perf_counter() - t) * 1e3
    steps = args.gen_tokens - 1
    print(json.dumps({
        "runtime": "onnxruntime", "threads": args.threads, "load_ms": load_ms,
        "prompt_tokens": len(prompt), "prefill_ms": prefill_ms, "prefill_tok_s": len(prompt) * 1e3 / prefill_ms,
        "ttft_ms": prefill_ms, "decode_tokens": steps, "decode_ms": decode_ms,
        "decode_tok_s": steps * 1e3 / decode_ms,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "generated_token_ids": generated,
    }))


if __name__ == "__main__":
    main()

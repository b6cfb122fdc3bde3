#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) on the original GGUF, same prompt ids as `pocketlm bench` (one run,
one JSON line). Needs a Python with `llama-cpp-python` (built from source by pip; see README).

    python bench/llama_peer.py --gguf FILE --threads N --prompt-ids 1,2,3 --gen-tokens 128
"""
import argparse
import json
import resource
import time

import numpy as np
from llama_cpp import Llama


def last_argmax(llm):
    """Greedy next token from the last evaluated position's logits (llama.cpp's own buffer: with
    logits_all off, llama-cpp-python no longer copies them into `scores`)."""
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--context", type=int, default=2048)
    args = ap.parse_args()
    prompt = [int(x) for x in args.prompt_ids.split(",")]
    t = time.perf_counter()
    llm = Llama(model_path=args.gguf, n_ctx=args.context, n_batch=512, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False, logits_all=False)
    load_ms = (time.perf_counter() - t) * 1e3
    llm.eval(prompt[:8])  # warm-up, as pocketlm bench does
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    token = last_argmax(llm)
    prefill_ms = (time.perf_counter() - t) * 1e3
    generated = [token]
    t = time.perf_counter()
    for _ in range(args.gen_tokens - 1):
        llm.eval([token])
        token = last_argmax(llm)
        generated.append(token)
    decode_ms = (time.perf_counter() - t) * 1e3
    steps = args.gen_tokens - 1
    print(json.dumps({
        "runtime": "llama.cpp", "threads": args.threads, "load_ms": load_ms,
        "prompt_tokens": len(prompt), "prefill_ms": prefill_ms, "prefill_tok_s": len(prompt) * 1e3 / prefill_ms,
        "ttft_ms": prefill_ms, "decode_tokens": steps, "decode_ms": decode_ms,
        "decode_tok_s": steps * 1e3 / decode_ms,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "generated_token_ids": generated,
    }))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) on the original GGUF, same prompt ids as `pocketlm bench` (one run,
one JSON line). Needs a Python with `llama-cpp-python` (built from source by pip; see README).

    python bench/llama_peer.py --gguf FILE --threads N --prompt-ids 1,2,3 --gen-tokens 128
"""
import time

import numpy as np
from llama_cpp import Llama

from peer import parse_args, time_greedy


def last_argmax(llm):
    """Greedy next token from the last evaluated position's logits (llama.cpp's own buffer: with
    logits_all off, llama-cpp-python no longer copies them into `scores`)."""
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def main():
    args, prompt = parse_args(__doc__, "--gguf", [("--context", {"type": int, "default": 2048})])
    t = time.perf_counter()
    llm = Llama(model_path=args.gguf, n_ctx=args.context, n_batch=512, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False, logits_all=False)
    load_ms = (time.perf_counter() - t) * 1e3
    llm.eval(prompt[:8])  # warm-up, as pocketlm bench does
    llm.reset()

    def prefill(ids):
        llm.eval(ids)
        return last_argmax(llm)

    def step(token, _pos):
        llm.eval([token])
        return last_argmax(llm)

    time_greedy("llama.cpp", args.threads, load_ms, prompt, args.gen_tokens, prefill, step)


if __name__ == "__main__":
    main()

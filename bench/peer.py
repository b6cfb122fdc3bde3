"""What the peer runners share: their command line, greedy prefill + decode timing and the JSON
line compare.py reads."""
import argparse
import json
import os
import resource
import time


def parse_args(doc, model_flag="--model", extra=()):
    """The common peer command line (`model_flag PATH --threads N --prompt-ids 1,2,3 --gen-tokens
    128`, plus `extra` (flag, kwargs) pairs); returns (args, prompt ids)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument(model_flag, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--gen-tokens", type=int, default=128)
    for flag, kwargs in extra:
        ap.add_argument(flag, **kwargs)
    args = ap.parse_args()
    return args, [int(x) for x in args.prompt_ids.split(",")]


def model_config(model_dir):
    """A pocketlm model directory's config.json."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def time_greedy(runtime, threads, load_ms, prompt, gen_tokens, prefill, step):
    """Times `prefill(prompt) -> first token` and `gen_tokens - 1` calls of
    `step(token, position) -> next token`, then prints one JSON line."""
    t = time.perf_counter()
    token = prefill(prompt)
    prefill_ms = (time.perf_counter() - t) * 1e3
    generated = [token]
    t = time.perf_counter()
    for pos in range(len(prompt), len(prompt) + gen_tokens - 1):
        token = step(token, pos)
        generated.append(token)
    decode_ms = (time.perf_counter() - t) * 1e3
    steps = gen_tokens - 1
    print(json.dumps({
        "runtime": runtime, "threads": threads, "load_ms": load_ms,
        "prompt_tokens": len(prompt), "prefill_ms": prefill_ms, "prefill_tok_s": len(prompt) * 1e3 / prefill_ms,
        "ttft_ms": prefill_ms, "decode_tokens": steps, "decode_ms": decode_ms,
        "decode_tok_s": steps * 1e3 / decode_ms,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "generated_token_ids": generated,
    }))

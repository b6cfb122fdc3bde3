"""What the peer runners share: greedy prefill + decode timing and the JSON line compare.py reads."""
import json
import resource
import time


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

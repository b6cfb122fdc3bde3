#!/usr/bin/env python3
"""Side-by-side benchmark: pocketlm vs onnxruntime and onnxruntime-genai (same ONNX file) vs
llama.cpp (original GGUF).

    python bench/compare.py [--model DIR] [--threads 1 2] [--prompt-tokens 256] [--gen-tokens 128]
                            [--llama-python PY --gguf FILE] [--genai-python PY]

For each thread count, runs `pocketlm bench --json`, bench/ort_peer.py and, when a Python with
them is given, bench/genai_peer.py (onnxruntime-genai) and bench/llama_peer.py, alternating, `--repeat` times (each run its own
process, so peak RSS is per runtime), all on the same prompt token ids, and prints the median of
each figure with pocketlm/peer ratios. Reports whether onnxruntime produced the same greedy tokens
(exactly, or the share of equal tokens for int8-activation models) and how many llama.cpp's match.
`bash bench/run.sh` sets everything up and runs this.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COLS = ["load_ms", "prefill_tok_s", "ttft_ms", "decode_tok_s", "peak_rss_mib"]


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def median(runs):
    """The first run with each figure in COLS replaced by its median over `runs`."""
    out = dict(runs[0])
    for c in COLS:
        out[c] = statistics.median(r[c] for r in runs)
    return out


def same_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "target"))
    ap.add_argument("--pocketlm", default=os.path.join(target, "release", "pocketlm"))
    ap.add_argument("--model", help="model dir (default: pocketlm fetch)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="runs per runtime and thread count (median)")
    ap.add_argument("--llama-python", help="a Python with llama-cpp-python (omit to skip llama.cpp)")
    ap.add_argument("--gguf", help="the GGUF llama.cpp runs (the model's source file)")
    ap.add_argument("--genai-python", help="a Python with onnxruntime-genai (omit to skip it)")
    args = ap.parse_args()
    model = args.model or subprocess.run([args.pocketlm, "fetch"], check=True, capture_output=True,
                                         text=True).stdout.strip().splitlines()[-1]
    with open(os.path.join(model, "config.json"), encoding="utf-8") as f:
        weights = json.load(f).get("weights", "f32")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    print(f"# {time.strftime('%Y-%m-%d')} | {cpu} | {os.cpu_count()} cores | model {model} ({weights})")
    if args.llama_python:
        print(f"# llama.cpp on {args.gguf}")
    print(f"# prompt {args.prompt_tokens} tokens, decode {args.gen_tokens} tokens, greedy, median of {args.repeat} runs\n")
    print(f"| runtime | threads | {' | '.join(COLS)} |")
    print("|" + "---|" * (len(COLS) + 2))
    summary = []
    for t in args.threads:
        runs = {"pocketlm": [], "onnxruntime": [], "onnxruntime-genai": [], "llama.cpp": []}
        for _ in range(args.repeat):
            ours = run_json([args.pocketlm, "bench", "--model", model, "--threads", str(t), "--prompt-tokens",
                             str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens), "--json"])
            runs["pocketlm"].append(ours)
            ids = ",".join(map(str, ours["prompt_token_ids"]))
            runs["onnxruntime"].append(run_json([sys.executable, os.path.join(HERE, "ort_peer.py"), "--model", model,
                                                 "--threads", str(t), "--prompt-ids", ids,
                                                 "--gen-tokens", str(args.gen_tokens)]))
            if args.genai_python:
                runs["onnxruntime-genai"].append(run_json([args.genai_python, os.path.join(HERE, "genai_peer.py"),
                                                           "--model", model, "--threads", str(t), "--prompt-ids", ids,
                                                           "--gen-tokens", str(args.gen_tokens)]))
            if args.llama_python:
                runs["llama.cpp"].append(run_json([args.llama_python, os.path.join(HERE, "llama_peer.py"), "--gguf",
                                                   args.gguf, "--threads", str(t), "--prompt-ids", ids,
                                                   "--gen-tokens", str(args.gen_tokens),
                                                   "--context", str(max(2048, args.prompt_tokens + args.gen_tokens))]))
        med = {name: median(r) for name, r in runs.items() if r}
        for name, r in med.items():
            print(f"| {name} | {t} | " + " | ".join(f"{r[c]:.1f}" for c in COLS) + " |")
        summary.append((t, med))
    print()
    for t, med in summary:
        ours = med["pocketlm"]
        for peer, r in med.items():
            if peer == "pocketlm":
                continue
            same = same_prefix(ours["generated_token_ids"], r["generated_token_ids"])
            print(f"pocketlm/{peer}, {t} thread(s): " + ", ".join(f"{c} x{ours[c] / r[c]:.2f}" for c in COLS)
                  + f"; greedy tokens equal for the first {same} of {len(ours['generated_token_ids'])}")
    for t, med in summary:
        ours = med["pocketlm"]
        if "weight_bytes_per_token" in ours:
            gbs = ours["weight_bytes_per_token"] * ours["decode_tok_s"] / 1e9
            print(f"pocketlm decode, {t} thread(s): {ours['weight_bytes_per_token'] / 1e6:.1f} MB of weights per token "
                  f"→ {gbs:.1f} GB/s; measured read bandwidth {ours['read_bandwidth_gb_s']:.1f} GB/s "
                  f"({100 * gbs / ours['read_bandwidth_gb_s']:.0f}% of it)")


if __name__ == "__main__":
    main()

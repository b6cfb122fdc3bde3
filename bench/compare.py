#!/usr/bin/env python3
"""Side-by-side benchmark: pocketlm vs onnxruntime, same ONNX file, same prompt, same threads.

    python bench/compare.py [--model DIR] [--threads 1 2] [--prompt-tokens 256] [--gen-tokens 128]

Runs `pocketlm bench --json` and bench/ort_peer.py for each thread count, alternating, `--repeat`
times (each run its own process, so peak RSS is per runtime), and prints the median of each figure
with pocketlm/onnxruntime ratios. Also reports whether both produced the same greedy tokens.
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


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def median(runs, cols):
    """The first run with each figure in `cols` replaced by its median over `runs`."""
    out = dict(runs[0])
    for c in cols:
        out[c] = statistics.median(r[c] for r in runs)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pocketlm", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "target")), "release", "pocketlm"))
    ap.add_argument("--model", help="model dir (default: pocketlm fetch)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="runs per runtime and thread count (median)")
    args = ap.parse_args()
    model = args.model or subprocess.run([args.pocketlm, "fetch"], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"# {time.strftime('%Y-%m-%d')} | {cpu} | {os.cpu_count()} cores | model {model}")
    print(f"# prompt {args.prompt_tokens} tokens, decode {args.gen_tokens} tokens, greedy, median of {args.repeat} runs\n")
    cols = ["load_ms", "prefill_tok_s", "ttft_ms", "decode_tok_s", "peak_rss_mib"]
    print(f"| runtime | threads | {' | '.join(cols)} |")
    print("|" + "---|" * (len(cols) + 2))
    ratios = []
    for t in args.threads:
        ours_runs, peer_runs = [], []
        for _ in range(args.repeat):
            ours_runs.append(run_json([args.pocketlm, "bench", "--model", model, "--threads", str(t), "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens), "--json"]))
            ids = ",".join(map(str, ours_runs[-1]["prompt_token_ids"]))
            peer_runs.append(run_json([sys.executable, os.path.join(HERE, "ort_peer.py"), "--model", model, "--threads", str(t), "--prompt-ids", ids, "--gen-tokens", str(args.gen_tokens)]))
        ours, peer = median(ours_runs, cols), median(peer_runs, cols)
        for r in (ours, peer):
            print(f"| {r['runtime']} | {t} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")
        same = ours["generated_token_ids"] == peer["generated_token_ids"]
        ratios.append((t, {c: ours[c] / peer[c] for c in cols}, same))
    print()
    for t, r, same in ratios:
        print(f"pocketlm/onnxruntime, {t} thread(s): " + ", ".join(f"{c} x{v:.2f}" for c, v in r.items())
              + f"; identical greedy tokens: {same}")


if __name__ == "__main__":
    main()

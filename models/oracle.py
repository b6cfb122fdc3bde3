#!/usr/bin/env python3
"""onnxruntime oracle: greedy decoding of a pocketlm model dir, used by the parity tests.

    python models/oracle.py --model DIR --threads 1 < requests.json > results.json

Input: a JSON list of {"prompt_ids": [...], "max_tokens": N}. Output: a JSON list of
{"token_ids": [...]} — greedy continuations (stopping at the model's eos ids), fed through the
same KV-cache interface pocketlm uses (prefill in one step, then one token per step).

A request with "continuation": [...] instead is teacher-forced: the prompt, then those tokens one
per step; the result has, per continuation token, onnxruntime's own pick ("argmax") and how far
below its best logit that token's logit is ("gap", 0 when they agree).

A request with "score_ids": [...], "window": W, "stride": S is scored for perplexity with the
sliding-window rule of `pocketlm perplexity` (core/src/perplexity.rs): windows of W tokens
starting every S tokens, each window on a fresh cache, every token scored once, in the first
window that holds it after its first position. The result is {"mean_nll", "perplexity",
"scored"}.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import onnxruntime as ort

from windows import mean_nll


def session(model_dir, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(os.path.join(model_dir, "model.onnx"), opts, providers=["CPUExecutionProvider"])


def empty_cache(config):
    kv = config["kv_cache"]
    shape = (1, kv["num_kv_heads"], 0, kv["head_dim"])
    cache = {}
    for i in range(kv["num_layers"]):
        cache[f"past_key_values.{i}.key"] = np.zeros(shape, np.float32)
        cache[f"past_key_values.{i}.value"] = np.zeros(shape, np.float32)
    return cache


def step(sess, ids, start, cache):
    """Run `ids` at positions start.. ; returns last logits and the new cache."""
    feed = dict(cache)
    feed["input_ids"] = np.array([ids], np.int64)
    feed["position_ids"] = np.arange(start, start + len(ids), dtype=np.int64)[None, :]
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(names, feed)))
    new_cache = {k: outs[k.replace("past_key_values", "present")] for k in cache}
    return outs["logits"][0, -1], new_cache


def greedy(sess, config, prompt_ids, max_tokens):
    eos = set(config["eos_token_ids"])
    logits, cache = step(sess, prompt_ids, 0, empty_cache(config))
    pos, out = len(prompt_ids), []
    while len(out) < max_tokens:
        tok = int(np.argmax(logits))
        out.append(tok)
        if tok in eos:
            break
        logits, cache = step(sess, [tok], pos, cache)
        pos += 1
    return out


def teacher_forced(sess, config, prompt_ids, continuation):
    logits, cache = step(sess, prompt_ids, 0, empty_cache(config))
    pos, argmax, gap = len(prompt_ids), [], []
    for i, tok in enumerate(continuation):
        argmax.append(int(np.argmax(logits)))
        gap.append(float(logits.max() - logits[tok]))
        if i + 1 < len(continuation):
            logits, cache = step(sess, [tok], pos, cache)
            pos += 1
    return {"argmax": argmax, "gap": gap}


def perplexity(sess, config, ids, window, stride):
    names = [o.name for o in sess.get_outputs()]

    def logits_of(begin, end):
        feed = empty_cache(config)
        feed["input_ids"] = np.array([ids[begin:end]], np.int64)
        feed["position_ids"] = np.arange(0, end - begin, dtype=np.int64)[None, :]
        return dict(zip(names, sess.run(names, feed)))["logits"][0]

    nll, scored = mean_nll(ids, window, stride, logits_of)
    return {"mean_nll": nll, "perplexity": math.exp(nll), "scored": scored}


def answer(sess, config, request):
    if "score_ids" in request:
        return perplexity(sess, config, request["score_ids"], request["window"], request["stride"])
    if "continuation" in request:
        return teacher_forced(sess, config, request["prompt_ids"], request["continuation"])
    return {"token_ids": greedy(sess, config, request["prompt_ids"], request["max_tokens"])}


def main():
    ap = argparse.ArgumentParser(description="onnxruntime greedy oracle")
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    sess = session(args.model, args.threads)
    results = [answer(sess, config, r) for r in json.load(sys.stdin)]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()

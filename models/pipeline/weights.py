"""Dequantized fp32 weights of a llama GGUF, in PyTorch (out, in) layout with RoPE permutation undone."""
import numpy as np
import gguf

from .quant import quantize_q8

from .hparams import HParams


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation so standard rotate-half RoPE applies.

    llama.cpp's converter interleaves each head's two rotary halves:
    `w.reshape(n_head, 2, d/2, in).swapaxes(1, 2)`; this is its inverse.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GgufWeights:
    """Reads and dequantizes the tensors of a llama GGUF file on demand."""

    def __init__(self, reader, hp: HParams):
        self.hp = hp
        self._tensors = {t.name: t for t in reader.tensors}

    def raw(self, name: str) -> np.ndarray:
        """One tensor, dequantized to fp32 in its stored (out, in) layout."""
        t = self._tensors[name]
        return np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)

    def q4_1(self, name: str):
        """A Q4_1 tensor's blocks as stored, without rounding anything: codes uint8 [N, K] (0..15),
        scales d and minimums m, f32 [N, K/32] (exact f16 values); weight = d * code + m."""
        t = self._tensors[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.Q4_1, f"{name} is {t.tensor_type.name}, not Q4_1"
        rows = t.data.shape[0]
        blocks = t.data.reshape(rows, -1, 20)  # per block: d f16, m f16, 16 bytes of nibbles
        d = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
        m = blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float32)
        qs = blocks[:, :, 4:]
        # llama.cpp packs element j in the low nibble of byte j and element j + 16 in its high one.
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(rows, -1)
        return codes, d, m

    def q8(self, name: str):
        """An 8-bit view of a tensor: (codes int8 [N, K], scales f32 [N, K/32]), weight = code * d.
        Q8_0 tensors (the embedding here) are returned exactly as stored; others are quantized."""
        t = self._tensors[name]
        if t.tensor_type != gguf.GGMLQuantizationType.Q8_0:
            return quantize_q8(self.raw(name))
        rows = t.data.shape[0]
        blocks = t.data.reshape(rows, -1, 34)  # per block: d f16, 32 int8 codes
        d = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
        codes = blocks[:, :, 2:].copy().view(np.int8).reshape(rows, -1)
        return codes, d

    def layer_q4_1(self, i: int) -> dict:
        """The linear weights of layer `i` as exact Q4_1 blocks (`q4_1`), Q/K permutation undone."""
        hp = self.hp
        p = f"blk.{i}."
        out = {}
        for role, name, heads in (("q", "attn_q", hp.num_heads), ("k", "attn_k", hp.num_kv_heads), ("v", "attn_v", 0),
                                  ("o", "attn_output", 0), ("gate", "ffn_gate", 0), ("up", "ffn_up", 0),
                                  ("down", "ffn_down", 0)):
            parts = self.q4_1(p + name + ".weight")
            out[role] = tuple(unpermute(a, heads) for a in parts) if heads else parts
        return out

    def layer(self, i: int) -> dict:
        """All weights of decoder layer `i`, keyed by role."""
        hp = self.hp
        p = f"blk.{i}."
        return {
            "attn_norm": self.raw(p + "attn_norm.weight"),
            "q": unpermute(self.raw(p + "attn_q.weight"), hp.num_heads),
            "k": unpermute(self.raw(p + "attn_k.weight"), hp.num_kv_heads),
            "v": self.raw(p + "attn_v.weight"),
            "o": self.raw(p + "attn_output.weight"),
            "ffn_norm": self.raw(p + "ffn_norm.weight"),
            "gate": self.raw(p + "ffn_gate.weight"),
            "up": self.raw(p + "ffn_up.weight"),
            "down": self.raw(p + "ffn_down.weight"),
        }

    def embedding(self) -> np.ndarray:
        """Token embedding (vocab, hidden); also the LM head (tied)."""
        return self.raw("token_embd.weight")

    def output_norm(self) -> np.ndarray:
        """Final RMSNorm weight."""
        return self.raw("output_norm.weight")

    def has_separate_lm_head(self) -> bool:
        """True when the GGUF stores an untied `output.weight`."""
        return "output.weight" in self._tensors

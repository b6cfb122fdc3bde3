"""Dequantized fp32 weights of a llama GGUF, in PyTorch (out, in) layout with RoPE permutation undone."""
import numpy as np
import gguf

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

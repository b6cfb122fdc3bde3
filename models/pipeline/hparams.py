"""Architecture hyper-parameters of a llama-style decoder, read from GGUF metadata."""
from dataclasses import dataclass, asdict


@dataclass(frozen=True)
class HParams:
    """Shape of a llama-architecture causal LM (what the ONNX graph builder needs)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    rope_theta: float
    rms_eps: float
    context_length: int

    @staticmethod
    def from_gguf(reader) -> "HParams":
        """Read the `llama.*` keys of a GGUF file."""
        def field(key):
            return reader.fields[key].contents()

        hidden = int(field("llama.embedding_length"))
        heads = int(field("llama.attention.head_count"))
        return HParams(
            num_layers=int(field("llama.block_count")),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(field("llama.attention.head_count_kv")),
            head_dim=hidden // heads,
            ffn_size=int(field("llama.feed_forward_length")),
            vocab_size=int(field("llama.vocab_size")),
            rope_theta=float(field("llama.rope.freq_base")),
            rms_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
            context_length=int(field("llama.context_length")),
        )

    def to_dict(self) -> dict:
        """Plain dict, for config.json."""
        return asdict(self)

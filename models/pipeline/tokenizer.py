"""The tokenizer, from GGUF metadata: a Hugging Face `tokenizer.json`, and an independent reference
implementation of llama.cpp's algorithm (used to produce golden ids the Rust side must match)."""
from functools import lru_cache

import regex

# llama.cpp, LLAMA_VOCAB_PRE_TYPE_SMOLLM: split digits one by one, then the GPT-2 pattern.
_DIGITS = regex.compile(r"\p{N}")
_GPT2 = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
CONTROL = 3  # GGUF token_type of control (special) tokens


def _bytes_to_unicode():
    """GPT-2's reversible byte -> printable-char map used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for byte in range(256):
        if byte not in bs:
            bs.append(byte)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_TO_CHAR = _bytes_to_unicode()


class GgufVocab:
    """Token table, token types and merges of a GGUF 'gpt2'-model tokenizer."""

    def __init__(self, reader):
        f = reader.fields
        model = f["tokenizer.ggml.model"].contents()
        pre = f["tokenizer.ggml.pre"].contents()
        if model != "gpt2" or pre != "smollm":
            raise ValueError(f"unsupported tokenizer: model={model!r} pre={pre!r} (want gpt2/smollm)")
        self.tokens = list(f["tokenizer.ggml.tokens"].contents())
        self.types = list(f["tokenizer.ggml.token_type"].contents())
        self.merges = list(f["tokenizer.ggml.merges"].contents())
        self.chat_template = f["tokenizer.chat_template"].contents()
        self.eos_id = int(f["tokenizer.ggml.eos_token_id"].contents())

    def special_ids(self):
        """Ids of control tokens (matched verbatim in text, never split)."""
        return [i for i, t in enumerate(self.types) if t == CONTROL]


def tokenizer_json(vocab: GgufVocab) -> dict:
    """A `tokenizer.json` equivalent to llama.cpp's tokenization of this vocabulary."""
    added = [{"id": i, "content": vocab.tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i in vocab.special_ids()]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(vocab.tokens)},
                  "merges": [m.split(" ", 1) for m in vocab.merges]},
    }


class ReferenceTokenizer:
    """Straightforward re-implementation of llama.cpp's BPE for this vocabulary (the oracle)."""

    def __init__(self, vocab: GgufVocab):
        self.ids = {t: i for i, t in enumerate(vocab.tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(vocab.merges)}
        specials = sorted((vocab.tokens[i] for i in vocab.special_ids()), key=len, reverse=True)
        self.special = regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")

    def encode(self, text: str) -> list:
        """Token ids of `text`, control tokens recognised verbatim."""
        out = []
        for k, part in enumerate(self.special.split(text)):
            if k % 2 == 1:
                out.append(self.ids[part])
                continue
            for chunk in self._digit_split(part):
                for word in _GPT2.findall(chunk):
                    out.extend(self._bpe("".join(BYTE_TO_CHAR[b] for b in word.encode("utf-8"))))
        return out

    @staticmethod
    def _digit_split(text):
        pos = 0
        for m in _DIGITS.finditer(text):
            if m.start() > pos:
                yield text[pos:m.start()]
            yield m.group()
            pos = m.end()
        if pos < len(text):
            yield text[pos:]

    @lru_cache(maxsize=65536)
    def _bpe(self, word: str) -> tuple:
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best = min((p for p in pairs if p[0] is not None), default=None)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return tuple(self.ids[p] for p in parts)

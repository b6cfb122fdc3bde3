#!/usr/bin/env bash
# Perplexity of the weight formats against llama.cpp on the source GGUF, token by token, in one
# command (bench/quality.py; formats converted on first use). Extra arguments go to
# bench/quality.py (e.g. --formats q4-head8,q4,q8,f32).
#
#   bash bench/quality.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/setup.sh
"$venv/bin/python" bench/quality.py --pocketlm "$pocketlm" --gguf "$gguf" "$@"

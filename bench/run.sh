#!/usr/bin/env bash
# The side-by-side benchmark in one command: pocketlm, onnxruntime and onnxruntime-genai (same ONNX
# file) and llama.cpp
# (llama-cpp-python, built from source by pip on first use, ~5 min here; cached under
# $POCKETLM_HOME/bench-venv) on the default model, 1 and 2 threads. Extra arguments go to
# bench/compare.py (e.g. --repeat 5, --model DIR, --prompt-tokens 1000).
#
#   bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/setup.sh
"$POCKETLM_HOME/venv/bin/python" bench/compare.py --pocketlm "$pocketlm" --llama-python "$venv/bin/python" \
  --gguf "$gguf" --genai-python "$venv/bin/python" "$@"

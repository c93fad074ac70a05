#!/usr/bin/env bash
# From a fresh Debian 12 machine: installs what is missing, builds, and runs the main job on the
# built-in default model. For now the default model is the DeepSeek-V3-architecture fixture in
# tests/fixtures (MLA, YaRN, sigmoid-routed MoE): dshpc checks it against the Hugging Face
# reference (eval-golden) and generates a few tokens from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${DSHPC_BUILD_DIR:-$root/build}
"$root/launch/build.sh"
model=${DSHPC_MODEL:-$root/tests/fixtures/models/deepseek-v3-tiny}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

echo "== dshpc eval-golden on $(basename "$model")"
"$build/bin/dshpc" eval-golden --model "$model" --golden "$model/golden.safetensors"

echo "== dshpc generate on $(basename "$model")"
"$build/bin/dshpc" generate --model "$model" --prompt-ids 0,17,42,99,7 --max-new-tokens 12

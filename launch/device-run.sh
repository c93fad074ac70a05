#!/usr/bin/env bash
# One call on the GPU machine: build and test (launch/device-test.sh), then the benchmarks
# beside Hugging Face transformers on the same GPU. Everything lands in OUT_DIR.
#   launch/device-run.sh OUT_DIR
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: $0 OUT_DIR}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# shellcheck source=/dev/null
source "$root/launch/device-deps.sh" "$root/.device/debs" 2> "$out/deps.log"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1

export DSHPC_BUILD_TARGETS=${DSHPC_BUILD_TARGETS:-"dshpc dshpc_gpu_tests"}
export DSHPC_JOBS=${DSHPC_JOBS:-$(nproc)}
timeout "${DSHPC_TEST_TIMEOUT_S:-300}" "$root/launch/device-test.sh" "$out/device-test" \
  > "$out/device-test.log" 2>&1
echo "device-test exit $?" >> "$out/status.txt"

dshpc=${DSHPC_DEVICE_BUILD_DIR:-$root/build-device}/bin/dshpc
bench() {  # bench NAME ARGS...
  local name=$1; shift
  timeout "${DSHPC_BENCH_TIMEOUT_S:-85}" "$dshpc" bench --device cuda --dtype bf16 --random-weights \
    --json "$out/$name.json" "$@" > "$out/$name.log" 2>&1
  echo "$name exit $?" >> "$out/status.txt"
}
bench bench-deepseek-llm-7b --model "$root/configs/models/deepseek-llm-7b.json" --kv-blocks 4400 \
  --batch-sizes 1,16,64,256 --prompt-len 128 --gen-len 64 --prefill-lens 512,2048
bench bench-deepseek-v2-lite --model "$root/configs/models/deepseek-v2-lite.json" --kv-blocks 4400 \
  --batch-sizes 1,64 --prompt-len 128 --gen-len 32 --prefill-lens 512
timeout "${DSHPC_HF_TIMEOUT_S:-100}" python3 "$root/bench/hf_transformers_bench.py" \
  --config "$root/configs/models/deepseek-llm-7b.json" --batch-sizes 1,16,64 \
  --prompt-len 128 --gen-len 128 --json "$out/hf-deepseek-llm-7b.json" > "$out/hf-deepseek-llm-7b.log" 2>&1
echo "hf exit $?" >> "$out/status.txt"
cat "$out/status.txt"

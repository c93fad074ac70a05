#!/usr/bin/env bash
# One GPU-machine call for performance work: build, the GPU tests of the fast paths, dshpc bench
# on DeepSeek-LLM-7B shapes with and without CUDA graphs, and an Nsight Compute profile of one
# decode step's kernels. Everything lands in OUT_DIR (a short table is printed last).
#   launch/device-perf.sh OUT_DIR
# Environment: DSHPC_PERF_NCU=0 skips the profile, DSHPC_PERF_NOGRAPHS=0 the run without CUDA
# graphs; DSHPC_PERF_GPU_FILTER selects GPU tests.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: $0 OUT_DIR}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
# shellcheck source=/dev/null
source "$root/launch/device-deps.sh" "$root/.device/debs" 2> "$out/deps.log"
build=${DSHPC_DEVICE_BUILD_DIR:-$root/build-device}
status=$out/status.txt
: > "$status"
step() {  # step NAME TIMEOUT_S COMMAND...: runs, logs to OUT/NAME.log, records the exit code
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "$name exit $? ($((SECONDS - started)) s)" | tee -a "$status"
}

step configure 300 cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DDSHPC_GPU_TESTS=ON
step build 600 cmake --build "$build" -j "$(nproc)" --target dshpc dshpc_gpu_tests
dshpc=$build/bin/dshpc
step gpu-tests 300 "$build/bin/dshpc_gpu_tests" \
  --gtest_filter="${DSHPC_PERF_GPU_FILTER:-*}"

bench() {  # bench NAME ARGS...
  local name=$1; shift
  step "$name" "${DSHPC_BENCH_TIMEOUT_S:-150}" "$dshpc" bench --device cuda --dtype bf16 \
    --random-weights --json "$out/$name.json" "$@"
}
model7b=$root/configs/models/deepseek-llm-7b.json
bench bench-7b --model "$model7b" --kv-blocks 4400 --batch-sizes 1,16,64,256 --prompt-len 128 \
  --gen-len 128 --prefill-lens 512,2048
if [ "${DSHPC_PERF_NOGRAPHS:-1}" = 1 ]; then
  DSHPC_CUDA_GRAPHS=0 bench bench-7b-nographs --model "$model7b" --kv-blocks 900 \
    --batch-sizes 1,64 --prompt-len 128 --gen-len 64 --prefill-lens 512
fi

if [ "${DSHPC_PERF_NCU:-1}" = 1 ] && command -v ncu > /dev/null; then
  # Kernels of decode steps at batch 1 and 64 and of a 2048-token prefill; clocks as found.
  step ncu 240 ncu --clock-control none --target-processes all \
    --kernel-name "regex:${DSHPC_PERF_NCU_KERNELS:-gemv|decode_attention|prefill_attention|rmsnorm|kv_cache|rope|swiglu|Kernel|gemm}" \
    --launch-skip 300 --launch-count 40 --section SpeedOfLight \
    "$dshpc" bench --device cuda --dtype bf16 --random-weights --model "$model7b" \
    --kv-blocks 600 --batch-sizes 1,64 --prompt-len 128 --gen-len 4 --prefill-lens 2048
fi
grep -E "^[0-9]+ +[0-9.]+|paths|copy bandwidth" "$out"/bench-7b*.log | tail -30
cat "$status"

#!/usr/bin/env bash
# Session 8, call 3 (one H200): launch/device-run.sh's test stage (every GPU test, fixture
# goldens; new: matmul_swiglu), then A/B runs: V2-Lite with the shared experts beside the router
# and their gate_up + swiglu in one launch (default), with DSHPC_GEMV_SWIGLU=0, and with
# DSHPC_MOE_SHARED_SIDE=0, alternating; 7B at batch 1 with and without the fused swiglu.
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|actual|error" "$R/device-test/logs/gpu_tests.log" \
  | head -80 > "$OUT/test-failures.txt"
b=build-device/bin/dshpc
v2="bench --device cuda --dtype bf16 --random-weights --model configs/models/deepseek-v2-lite.json --kv-blocks 4400 --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 --prefill-lens 2048"
l7="bench --device cuda --dtype bf16 --random-weights --model configs/models/deepseek-llm-7b.json --kv-blocks 4400 --batch-sizes 1 --prompt-len 128 --gen-len 128 --prefill-lens 512"
run() {  # run NAME ENV... -- ARGS
  local n=$1; shift
  env "$@" timeout 120 $b $args --json "$R/$n.json" > "$R/$n.log" 2>&1
  echo "$n exit $?" >> "$R/status.txt"
  { echo "== $n"; grep -E "^(batch|prompt|1 |16 |64 |512 |2048 )|paths" "$R/$n.log" | cut -c1-1000; } >> "$OUT/ab.txt"
}
args=$v2
run v2l-default-r1 DSHPC_MOE_SHARED_SIDE=256
run v2l-noswiglu-r1 DSHPC_GEMV_SWIGLU=0
run v2l-noside-r1 DSHPC_MOE_SHARED_SIDE=0
run v2l-default-r2 DSHPC_MOE_SHARED_SIDE=256
run v2l-noswiglu-r2 DSHPC_GEMV_SWIGLU=0
args=$l7
run 7b-default DSHPC_GEMV_SWIGLU=1
run 7b-noswiglu DSHPC_GEMV_SWIGLU=0
run 7b-default-r2 DSHPC_GEMV_SWIGLU=1
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

#!/usr/bin/env bash
# Session 9, call 5 (one H200), at a07258f (the MLA prefill kernel's split form by default):
# build; the MLA prefill GPU tests (both forms); V2-Lite at batches 1, 16, 64 and prefill 512,
# 2048 with the default build.
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" build > "$OUT/console.log" 2>&1
timeout 120 build-device/bin/dshpc_gpu_tests --gtest_filter='*MlaPrefill*:*MlaV3*:*MlaTiny*' \
  > "$R/gpu-tests.log" 2>&1
echo "gpu-tests exit $?" >> "$R/status.txt"
grep -E "^\[  (PASSED|FAILED) |OK \]|FAILED" "$R/gpu-tests.log" > "$OUT/gpu-tests.txt"
n=bench-deepseek-v2-lite
timeout 120 build-device/bin/dshpc bench --device cuda --dtype bf16 --random-weights \
  --json "$R/$n.json" --model configs/models/deepseek-v2-lite.json --kv-blocks 4400 \
  --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 --prefill-lens 512,2048 > "$R/$n.log" 2>&1
echo "$n exit $?" >> "$R/status.txt"
{ echo "== $n"; grep -E "^(batch|prompt|1 |16 |64 |512 |2048 )|paths|device:" "$R/$n.log" | cut -c1-1500; } >> "$OUT/ab.txt"
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

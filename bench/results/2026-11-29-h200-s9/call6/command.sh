#!/usr/bin/env bash
# Session 9, call 6 (one H200), after the review fixes: build; the GPU tests the fixes touched
# (kernel trace, MLA attention, MoE experts); a traced V2-Lite run (batch 1, prefill 512).
R=$OUT/run; mkdir -p "$R/trace"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" build > "$OUT/console.log" 2>&1
timeout 150 build-device/bin/dshpc_gpu_tests \
  --gtest_filter='GpuKernelTrace*:*Mla*:*GpuMoe.Experts*' > "$R/gpu-tests.log" 2>&1
echo "gpu-tests exit $?" >> "$R/status.txt"
grep -E "^\[  (PASSED|FAILED) |OK \]|FAILED|Failure|Expected|Which is" "$R/gpu-tests.log" > "$OUT/gpu-tests.txt"
timeout 60 build-device/bin/dshpc bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 \
  --model configs/models/deepseek-v2-lite.json --batch-sizes 1 --prompt-len 128 --gen-len 16 \
  --prefill-lens 512 --trace "$R/trace/v2l" --trace-steps 2 > "$R/v2l-trace.log" 2>&1
echo "v2l-trace exit $?" >> "$R/status.txt"
grep -vE '^\{"@timestamp' "$R/v2l-trace.log" | cut -c1-200 | head -60 > "$OUT/trace.txt"
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

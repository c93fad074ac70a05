#!/usr/bin/env bash
# Session 4, call 3 (one H200): the full measured run. launch/device-run.sh's test stage (GPU
# tests, fixture goldens), then bench1 + hf + summary (dshpc and transformers on the same GPU,
# results JSON and chart), then an A/B of V2-Lite decode without the tensor-core MoE kernels.
# If the GPU MoE tests failed, the benches run with DSHPC_MOE_MMA=0 (and say so).
root=$(pwd); R=$OUT/run
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
if grep -q "FAILED.*GpuMoe\|GpuMoe.*FAILED" "$R"/device-test/logs/gpu_tests.log 2> /dev/null; then
  echo "GpuMoe failed: benches with DSHPC_MOE_MMA=0" | tee -a "$R/status.txt"; export DSHPC_MOE_MMA=0
fi
launch/device-run.sh "$R" bench1 hf summary >> "$OUT/console.log" 2>&1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
DSHPC_MOE_MMA=0 timeout 120 build-device/bin/dshpc bench --device cuda --dtype bf16 --random-weights \
  --model configs/models/deepseek-v2-lite.json --kv-blocks 4400 --batch-sizes 1,64 --prompt-len 128 \
  --gen-len 64 --prefill-lens 512 --json "$R/ab-deepseek-v2-lite-no-mma.json" > "$R/ab-deepseek-v2-lite-no-mma.log" 2>&1
echo "ab-deepseek-v2-lite-no-mma exit $?" >> "$R/status.txt"
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

#!/usr/bin/env bash
# Session 5, call 4 (one H200, little device time left): build, the MoE GPU tests (the gate/up
# kernel's loop restored to its session-4 form), and V2-Lite at batch 1, 16 and 64.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source launch/device-deps.sh "$(pwd)/.device/debs" > "$OUT/deps.log" 2>&1
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DDSHPC_GPU_TESTS=ON > "$OUT/build.log" 2>&1
cmake --build build-device -j 16 --target dshpc dshpc_gpu_tests >> "$OUT/build.log" 2>&1
echo "build exit $?" > "$OUT/status.txt"
timeout 120 build-device/bin/dshpc_gpu_tests --gtest_filter='GpuMoe*:GpuMla*:GpuGraphs*' > "$OUT/gpu-tests.log" 2>&1
echo "gpu tests exit $?: $(grep -E 'PASSED|FAILED' "$OUT/gpu-tests.log" | head -5 | tr '\n' ';')" >> "$OUT/status.txt"
timeout 120 build-device/bin/dshpc bench --device cuda --dtype bf16 --random-weights \
  --model configs/models/deepseek-v2-lite.json --kv-blocks 4400 --batch-sizes 1,16,64 --prompt-len 128 \
  --gen-len 64 --prefill-lens 512,2048 --json "$OUT/bench-deepseek-v2-lite.json" > "$OUT/bench-deepseek-v2-lite.log" 2>&1
echo "bench exit $?" >> "$OUT/status.txt"

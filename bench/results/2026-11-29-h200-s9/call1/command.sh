#!/usr/bin/env bash
# Session 9, call 1 (one H200): build; the kernel-trace GPU test and the MoE side-branch tests;
# then kernel timelines (dshpc bench --trace, CUPTI) of V2-Lite (batches 1, 16, 64; prefill 512,
# 2048), V2-Lite with DSHPC_MOE_SHARED_SIDE=0 (batch 1, prefill 512), and 7B (batches 1, 64;
# prefill 2048).
R=$OUT/run; mkdir -p "$R/trace"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" build > "$OUT/console.log" 2>&1
ls /usr/local/cuda/extras/CUPTI/lib64 /usr/local/cuda/lib64/libcupti* >> "$OUT/console.log" 2>&1
grep -i cupti build-device/CMakeCache.txt | head -3 >> "$OUT/console.log"
timeout 120 build-device/bin/dshpc_gpu_tests --gtest_filter='GpuKernelTrace*:*SharedExperts*:*Graph*' \
  > "$R/gpu-tests.log" 2>&1
echo "gpu-tests exit $?" >> "$R/status.txt"
tail -30 "$R/gpu-tests.log" > "$OUT/gpu-tests-tail.txt"
b=build-device/bin/dshpc
common=(bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 --prompt-len 128 --trace-steps 4)
run() { local n=$1; shift; timeout 150 "$@" > "$R/$n.log" 2>&1; echo "$n exit $?" >> "$R/status.txt"; }
run v2l $b "${common[@]}" --model configs/models/deepseek-v2-lite.json --batch-sizes 1,16,64 \
  --gen-len 32 --prefill-lens 512,2048 --trace "$R/trace/v2l" --json "$R/v2l.json"
DSHPC_MOE_SHARED_SIDE=0 run v2l-noside $b "${common[@]}" --model configs/models/deepseek-v2-lite.json \
  --batch-sizes 1 --gen-len 32 --prefill-lens 512 --trace "$R/trace/v2l-noside" --json "$R/v2l-noside.json"
run 7b $b "${common[@]}" --model configs/models/deepseek-llm-7b.json --batch-sizes 1,64 \
  --gen-len 32 --prefill-lens 2048 --trace "$R/trace/7b" --json "$R/7b.json"
for n in v2l v2l-noside 7b; do
  { echo "== $n"; grep -vE '^\{"@timestamp' "$R/$n.log" | cut -c1-400; } >> "$OUT/traces.txt"
done
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

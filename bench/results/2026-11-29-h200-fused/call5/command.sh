#!/usr/bin/env bash
# Session 5, call 5 (one H200, the last 327 s of device time): launch/device-run.sh's test stage
# (all GPU tests, fixture goldens) with MLA's value projection fused into the attention's last
# launch, then V2-Lite (dshpc and transformers, same call) and the summary. If a GPU test of the
# MLA or model paths failed, the bench runs with DSHPC_MLA_VALUES=0 (and says so).
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DSHPC_HF_TIMEOUT_S=60
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure" "$R/device-test/logs/gpu_tests.log" | head -40 > "$OUT/test-failures.txt"
if grep -qE "FAILED.*(GpuMla|GpuModel|GpuGraphs|GpuAttention)" "$R/device-test/logs/gpu_tests.log"; then
  echo "a GPU test failed: bench with DSHPC_MLA_VALUES=0" | tee -a "$R/status.txt"; export DSHPC_MLA_VALUES=0
fi
b=build-device/bin/dshpc; m=configs/models/deepseek-v2-lite.json
timeout 90 $b bench --device cuda --dtype bf16 --random-weights --model $m --kv-blocks 4400 \
  --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 --prefill-lens 512,2048 \
  --json "$R/bench-deepseek-v2-lite.json" > "$R/bench-deepseek-v2-lite.log" 2>&1
echo "bench-deepseek-v2-lite exit $?" >> "$R/status.txt"
timeout 60 python3 bench/hf_transformers_bench.py --config $m --batch-sizes 1,64 --prompt-len 128 \
  --gen-len 64 --json "$R/hf-deepseek-v2-lite.json" > "$R/hf-deepseek-v2-lite.log" 2>&1
echo "hf-deepseek-v2-lite exit $?" >> "$R/status.txt"
mkdir -p "$R/results"
python3 bench/summarize.py --dshpc "$R/bench-deepseek-v2-lite.json" --hf "$R/hf-deepseek-v2-lite.json" \
  --device h200 --out-dir "$R/results" --chart "$R/results/throughput-deepseek-v2-lite.png" >> "$R/status.txt" 2>&1
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

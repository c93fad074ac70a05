#!/usr/bin/env bash
# Session 4, call 4 (one H200, little device time left): GPU tests and goldens, then V2-Lite
# with the shared experts fused into the routed experts' launches, transformers on the same
# shapes, the summary chart, and an A/B with the fusion off. Files are copied to $OUT as each
# step ends, so that a run cut short still returns what it did.
root=$(pwd); R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$R/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|error" "$R/device-test/logs/gpu_tests.log" | head -40 > "$OUT/status.txt"
cat "$R/status.txt" >> "$OUT/status.txt"
b=build-device/bin/dshpc; m=configs/models/deepseek-v2-lite.json
timeout 150 $b bench --device cuda --dtype bf16 --random-weights --model $m --kv-blocks 4400 \
  --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 --prefill-lens 512,2048 \
  --json "$OUT/bench-deepseek-v2-lite.json" > "$OUT/bench-deepseek-v2-lite.log" 2>&1
echo "bench-deepseek-v2-lite exit $?" >> "$OUT/status.txt"
timeout 100 python3 bench/hf_transformers_bench.py --config $m --batch-sizes 1,64 --prompt-len 128 \
  --gen-len 64 --json "$OUT/hf-deepseek-v2-lite.json" >> "$OUT/status.txt" 2>&1
echo "hf-deepseek-v2-lite exit $?" >> "$OUT/status.txt"
mkdir -p "$R/results"
python3 bench/summarize.py --dshpc "$OUT/bench-deepseek-v2-lite.json" --hf "$OUT/hf-deepseek-v2-lite.json" \
  --device h200 --out-dir "$R/results" --chart "$OUT/throughput-deepseek-v2-lite.png" >> "$OUT/status.txt" 2>&1
cp "$R/results/"*.json "$OUT/result-deepseek-v2-lite.json"
DSHPC_MOE_FUSE_SHARED=0 timeout 90 $b bench --device cuda --dtype bf16 --random-weights --model $m \
  --kv-blocks 4400 --batch-sizes 1,64 --prompt-len 128 --gen-len 64 --prefill-lens 512 \
  > "$OUT/ab-no-fused-shared.log" 2>&1
echo "ab-no-fused-shared exit $?" >> "$OUT/status.txt"

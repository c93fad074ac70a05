#!/usr/bin/env bash
# Session 5, call 3 (one H200): the measured run of record. launch/device-run.sh's test stage
# (GPU tests, fixture goldens), then bench1 + hf + summary (dshpc and transformers, 7B and
# V2-Lite, results JSON and charts), then V2-Lite at batch 1 and 16 with the fused decode launches
# off (A/B). If a test of the fused launches failed, the benches run with them off (and say so).
root=$(pwd); R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
if grep -qE "FAILED.*(GpuMla|GpuMoe|GpuOps|GpuModel|GpuGraphs)" "$R"/device-test/logs/gpu_tests.log 2> /dev/null; then
  echo "a GPU test failed: benches with DSHPC_MLA_PREPARE=0 DSHPC_MOE_GATE=0 DSHPC_GEMV_PAIR=0" | tee -a "$R/status.txt"
  export DSHPC_MLA_PREPARE=0 DSHPC_MOE_GATE=0 DSHPC_GEMV_PAIR=0
fi
grep -E "FAILED|Failure" "$R/device-test/logs/gpu_tests.log" | head -40 > "$OUT/test-failures.txt"
launch/device-run.sh "$R" bench1 hf summary >> "$OUT/console.log" 2>&1
cp "$R/status.txt" "$OUT/status.txt"
b=build-device/bin/dshpc
DSHPC_MLA_PREPARE=0 DSHPC_MOE_GATE=0 DSHPC_GEMV_PAIR=0 timeout 90 $b bench --device cuda --dtype bf16 \
  --random-weights --model configs/models/deepseek-v2-lite.json --kv-blocks 4400 --batch-sizes 1,16 \
  --prompt-len 128 --gen-len 64 --prefill-lens 16 --json "$R/ab-deepseek-v2-lite-unfused.json" \
  > "$R/ab-deepseek-v2-lite-unfused.log" 2>&1
echo "ab-deepseek-v2-lite-unfused exit $?" >> "$OUT/status.txt"
python3 - <<'PY'
import json; c=json.load(open("configs/models/deepseek-v2-lite.json")); c["num_hidden_layers"]=3
json.dump(c, open("/tmp/v2l3.json","w"))
PY
timeout 75 ncu --clock-control none --cache-control none --csv --log-file "$R/ncu-b1.csv" \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum $b bench --device cuda --dtype bf16 \
  --random-weights --model /tmp/v2l3.json --kv-blocks 400 --batch-sizes 1 --prompt-len 128 \
  --gen-len 4 --prefill-lens 16 > "$R/ncu.log" 2>&1
echo "ncu exit $?" >> "$OUT/status.txt"
gzip -c "$R/ncu-b1.csv" > "$OUT/ncu-b1.csv.gz"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

#!/usr/bin/env bash
# Session 7, call 2 (one H200): launch/device-run.sh's test stage (every GPU test, fixture
# goldens) at the head, which adds to call 1's: the expert down product's shared-expert CTAs
# dispatched first with twice the blocks in flight, and MLA's W_UV product through the few-row
# kernel (one grid row per head) instead of cuBLAS. Then V2-Lite decode at batch 1, 16, 64 with
# the per-head kernel and with DSHPC_GEMV_HEADS=0 (A/B), a 3-layer V2-Lite Nsight Compute profile
# at batch 1, and, if the GPU tests passed, the run of record: bench1 + hf + summary (dshpc and
# transformers, 7B and V2-Lite, same call).
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|actual|error" "$R/device-test/logs/gpu_tests.log" \
  | head -80 > "$OUT/test-failures.txt"
b=build-device/bin/dshpc
ab() {  # ab NAME MODEL VAR=VALUE...
  local name=$1 model=$2; shift 2
  env "$@" timeout 100 $b bench --device cuda --dtype bf16 --random-weights --prompt-len 128 \
    --gen-len 128 --prefill-lens 16 --model "configs/models/$model.json" --kv-blocks 4400 \
    --batch-sizes 1,16,64 --json "$R/$name.json" > "$R/$name.log" 2>&1
  echo "$name exit $?" >> "$R/status.txt"
  { echo "== $name ($*)"; grep -E "^(batch|1 |16 |64 )|paths|device:" "$R/$name.log" | cut -c1-700; } >> "$OUT/ab.txt"
}
ab v2l-gemv-heads deepseek-v2-lite DSHPC_GEMV_HEADS=1
ab v2l-cublas-heads deepseek-v2-lite DSHPC_GEMV_HEADS=0
python3 - <<'PY'
import json
c = json.load(open("configs/models/deepseek-v2-lite.json")); c["num_hidden_layers"] = 3
json.dump(c, open("/tmp/deepseek-v2-lite-3.json", "w"))
PY
timeout 90 ncu --clock-control none --cache-control none --csv --log-file "$R/ncu-v2l-b1.csv" \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread \
  $b bench --device cuda --dtype bf16 --random-weights --model /tmp/deepseek-v2-lite-3.json \
  --kv-blocks 400 --batch-sizes 1 --prompt-len 128 --gen-len 3 --prefill-lens 16 > "$R/ncu-v2l-b1.log" 2>&1
echo "ncu-v2l-b1 exit $?" >> "$R/status.txt"
if grep -q "FAILED" "$R/device-test/logs/gpu_tests.log" || grep -q "| fail" "$R/device-test/summary.md"; then
  echo "a GPU test failed: no run of record" | tee -a "$R/status.txt"
else
  launch/device-run.sh "$R" bench1 hf summary >> "$OUT/console.log" 2>&1
  for f in bench-deepseek-llm-7b bench-deepseek-v2-lite; do
    echo "== $f" >> "$OUT/ab.txt"
    grep -E "^(batch|prompt|1 |16 |64 |256 |512 |2048 )|paths|device:" "$R/$f.log" | cut -c1-700 >> "$OUT/ab.txt"
  done
fi
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

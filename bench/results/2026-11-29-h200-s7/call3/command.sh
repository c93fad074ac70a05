#!/usr/bin/env bash
# Session 7, call 3 (one H200): launch/device-run.sh's test stage (every GPU test, fixture
# goldens) at the head (call 1's down product again, with W_UV through the few-row kernel); if
# they pass, the run of record: bench1 + hf + summary (dshpc and transformers, 7B and V2-Lite,
# same call). Then Nsight Compute: every kernel of a 3-layer V2-Lite at batch 1, and the full
# section set for two decode launches of the MoE gate (where its 17 us go).
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|actual|error" "$R/device-test/logs/gpu_tests.log" \
  | head -80 > "$OUT/test-failures.txt"
if grep -q "FAILED" "$R/device-test/logs/gpu_tests.log" || grep -q "| fail" "$R/device-test/summary.md"; then
  echo "a GPU test failed: no run of record" | tee -a "$R/status.txt"
else
  launch/device-run.sh "$R" bench1 hf summary >> "$OUT/console.log" 2>&1
  for f in bench-deepseek-llm-7b bench-deepseek-v2-lite; do
    echo "== $f" >> "$OUT/ab.txt"
    grep -E "^(batch|prompt|1 |16 |64 |256 |512 |2048 )|paths|device:" "$R/$f.log" | cut -c1-700 >> "$OUT/ab.txt"
  done
fi
b=build-device/bin/dshpc
python3 - <<'PY'
import json
c = json.load(open("configs/models/deepseek-v2-lite.json")); c["num_hidden_layers"] = 3
json.dump(c, open("/tmp/deepseek-v2-lite-3.json", "w"))
PY
args="bench --device cuda --dtype bf16 --random-weights --model /tmp/deepseek-v2-lite-3.json --kv-blocks 400 --batch-sizes 1 --prompt-len 128 --gen-len 3 --prefill-lens 16"
timeout 90 ncu --clock-control none --cache-control none --csv --log-file "$R/ncu-v2l-b1.csv" \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread \
  $b $args > "$R/ncu-v2l-b1.log" 2>&1
echo "ncu-v2l-b1 exit $?" >> "$R/status.txt"
# The gate kernel runs at decode only (prefill steps of more than 8 tokens route separately).
timeout 120 ncu --clock-control none --set full -k regex:moe_gate_kernel --launch-skip 0 --launch-count 2 \
  --import-source yes -o "$R/ncu-gate" $b $args > "$R/ncu-gate.log" 2>&1
echo "ncu-gate exit $?" >> "$R/status.txt"
ncu --import "$R/ncu-gate.ncu-rep" --page details > "$R/ncu-gate-details.txt" 2>&1
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

#!/usr/bin/env bash
# Session 6, call 4 (one H200): launch/device-run.sh's test stage (every GPU test, fixture
# goldens); the programmatic-dependent-launch probe (bench/probes/pdl_probe.cu); then, if the GPU
# tests passed, the measured run of record: bench1 + hf + summary (dshpc and transformers, 7B and
# V2-Lite, same call), and a 3-layer V2-Lite Nsight Compute profile at batch 1. If a GPU test
# failed, the benches run with DSHPC_MOE_COMBINE_NORM=0 and say so.
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|error" "$R/device-test/logs/gpu_tests.log" | head -80 > "$OUT/test-failures.txt"
nvcc -O2 -arch=sm_90 -o "$R/pdl_probe" bench/probes/pdl_probe.cu > "$R/pdl_probe.log" 2>&1 && \
  timeout 60 "$R/pdl_probe" >> "$R/pdl_probe.log" 2>&1
echo "pdl_probe exit $?" >> "$R/status.txt"; cp "$R/pdl_probe.log" "$OUT/pdl_probe.log"
if grep -q "FAILED" "$R/device-test/logs/gpu_tests.log" || grep -q "| fail" "$R/device-test/summary.md"; then
  echo "a GPU test failed: benches with DSHPC_MOE_COMBINE_NORM=0" | tee -a "$R/status.txt"
  export DSHPC_MOE_COMBINE_NORM=0
fi
launch/device-run.sh "$R" bench1 hf summary >> "$OUT/console.log" 2>&1
for f in bench-deepseek-llm-7b bench-deepseek-v2-lite; do
  echo "== $f" >> "$OUT/ab.txt"
  grep -E "^(batch|prompt|1 |16 |64 |256 |512 |2048 )|paths|device:" "$R/$f.log" | cut -c1-400 >> "$OUT/ab.txt"
done
python3 - <<'PY'
import json
c = json.load(open("configs/models/deepseek-v2-lite.json")); c["num_hidden_layers"] = 3
json.dump(c, open("/tmp/deepseek-v2-lite-3.json", "w"))
PY
timeout 90 ncu --clock-control none --cache-control none --csv --log-file "$R/ncu-v2l-b1.csv" \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum build-device/bin/dshpc bench --device cuda \
  --dtype bf16 --random-weights --model /tmp/deepseek-v2-lite-3.json --kv-blocks 400 --batch-sizes 1 \
  --prompt-len 128 --gen-len 3 --prefill-lens 16 > "$R/ncu-v2l-b1.log" 2>&1
echo "ncu-v2l-b1 exit $?" >> "$R/status.txt"
gzip -c "$R/ncu-v2l-b1.csv" > "$OUT/ncu-v2l-b1.csv.gz"
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

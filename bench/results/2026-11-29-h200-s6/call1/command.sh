#!/usr/bin/env bash
# Session 6, call 1 (one H200): launch/device-run.sh's test stage (every GPU test, fixture
# goldens), the MLA value-projection test again with cuBLAS's reduced-precision reduction
# disallowed, V2-Lite decode A/B with the fused value projection off and on (same build), and a
# 3-layer V2-Lite Nsight Compute profile at batch 1 with it on.
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]" "$R/device-test/logs/gpu_tests.log" | head -60 > "$OUT/test-failures.txt"
b=build-device/bin/dshpc; m=configs/models/deepseek-v2-lite.json
DSHPC_CUBLAS_DISALLOW_REDUCED=1 timeout 60 build-device/bin/dshpc_gpu_tests \
  --gtest_filter='*GpuMla.Attention*' > "$R/mla-disallow.log" 2>&1
echo "mla-disallow exit $?" >> "$R/status.txt"
grep -E "info|OK|FAILED" "$R/mla-disallow.log" >> "$OUT/test-failures.txt"
for v in 0 1; do
  DSHPC_MLA_VALUES=$v timeout 100 $b bench --device cuda --dtype bf16 --random-weights --model $m \
    --kv-blocks 4400 --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 --prefill-lens 16 \
    --json "$R/ab-v2-lite-values$v.json" > "$R/ab-v2-lite-values$v.log" 2>&1
  echo "ab-v2-lite-values$v exit $?" >> "$R/status.txt"
  grep -E "^(batch|1 |16 |64 )|paths|load_done" "$R/ab-v2-lite-values$v.log" | cut -c1-400 >> "$OUT/ab.txt"
done
python3 - <<'PY'
import json; c=json.load(open("configs/models/deepseek-v2-lite.json")); c["num_hidden_layers"]=3
json.dump(c, open("/tmp/v2l3.json","w"))
PY
DSHPC_MLA_VALUES=1 timeout 75 ncu --clock-control none --cache-control none --csv --log-file "$R/ncu-b1.csv" \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum $b bench --device cuda --dtype bf16 \
  --random-weights --model /tmp/v2l3.json --kv-blocks 400 --batch-sizes 1 --prompt-len 128 \
  --gen-len 4 --prefill-lens 16 > "$R/ncu.log" 2>&1
echo "ncu exit $?" >> "$R/status.txt"
gzip -c "$R/ncu-b1.csv" > "$OUT/ncu-b1.csv.gz"
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

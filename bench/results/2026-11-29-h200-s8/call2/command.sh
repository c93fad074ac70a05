#!/usr/bin/env bash
# Session 8, call 2 (one H200): launch/device-run.sh's test stage (every GPU test, fixture
# goldens), then V2-Lite A/B of the shared experts beside the router, now with the routed
# experts' first launch held until the gate ends (NoEarlyStart): DSHPC_MOE_SHARED_SIDE=256
# (default), 16 and 0, alternating; then Nsight Compute per kernel of a 3-layer V2-Lite at
# batch 1 with the branch (serialised kernels: what each launch costs alone).
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|actual|error" "$R/device-test/logs/gpu_tests.log" \
  | head -80 > "$OUT/test-failures.txt"
b=build-device/bin/dshpc
args="bench --device cuda --dtype bf16 --random-weights --model configs/models/deepseek-v2-lite.json --kv-blocks 4400 --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 --prefill-lens 2048"
for n_side in r1:256 r1:0 r1:16 r2:256 r2:0; do
  round=${n_side%%:*}; side=${n_side##*:}
  n=v2l-side$side-$round
  DSHPC_MOE_SHARED_SIDE=$side timeout 120 $b $args --json "$R/$n.json" > "$R/$n.log" 2>&1
  echo "$n exit $?" >> "$R/status.txt"
  { echo "== $n"; grep -E "^(batch|prompt|1 |16 |64 |2048 )|paths" "$R/$n.log" | cut -c1-900; } >> "$OUT/ab.txt"
done
python3 - <<'PY'
import json
c = json.load(open("configs/models/deepseek-v2-lite.json")); c["num_hidden_layers"] = 3
json.dump(c, open("/tmp/deepseek-v2-lite-3.json", "w"))
PY
small="bench --device cuda --dtype bf16 --random-weights --model /tmp/deepseek-v2-lite-3.json --kv-blocks 400 --batch-sizes 1 --prompt-len 128 --gen-len 3 --prefill-lens 16"
timeout 90 ncu --clock-control none --cache-control none --csv --log-file "$R/ncu-v2l-b1-side.csv" \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size,launch__registers_per_thread \
  $b $small > "$R/ncu-v2l-b1-side.log" 2>&1
echo "ncu exit $?" >> "$R/status.txt"
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

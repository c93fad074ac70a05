#!/usr/bin/env bash
# Session 5, call 1 (one H200): GPU tests + goldens at main (three commits not yet run on a GPU),
# V2-Lite bench at batch 1/16/64, then a profile of a 3-layer V2-Lite decode at batch 1:
# ncu per-kernel time and DRAM bytes, and (if nsys exists) the graph timeline with gaps.
root=$(pwd); R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$R/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
{ grep -E "FAILED|Failure" "$R/device-test/logs/gpu_tests.log" | head -40; cat "$R/status.txt"; } > "$OUT/status.txt"
b=build-device/bin/dshpc; m=configs/models/deepseek-v2-lite.json
timeout 120 $b bench --device cuda --dtype bf16 --random-weights --model $m --kv-blocks 4400 \
  --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 --prefill-lens 512 \
  --json "$OUT/bench-deepseek-v2-lite.json" > "$OUT/bench-deepseek-v2-lite.log" 2>&1
echo "bench-v2-lite exit $?" >> "$OUT/status.txt"
python3 - <<'PY'
import json; c=json.load(open("configs/models/deepseek-v2-lite.json")); c["num_hidden_layers"]=3
json.dump(c, open("/tmp/v2l3.json","w"))
PY
which nsys ncu >> "$OUT/status.txt" 2>&1
P="--device cuda --dtype bf16 --random-weights --model /tmp/v2l3.json --kv-blocks 400 --batch-sizes 1 --prompt-len 128 --gen-len 8 --prefill-lens 16"
timeout 150 ncu --clock-control none --csv --log-file "$R/ncu-b1.csv" --metrics gpu__time_duration.sum,dram__bytes_read.sum $b bench $P > "$R/ncu.log" 2>&1
echo "ncu exit $?" >> "$OUT/status.txt"; tail -5 "$R/ncu.log" >> "$OUT/status.txt"
gzip -c "$R/ncu-b1.csv" > "$OUT/ncu-b1.csv.gz"

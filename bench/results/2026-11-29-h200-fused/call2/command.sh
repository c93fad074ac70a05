#!/usr/bin/env bash
# Session 5, call 2 (one H200): GPU tests + goldens with the fused decode launches (paired gemv,
# MLA prepare, MoE gate, balanced down tiles), V2-Lite bench at batch 1/16/64, A/B at batch 1
# with each fusion off, 7B batch 1/64 (the gemv kernel changed), and an ncu profile of a 3-layer
# V2-Lite decode at batch 1 without cache flushes. Files land in $OUT as each step ends.
root=$(pwd); R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$R/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
{ grep -E "FAILED|Failure|error:" "$R/device-test/logs/gpu_tests.log" | head -60; cat "$R/status.txt"; } > "$OUT/status.txt"
b=build-device/bin/dshpc; m=configs/models/deepseek-v2-lite.json
B="--device cuda --dtype bf16 --random-weights --kv-blocks 4400"
s=$SECONDS
timeout 150 $b bench $B --model $m --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 \
  --prefill-lens 512 --json "$OUT/bench-deepseek-v2-lite.json" > "$OUT/bench-deepseek-v2-lite.log" 2>&1
echo "bench-v2-lite exit $? ($((SECONDS - s)) s)" >> "$OUT/status.txt"
for v in DSHPC_MLA_PREPARE DSHPC_MOE_GATE DSHPC_GEMV_PAIR ALL; do
  s=$SECONDS
  if [ $v = ALL ]; then envs="DSHPC_MLA_PREPARE=0 DSHPC_MOE_GATE=0 DSHPC_GEMV_PAIR=0"; else envs="$v=0"; fi
  env $envs timeout 90 $b bench $B --model $m --batch-sizes 1,16 --prompt-len 128 --gen-len 64 \
    --prefill-lens 16 > "$R/ab-$v.log" 2>&1
  echo "ab $envs exit $? ($((SECONDS - s)) s): $(grep -E '^(1|16) ' "$R/ab-$v.log" | tr -s ' ' | tr '\n' ';')" >> "$OUT/status.txt"
done
s=$SECONDS
timeout 120 $b bench $B --model configs/models/deepseek-llm-7b.json --batch-sizes 1,64 --prompt-len 128 \
  --gen-len 128 --prefill-lens 2048 --json "$OUT/bench-deepseek-llm-7b.json" > "$R/bench-7b.log" 2>&1
echo "bench-7b exit $? ($((SECONDS - s)) s): $(grep -E '^(1|64|2048) ' "$R/bench-7b.log" | tr -s ' ' | tr '\n' ';')" >> "$OUT/status.txt"
python3 - <<'PY'
import json; c=json.load(open("configs/models/deepseek-v2-lite.json")); c["num_hidden_layers"]=3
json.dump(c, open("/tmp/v2l3.json","w"))
PY
P="--device cuda --dtype bf16 --random-weights --model /tmp/v2l3.json --kv-blocks 400 --batch-sizes 1 --prompt-len 128 --gen-len 4 --prefill-lens 16"
s=$SECONDS
timeout 120 ncu --clock-control none --cache-control none --csv --log-file "$R/ncu-b1.csv" \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum $b bench $P > "$R/ncu.log" 2>&1
echo "ncu exit $? ($((SECONDS - s)) s)" >> "$OUT/status.txt"
gzip -c "$R/ncu-b1.csv" > "$OUT/ncu-b1-fused.csv.gz"
tar -czf "$OUT/logs.tgz" -C "$R" device-test/logs status.txt console.log $(cd "$R" && ls ab-*.log bench-7b.log ncu.log 2>/dev/null) 2>/dev/null

#!/usr/bin/env bash
# Session 6, call 2 (one H200): launch/device-run.sh's test stage (every GPU test, fixture
# goldens), V2-Lite decode with the gate's fused norm and experts' index (and the sliced argmax),
# the same at batch 1 with both turned off (A/B), and Nsight Compute profiles of a 3-layer
# V2-Lite at batch 1 and a 3-layer DeepSeek-LLM-7B at batch 64.
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|actual|error" "$R/device-test/logs/gpu_tests.log" | head -80 > "$OUT/test-failures.txt"
b=build-device/bin/dshpc; m=configs/models/deepseek-v2-lite.json
common="--device cuda --dtype bf16 --random-weights --prompt-len 128 --gen-len 64 --prefill-lens 16"
timeout 100 $b bench $common --model $m --kv-blocks 4400 --batch-sizes 1,16,64 \
  --json "$R/v2-lite.json" > "$R/v2-lite.log" 2>&1
echo "v2-lite exit $?" >> "$R/status.txt"
DSHPC_MOE_GATE_NORM=0 DSHPC_MOE_GATE_INDEX=0 timeout 80 $b bench $common --model $m --kv-blocks 4400 \
  --batch-sizes 1 --json "$R/v2-lite-unfused.json" > "$R/v2-lite-unfused.log" 2>&1
echo "v2-lite-unfused exit $?" >> "$R/status.txt"
for f in v2-lite v2-lite-unfused; do
  echo "== $f" >> "$OUT/ab.txt"
  grep -E "^(batch|1 |16 |64 )|paths|load_done" "$R/$f.log" | cut -c1-400 >> "$OUT/ab.txt"
done
python3 - <<'PY'
import json
for name, layers in (("deepseek-v2-lite", 3), ("deepseek-llm-7b", 3)):
    c = json.load(open(f"configs/models/{name}.json")); c["num_hidden_layers"] = layers
    json.dump(c, open(f"/tmp/{name}-3.json", "w"))
PY
prof() {  # prof NAME MODEL BATCH KV_BLOCKS
  timeout 110 ncu --clock-control none --cache-control none --csv --log-file "$R/ncu-$1.csv" \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum $b bench --device cuda --dtype bf16 \
    --random-weights --model "$2" --kv-blocks "$4" --batch-sizes "$3" --prompt-len 128 \
    --gen-len 3 --prefill-lens 16 > "$R/ncu-$1.log" 2>&1
  echo "ncu-$1 exit $?" >> "$R/status.txt"
  gzip -c "$R/ncu-$1.csv" > "$OUT/ncu-$1.csv.gz"
}
prof v2l-b1 /tmp/deepseek-v2-lite-3.json 1 400
prof 7b-b64 /tmp/deepseek-llm-7b-3.json 64 1200
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

#!/usr/bin/env bash
# Session 9, call 2 (one H200): the test stage (every GPU test, with the MLA prefill kernel's
# new cases, fixture goldens); V2-Lite untraced (batches 1, 16, 64; prefill 512, 2048) and traced
# (batch 1; prefill 512, 2048); the MoE gate kernel under Nsight Compute (full set, source
# counters) on a 3-layer V2-Lite.
R=$OUT/run; mkdir -p "$R/trace"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|actual|error|mla_prefill" "$R/device-test/logs/gpu_tests.log" \
  | head -80 > "$OUT/test-failures.txt"
b=build-device/bin/dshpc
common=(bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 --prompt-len 128)
run() { local n=$1; shift; timeout 150 "$@" > "$R/$n.log" 2>&1; echo "$n exit $?" >> "$R/status.txt"; }
run v2l $b "${common[@]}" --model configs/models/deepseek-v2-lite.json --batch-sizes 1,16,64 \
  --gen-len 64 --prefill-lens 512,2048 --json "$R/v2l.json"
run v2l-trace $b "${common[@]}" --model configs/models/deepseek-v2-lite.json --batch-sizes 1 \
  --gen-len 16 --prefill-lens 512,2048 --trace "$R/trace/v2l" --trace-steps 4
{ echo "== v2l"; grep -E "^(batch|prompt|1 |16 |64 |512 |2048 )|paths|device:" "$R/v2l.log" | cut -c1-1200
  echo "== v2l-trace"; grep -vE '^\{"@timestamp' "$R/v2l-trace.log" | cut -c1-300; } >> "$OUT/results.txt"
python3 - <<'PY'
import json
c = json.load(open("configs/models/deepseek-v2-lite.json")); c["num_hidden_layers"] = 3
json.dump(c, open("/tmp/deepseek-v2-lite-3.json", "w"))
PY
small=(bench --device cuda --dtype bf16 --random-weights --model /tmp/deepseek-v2-lite-3.json --kv-blocks 400 --batch-sizes 1 --prompt-len 128 --gen-len 8 --prefill-lens 16)
timeout 150 ncu --clock-control none --kernel-name regex:moe_gate_kernel --launch-skip 6 --launch-count 1 \
  --set full --import-source yes -o "$R/gate" $b "${small[@]}" > "$R/ncu-gate.log" 2>&1
echo "ncu exit $?" >> "$R/status.txt"
ncu -i "$R/gate.ncu-rep" --page details --print-details all > "$OUT/gate-details.txt" 2>&1
ncu -i "$R/gate.ncu-rep" --page source --csv --print-source sass > "$R/gate-sass.csv" 2>&1
echo "ncu source exit $?" >> "$R/status.txt"
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

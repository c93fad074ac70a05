#!/usr/bin/env bash
# Session 8, call 1 (one H200): launch/device-run.sh's test stage (every GPU test, fixture
# goldens; new: the shared experts beside the router), then V2-Lite A/B of the side branch
# (DSHPC_MOE_SHARED_SIDE=1 / 0, twice each, alternating), then an Nsight Systems timeline of a
# 3-layer V2-Lite at batch 1 (whether the branch runs beside the gate), when nsys is there.
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|actual|error" "$R/device-test/logs/gpu_tests.log" \
  | head -80 > "$OUT/test-failures.txt"
b=build-device/bin/dshpc
args="bench --device cuda --dtype bf16 --random-weights --model configs/models/deepseek-v2-lite.json --kv-blocks 4400 --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 --prefill-lens 2048"
for round in 1 2; do
  for side in 1 0; do
    n=v2l-side$side-r$round
    DSHPC_MOE_SHARED_SIDE=$side timeout 120 $b $args --json "$R/$n.json" > "$R/$n.log" 2>&1
    echo "$n exit $?" >> "$R/status.txt"
    { echo "== $n"; grep -E "^(batch|prompt|1 |16 |64 |2048 )|paths" "$R/$n.log" | cut -c1-900; } >> "$OUT/ab.txt"
  done
done
python3 - <<'PY'
import json
c = json.load(open("configs/models/deepseek-v2-lite.json")); c["num_hidden_layers"] = 3
json.dump(c, open("/tmp/deepseek-v2-lite-3.json", "w"))
PY
if command -v nsys > /dev/null; then
  small="bench --device cuda --dtype bf16 --random-weights --model /tmp/deepseek-v2-lite-3.json --kv-blocks 400 --batch-sizes 1 --prompt-len 128 --gen-len 8 --prefill-lens 16"
  for side in 1 0; do
    DSHPC_MOE_SHARED_SIDE=$side timeout 120 nsys profile --cuda-graph-trace=node -o "$R/nsys-side$side" \
      $b $small > "$R/nsys-side$side.log" 2>&1
    echo "nsys-side$side exit $?" >> "$R/status.txt"
    nsys stats --report cuda_gpu_trace --format csv -o "$R/trace-side$side" "$R/nsys-side$side.nsys-rep" \
      >> "$R/nsys-side$side.log" 2>&1
  done
else
  echo "nsys: not found" >> "$R/status.txt"
fi
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

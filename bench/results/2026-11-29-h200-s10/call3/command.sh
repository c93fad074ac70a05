#!/usr/bin/env bash
# Session 10, call 3 (one H200), at the final code: launch/device-run.sh's test stage (every GPU
# test, fixture goldens); if it passes, bench1 + hf + summary (dshpc and transformers, 7B and
# V2-Lite, same call): the run of record. Then V2-Lite batch 1 with the gate's one-CTA form
# (DSHPC_MOE_GATE_CLUSTER=0) against the default, alternated.
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
    grep -E "^(batch|prompt|1 |16 |64 |256 |512 |2048 )|paths|device:" "$R/$f.log" | cut -c1-1500 >> "$OUT/ab.txt"
  done
fi
b=build-device/bin/dshpc
v2l=(bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 --prompt-len 128 --model configs/models/deepseek-v2-lite.json --batch-sizes 1 --gen-len 128 --prefill-lens 16)
for i in 1 2; do
  for c in 0 1; do
    n=b1-cluster$c-$i
    DSHPC_MOE_GATE_CLUSTER=$c timeout 60 $b "${v2l[@]}" > "$R/$n.log" 2>&1
    echo "$n exit $?" >> "$R/status.txt"
    { echo "== $n"; grep -E "^(1 )" "$R/$n.log"; } >> "$OUT/ab.txt"
  done
done
cp "$R/status.txt" "$OUT/status.txt"
mkdir -p "$OUT/record"
cp "$R"/*.json "$R"/results/* "$OUT/record/" 2>/dev/null
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

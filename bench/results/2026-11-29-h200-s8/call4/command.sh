#!/usr/bin/env bash
# Session 8, call 4 (one H200), at 3da71eb (the shared experts beside the router; the fused
# gate_up+swiglu of call 3 removed): launch/device-run.sh's test stage (every GPU test, fixture
# goldens), then bench1 + hf + summary (dshpc and transformers, 7B and V2-Lite, same call): the
# run of record. Then V2-Lite with DSHPC_MOE_SHARED_SIDE=0 in the same call, for the A/B.
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
    grep -E "^(batch|prompt|1 |16 |64 |256 |512 |2048 )|paths|device:" "$R/$f.log" | cut -c1-1000 >> "$OUT/ab.txt"
  done
  n=v2l-noside
  DSHPC_MOE_SHARED_SIDE=0 timeout 100 build-device/bin/dshpc bench --device cuda --dtype bf16 \
    --random-weights --json "$R/$n.json" --model configs/models/deepseek-v2-lite.json \
    --kv-blocks 4400 --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 --prefill-lens 512,2048 \
    > "$R/$n.log" 2>&1
  echo "$n exit $?" >> "$R/status.txt"
  { echo "== $n"; grep -E "^(batch|prompt|1 |16 |64 |512 |2048 )|paths" "$R/$n.log" | cut -c1-1000; } >> "$OUT/ab.txt"
fi
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

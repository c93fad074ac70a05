#!/usr/bin/env bash
# Session 11, call 5 (one H200), at the commit that reads q from the qkv rows: the test stage
# (every GPU test, fixture goldens); if it passes, 7B at batches 1, 16, 64 and V2-Lite at batch 1.
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|actual|error" "$R/device-test/logs/gpu_tests.log" \
  | head -80 > "$OUT/test-failures.txt"
if grep -q "FAILED" "$R/device-test/logs/gpu_tests.log" || grep -q "| fail" "$R/device-test/summary.md"; then
  echo "a GPU test failed" | tee -a "$R/status.txt"
else
  b=build-device/bin/dshpc
  common=(bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 --prompt-len 128 --gen-len 128 --prefill-lens 16)
  timeout 60 $b "${common[@]}" --model configs/models/deepseek-llm-7b.json --batch-sizes 1,16,64 > "$R/7b.log" 2>&1
  echo "7b exit $?" >> "$R/status.txt"
  { echo "== 7b"; grep -E "^(1 |16 |64 )|paths|device:" "$R/7b.log" | cut -c1-900; } >> "$OUT/ab.txt"
  timeout 40 $b "${common[@]}" --model configs/models/deepseek-v2-lite.json --batch-sizes 1 > "$R/v2l.log" 2>&1
  echo "v2l exit $?" >> "$R/status.txt"
  { echo "== v2l"; grep -E "^(1 )" "$R/v2l.log"; } >> "$OUT/ab.txt"
fi
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

#!/usr/bin/env bash
# Session 11, call 4 (one H200), at 086ee10: launch/device-run.sh's test stage (every GPU test,
# fixture goldens); if it passes, V2-Lite with MLA decode's split combine folded into the last
# CTA (default) against its own launch (DSHPC_MLA_FOLD_COMBINE=0), batch 1 alternated three
# times and batches 16, 64 once each; then bench1 + hf + summary (run of record).
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|actual|error" "$R/device-test/logs/gpu_tests.log" \
  | head -80 > "$OUT/test-failures.txt"
if grep -q "FAILED" "$R/device-test/logs/gpu_tests.log" || grep -q "| fail" "$R/device-test/summary.md"; then
  echo "a GPU test failed: no run of record" | tee -a "$R/status.txt"
else
  b=build-device/bin/dshpc
  common=(bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 --prompt-len 128 --gen-len 128 --prefill-lens 16 --model configs/models/deepseek-v2-lite.json)
  for i in 1 2 3; do
    for f in 1 0; do
      n=v2l-b1-fold$f-$i
      DSHPC_MLA_FOLD_COMBINE=$f timeout 60 $b "${common[@]}" --batch-sizes 1 > "$R/$n.log" 2>&1
      echo "$n exit $?" >> "$R/status.txt"
      { echo "== $n"; grep -E "^(1 )" "$R/$n.log"; } >> "$OUT/ab.txt"
    done
  done
  for f in 1 0; do
    n=v2l-b16-64-fold$f
    DSHPC_MLA_FOLD_COMBINE=$f timeout 90 $b "${common[@]}" --batch-sizes 16,64 > "$R/$n.log" 2>&1
    echo "$n exit $?" >> "$R/status.txt"
    { echo "== $n"; grep -E "^(16 |64 )|paths" "$R/$n.log" | cut -c1-700; } >> "$OUT/ab.txt"
  done
  launch/device-run.sh "$R" bench1 hf summary >> "$OUT/console.log" 2>&1
  for f in bench-deepseek-llm-7b bench-deepseek-v2-lite; do
    echo "== $f" >> "$OUT/ab.txt"
    grep -E "^(batch|prompt|1 |16 |64 |256 |512 |2048 )|paths|device:" "$R/$f.log" | cut -c1-300 >> "$OUT/ab.txt"
  done
fi
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

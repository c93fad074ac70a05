#!/usr/bin/env bash
# Session 6, call 3 (one H200): launch/device-run.sh's test stage (every GPU test, fixture
# goldens) with programmatic dependent launches; then, if the GPU tests passed, bench1 + hf +
# summary (dshpc and transformers, 7B and V2-Lite) and V2-Lite at batch 1 and 16 with DSHPC_PDL=0
# (A/B). If a GPU test failed, the benches run with DSHPC_PDL=0 and say so.
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|error" "$R/device-test/logs/gpu_tests.log" | head -80 > "$OUT/test-failures.txt"
if grep -q "FAILED" "$R/device-test/logs/gpu_tests.log" || grep -q "| fail" "$R/device-test/summary.md"; then
  echo "a GPU test failed: benches with DSHPC_PDL=0" | tee -a "$R/status.txt"; export DSHPC_PDL=0
fi
launch/device-run.sh "$R" bench1 hf summary >> "$OUT/console.log" 2>&1
b=build-device/bin/dshpc
DSHPC_PDL=0 timeout 90 $b bench --device cuda --dtype bf16 --random-weights \
  --model configs/models/deepseek-v2-lite.json --kv-blocks 4400 --batch-sizes 1,16 --prompt-len 128 \
  --gen-len 64 --prefill-lens 16 --json "$R/ab-v2-lite-nopdl.json" > "$R/ab-v2-lite-nopdl.log" 2>&1
echo "ab-v2-lite-nopdl exit $?" >> "$R/status.txt"
for f in bench-deepseek-llm-7b bench-deepseek-v2-lite ab-v2-lite-nopdl; do
  echo "== $f" >> "$OUT/ab.txt"
  grep -E "^(batch|prompt|1 |16 |64 |256 |512 |2048 )|paths|device:" "$R/$f.log" | cut -c1-300 >> "$OUT/ab.txt"
done
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

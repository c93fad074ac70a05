#!/usr/bin/env bash
# Session 8, call 5 (one H200), after the review fixes (side buffers sized by reserve_step, the
# side stream's cuBLAS handle made on first need, joins on release/replay, a captured-branch
# counter, the side-branch test with fresh inputs per run and 100 tokens): the test stage, then
# V2-Lite at batches 1 and 16 (does the run of record still hold).
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|actual|error" "$R/device-test/logs/gpu_tests.log" \
  | head -80 > "$OUT/test-failures.txt"
n=v2l-b1-b16
timeout 60 build-device/bin/dshpc bench --device cuda --dtype bf16 --random-weights \
  --json "$R/$n.json" --model configs/models/deepseek-v2-lite.json --kv-blocks 4400 \
  --batch-sizes 1,16 --prompt-len 128 --gen-len 64 --prefill-lens 512 > "$R/$n.log" 2>&1
echo "$n exit $?" >> "$R/status.txt"
{ echo "== $n"; grep -E "^(batch|prompt|1 |16 |512 )|paths" "$R/$n.log" | cut -c1-1000; } >> "$OUT/ab.txt"
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

#!/usr/bin/env bash
# Session 11, call 2 (one H200): launch/device-run.sh's test stage (every GPU test, fixture
# goldens); if it passes, bench1 + hf + summary (dshpc and transformers, 7B and V2-Lite, same
# call): the run of record. Then the decode attention probe, 7B at batches 16 and 64 with the
# plan's unroll against DSHPC_DECODE_UNROLL=4 (alternated), and a kernel timeline of 7B batch 64.
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
cmake --build build-device -j "$(nproc)" --target dshpc_decode_attention_probe > "$R/probe-build.log" 2>&1
echo "probe build exit $?" >> "$R/status.txt"
for shape in "64 32 32 192" "16 32 32 192" "256 32 32 192" "1 32 32 192" "1 32 32 1024"; do
  timeout 60 build-device/bin/dshpc_decode_attention_probe $shape >> "$OUT/attention.txt" 2>&1
  echo "attention $shape exit $?" >> "$R/status.txt"
done
b=build-device/bin/dshpc
s7=(bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 --prompt-len 128 --model configs/models/deepseek-llm-7b.json --batch-sizes 16,64 --gen-len 128 --prefill-lens 16)
for i in 1 2; do
  for u in plan 4; do
    n=7b-unroll-$u-$i
    if [ $u = plan ]; then timeout 90 $b "${s7[@]}" > "$R/$n.log" 2>&1
    else DSHPC_DECODE_UNROLL=$u timeout 90 $b "${s7[@]}" > "$R/$n.log" 2>&1; fi
    echo "$n exit $?" >> "$R/status.txt"
    { echo "== $n"; grep -E "^(16 |64 )|paths" "$R/$n.log" | cut -c1-300; } >> "$OUT/ab.txt"
  done
done
mkdir -p "$R/trace"
timeout 90 $b bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 \
  --model configs/models/deepseek-llm-7b.json --batch-sizes 64 --prompt-len 128 --gen-len 128 \
  --prefill-lens 16 --trace "$R/trace/7b" --trace-steps 2 > "$R/7b-trace.log" 2>&1
echo "7b-trace exit $?" >> "$R/status.txt"
grep -vE '^\{"@timestamp' "$R/7b-trace.log" | cut -c1-200 > "$OUT/trace.txt"
cp "$R/status.txt" "$OUT/status.txt"
mkdir -p "$OUT/record"
cp "$R"/*.json "$R"/results/* "$OUT/record/" 2>/dev/null
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

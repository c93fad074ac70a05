#!/usr/bin/env bash
# Session 10, call 1 (one H200): the MoE gate as one thread block cluster and the combine's
# pairs staged in shared memory. Test stage (every GPU test); batch-1 A/B of the gate's forms
# (DSHPC_MOE_GATE_CLUSTER=0 against the default, alternated); a traced V2-Lite run (batch 1).
R=$OUT/run; mkdir -p "$R/trace"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|\[ info \]|Expected|Which is|actual|error" "$R/device-test/logs/gpu_tests.log" \
  | head -80 > "$OUT/test-failures.txt"
b=build-device/bin/dshpc
v2l=(bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 --prompt-len 128 --model configs/models/deepseek-v2-lite.json)
run() { local n=$1; shift; timeout 150 "$@" > "$R/$n.log" 2>&1; echo "$n exit $?" >> "$R/status.txt";
  { echo "== $n"; grep -E "^(batch|prompt|1 |16 |64 |512 |2048 )|paths|device:" "$R/$n.log" | cut -c1-1500; } >> "$OUT/results.txt"; }
for i in 1 2; do
  DSHPC_MOE_GATE_CLUSTER=0 run b1-onecta-$i $b "${v2l[@]}" --batch-sizes 1 --gen-len 128 --prefill-lens 16
  run b1-cluster-$i $b "${v2l[@]}" --batch-sizes 1 --gen-len 128 --prefill-lens 16
done
run v2l $b "${v2l[@]}" --batch-sizes 1,16,64 --gen-len 64 --prefill-lens 512 --json "$R/v2l.json"
timeout 150 $b "${v2l[@]}" --batch-sizes 1 --gen-len 16 --prefill-lens 16 --trace "$R/trace/v2l" \
  --trace-steps 4 > "$R/v2l-trace.log" 2>&1
echo "v2l-trace exit $?" >> "$R/status.txt"
grep -vE '^\{"@timestamp' "$R/v2l-trace.log" | cut -c1-300 > "$OUT/trace.txt"
gzip -c "$R/trace/v2l-decode-b1.json" > "$OUT/trace-v2l-decode-b1.json.gz" 2>/dev/null
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

#!/usr/bin/env bash
# Session 10, call 2 (one H200): W_UK before pdl_wait in MLA prepare; batch-1 A/B of where the
# shared experts' branch forks (DSHPC_MOE_SHARED_AFTER_GATE) and of the routed experts' early
# start (DSHPC_MOE_ROUTED_EARLY), alternated; batch 64 of the latter; traces of two forms.
R=$OUT/run; mkdir -p "$R/trace"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" build > "$OUT/console.log" 2>&1
timeout 150 build-device/bin/dshpc_gpu_tests --gtest_filter='*GpuMoe*:*Mla*' > "$R/gpu-tests.log" 2>&1
echo "gpu-tests exit $?" >> "$R/status.txt"
grep -E "^\[  (PASSED|FAILED) |FAILED|Failure|Expected|Which is" "$R/gpu-tests.log" | head -60 > "$OUT/gpu-tests.txt"
b=build-device/bin/dshpc
v2l=(bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 --prompt-len 128 --model configs/models/deepseek-v2-lite.json)
run() { local n=$1; shift; timeout 150 "$@" > "$R/$n.log" 2>&1; echo "$n exit $?" >> "$R/status.txt";
  { echo "== $n"; grep -E "^(1 |16 |64 )" "$R/$n.log" | cut -c1-200; } >> "$OUT/results.txt"; }
for i in 1 2; do
  run b1-default-$i $b "${v2l[@]}" --batch-sizes 1 --gen-len 128 --prefill-lens 16
  DSHPC_MOE_SHARED_AFTER_GATE=1 run b1-aftergate-$i $b "${v2l[@]}" --batch-sizes 1 --gen-len 128 --prefill-lens 16
  DSHPC_MOE_ROUTED_EARLY=1 run b1-early-$i $b "${v2l[@]}" --batch-sizes 1 --gen-len 128 --prefill-lens 16
  DSHPC_MOE_SHARED_AFTER_GATE=1 DSHPC_MOE_ROUTED_EARLY=1 run b1-both-$i $b "${v2l[@]}" --batch-sizes 1 --gen-len 128 --prefill-lens 16
done
run b64-default $b "${v2l[@]}" --batch-sizes 16,64 --gen-len 64 --prefill-lens 16
DSHPC_MOE_ROUTED_EARLY=1 run b64-early $b "${v2l[@]}" --batch-sizes 16,64 --gen-len 64 --prefill-lens 16
DSHPC_MOE_SHARED_AFTER_GATE=1 run b64-aftergate $b "${v2l[@]}" --batch-sizes 16,64 --gen-len 64 --prefill-lens 16
for v in default aftergate; do
  e=(); [ $v = aftergate ] && e=(env DSHPC_MOE_SHARED_AFTER_GATE=1)
  timeout 100 "${e[@]}" $b "${v2l[@]}" --batch-sizes 1 --gen-len 16 --prefill-lens 16 --trace "$R/trace/$v" \
    --trace-steps 4 > "$R/trace-$v.log" 2>&1
  echo "trace-$v exit $?" >> "$R/status.txt"
  grep -vE '^\{"@timestamp' "$R/trace-$v.log" | cut -c1-200 | head -24 >> "$OUT/trace.txt"
done
tar -czf "$OUT/traces.tgz" -C "$R/trace" default-decode-b1.json aftergate-decode-b1.json
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

#!/usr/bin/env bash
# Session 7, call 1 (one H200): launch/device-run.sh's test stage (every GPU test and fixture
# golden: verifies session 6's last three commits, untested on a GPU, and this session's wide
# decode attention and L2 prefetch), then A/B benches in one build:
#   DeepSeek-LLM-7B decode at batch 1, 16, 64 with the wide decode attention (default) and with
#   DSHPC_DECODE_WIDE=0;
#   DeepSeek-V2-Lite decode at batch 1, 16, 64 with the shared experts' L2 prefetch as
#   evict_last (default), plain (DSHPC_L2_PREFETCH=1) and off (=0);
# and Nsight Compute: the 7B decode attention at batch 64 in both forms (3 layers), every kernel
# of a 3-layer V2-Lite at batch 1 with the prefetch on and off.
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" test > "$OUT/console.log" 2>&1
cp "$R/device-test/summary.md" "$OUT/device-test-summary.md"
grep -E "FAILED|Failure|Expected|Which is|actual|error" "$R/device-test/logs/gpu_tests.log" \
  | head -80 > "$OUT/test-failures.txt"
b=build-device/bin/dshpc
common="--device cuda --dtype bf16 --random-weights --prompt-len 128 --gen-len 128 --prefill-lens 16"
ab() {  # ab NAME MODEL VAR=VALUE...
  local name=$1 model=$2; shift 2
  env "$@" timeout 100 $b bench $common --model "configs/models/$model.json" --kv-blocks 4400 \
    --batch-sizes 1,16,64 --json "$R/$name.json" > "$R/$name.log" 2>&1
  echo "$name exit $?" >> "$R/status.txt"
  { echo "== $name ($*)"; grep -E "^(batch|1 |16 |64 )|paths|device:" "$R/$name.log" | cut -c1-600; } >> "$OUT/ab.txt"
}
ab 7b-wide deepseek-llm-7b DSHPC_DECODE_WIDE=1
ab 7b-onekey deepseek-llm-7b DSHPC_DECODE_WIDE=0
ab v2l-evict-last deepseek-v2-lite DSHPC_L2_PREFETCH=2
ab v2l-plain deepseek-v2-lite DSHPC_L2_PREFETCH=1
ab v2l-off deepseek-v2-lite DSHPC_L2_PREFETCH=0
python3 - <<'PY'
import json
for name in ("deepseek-v2-lite", "deepseek-llm-7b"):
    c = json.load(open(f"configs/models/{name}.json")); c["num_hidden_layers"] = 3
    json.dump(c, open(f"/tmp/{name}-3.json", "w"))
PY
prof() {  # prof NAME MODEL BATCH KV_BLOCKS KERNEL_FILTER VAR=VALUE...
  local name=$1 model=$2 batch=$3 blocks=$4 filter=$5; shift 5
  env "$@" timeout 120 ncu --clock-control none --cache-control none --csv --log-file "$R/ncu-$name.csv" \
    $filter --metrics gpu__time_duration.sum,dram__bytes_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread \
    $b bench --device cuda --dtype bf16 --random-weights --model "$model" --kv-blocks "$blocks" \
    --batch-sizes "$batch" --prompt-len 128 --gen-len 3 --prefill-lens 16 > "$R/ncu-$name.log" 2>&1
  echo "ncu-$name exit $?" >> "$R/status.txt"
}
prof 7b-b64-wide /tmp/deepseek-llm-7b-3.json 64 1200 "-k regex:decode_attention" DSHPC_DECODE_WIDE=1
prof 7b-b64-onekey /tmp/deepseek-llm-7b-3.json 64 1200 "-k regex:decode_attention" DSHPC_DECODE_WIDE=0
prof v2l-b1-prefetch /tmp/deepseek-v2-lite-3.json 1 400 "" DSHPC_L2_PREFETCH=2
prof v2l-b1-noprefetch /tmp/deepseek-v2-lite-3.json 1 400 "" DSHPC_L2_PREFETCH=0
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

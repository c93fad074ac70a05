#!/usr/bin/env bash
# One call on the GPU machine: build and test (launch/device-test.sh), then the benchmarks
# beside Hugging Face transformers on the same GPU. Everything lands in OUT_DIR.
#   launch/device-run.sh OUT_DIR
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: $0 OUT_DIR}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# shellcheck source=/dev/null
source "$root/launch/device-deps.sh" "$root/.device/debs" 2> "$out/deps.log"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1

export DSHPC_BUILD_TARGETS=${DSHPC_BUILD_TARGETS:-"dshpc dshpc_gpu_tests"}
export DSHPC_JOBS=${DSHPC_JOBS:-$(nproc)}
timeout "${DSHPC_TEST_TIMEOUT_S:-300}" "$root/launch/device-test.sh" "$out/device-test" \
  > "$out/device-test.log" 2>&1
echo "device-test exit $?" >> "$out/status.txt"

dshpc=${DSHPC_DEVICE_BUILD_DIR:-$root/build-device}/bin/dshpc
if [ "${DSHPC_SKIP_BENCH:-0}" != 1 ]; then
bench() {  # bench NAME ARGS...
  local name=$1; shift
  timeout "${DSHPC_BENCH_TIMEOUT_S:-85}" "$dshpc" bench --device cuda --dtype bf16 --random-weights \
    --json "$out/$name.json" "$@" > "$out/$name.log" 2>&1
  echo "$name exit $?" >> "$out/status.txt"
}
bench bench-deepseek-llm-7b --model "$root/configs/models/deepseek-llm-7b.json" --kv-blocks 4400 \
  --batch-sizes 1,16,64,256 --prompt-len 128 --gen-len 64 --prefill-lens 512,2048
bench bench-deepseek-v2-lite --model "$root/configs/models/deepseek-v2-lite.json" --kv-blocks 4400 \
  --batch-sizes 1,64 --prompt-len 128 --gen-len 32 --prefill-lens 512
timeout "${DSHPC_HF_TIMEOUT_S:-100}" python3 "$root/bench/hf_transformers_bench.py" \
  --config "$root/configs/models/deepseek-llm-7b.json" --batch-sizes 1,16,64 \
  --prompt-len 128 --gen-len 128 --json "$out/hf-deepseek-llm-7b.json" > "$out/hf-deepseek-llm-7b.log" 2>&1
echo "hf exit $?" >> "$out/status.txt"
fi

# dshpc serve on GPUs: DeepSeek-LLM-7B shapes, random weights, tp 2, queried with curl.
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  mpirun --allow-run-as-root -np 2 "$dshpc" serve --device cuda --dtype bf16 \
    --model "$root/configs/models/deepseek-llm-7b.json" --random-weights --tp 2 \
    --host 127.0.0.1 --port 18000 > "$out/serve-7b-tp2.log" 2>&1 &
  server=$!
  for _ in $(seq 1 900); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18000/health)" = 200 ] && break
    sleep 0.2
  done
  {
    echo '$ curl /health'; curl -s http://127.0.0.1:18000/health; echo
    echo '$ curl /v1/completions (8 tokens)'
    curl -s http://127.0.0.1:18000/v1/completions -H 'Content-Type: application/json' \
      -d '{"model":"deepseek-llm-7b","prompt":"The capital of France is","max_tokens":8}'; echo
    echo '$ curl /v1/chat/completions stream (8 tokens)'
    curl -sN http://127.0.0.1:18000/v1/chat/completions -H 'Content-Type: application/json' \
      -d '{"model":"deepseek-llm-7b","messages":[{"role":"user","content":"Hi"}],"max_tokens":8,"stream":true}'
  } > "$out/serve-7b-tp2-curl.txt" 2>&1
  kill -USR1 $server; wait $server
  echo "serve exit $?" >> "$out/status.txt"
fi
cat "$out/status.txt"

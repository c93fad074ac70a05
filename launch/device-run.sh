#!/usr/bin/env bash
# The GPU machine's full run, in stages that each fit one device call (10 minutes):
#
#   launch/device-run.sh OUT_DIR [STAGE...]
#
# Stages (default: all but build, in this order):
#   build    configure and build dshpc and the GPU tests only (test builds as well)
#   test     build, then launch/device-test.sh (GPU op tests, fixture parity in f32 and bf16 on
#            every layout the visible GPUs allow, two ranks on one GPU refused)
#   serve    dshpc serve on 2 GPUs (DeepSeek-LLM-7B shapes, random weights, tp 2) queried with
#            curl, then drained with SIGUSR1: the job must exit 0 within 60 s
#   bench1   dshpc bench, one GPU: DeepSeek-LLM-7B and DeepSeek-V2-Lite shapes
#   hf       Hugging Face transformers, same shapes, lengths and batch sizes, same GPU
#   benchtp  dshpc bench, several GPUs: 7B with tp 2, 67B with tp 4 (when 4 GPUs are visible)
#   allreduce  the tensor-parallel all-reduce test on 2 and 4 GPUs (one-shot CUDA IPC and NCCL)
#   summary  bench/summarize.py: bench/results-style JSON per configuration and the chart
# Everything lands in OUT_DIR; OUT_DIR/status.txt has one line per step with its exit code.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: $0 OUT_DIR [test serve bench1 hf benchtp summary]}
shift
stages=${*:-test serve bench1 hf benchtp summary}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
# shellcheck source=/dev/null
source "$root/launch/device-deps.sh" "$root/.device/debs" 2> "$out/deps.log"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
build=${DSHPC_DEVICE_BUILD_DIR:-$root/build-device}
dshpc=$build/bin/dshpc
status=$out/status.txt
touch "$status"
step() {  # step NAME TIMEOUT_S COMMAND...: runs it, logs to OUT/NAME.log, records the exit code
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "$name exit $? ($((SECONDS - started)) s)" | tee -a "$status"
}
has() { [[ " $stages " == *" $1 "* ]]; }
bench() {  # bench NAME RANKS ARGS...
  local name=$1 ranks=$2; shift 2
  local cmd=("$dshpc" bench --device cuda --dtype bf16 --random-weights --json "$out/$name.json" "$@")
  if [ "$ranks" -gt 1 ]; then cmd=(mpirun --allow-run-as-root -np "$ranks" "${cmd[@]}"); fi
  step "$name" "${DSHPC_BENCH_TIMEOUT_S:-200}" "${cmd[@]}"
}
model7b=$root/configs/models/deepseek-llm-7b.json
model67b=$root/configs/models/deepseek-llm-67b.json
modelv2=$root/configs/models/deepseek-v2-lite.json

if has build; then
  step configure 300 cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DDSHPC_GPU_TESTS=ON
  step build 600 cmake --build "$build" -j "$(nproc)" --target dshpc dshpc_gpu_tests \
    dshpc_gpu_all_reduce_test
fi

if has test; then
  export DSHPC_BUILD_TARGETS=${DSHPC_BUILD_TARGETS:-"dshpc dshpc_gpu_tests dshpc_gpu_all_reduce_test"}
  export DSHPC_JOBS=${DSHPC_JOBS:-$(nproc)}
  step device-test "${DSHPC_TEST_TIMEOUT_S:-420}" "$root/launch/device-test.sh" "$out/device-test"
  grep -E "steps|FAILED|fail " "$out/device-test/summary.md" 2> /dev/null | head -20
fi

if has allreduce; then
  for np in 2 4; do
    [ "$gpus" -ge "$np" ] || continue
    step "all-reduce-np$np" 120 mpirun --allow-run-as-root --bind-to none -np "$np" \
      "$build/bin/dshpc_gpu_all_reduce_test" --expect-ipc 1
  done
fi

if has serve && [ "$gpus" -ge 2 ]; then
  # DSHPC_COLLECTIVE_TIMEOUT_S bounds any stuck collective, so a hang shows as an error naming it.
  DSHPC_COLLECTIVE_TIMEOUT_S=30 mpirun --allow-run-as-root -np 2 --timestamp-output "$dshpc" serve \
    --device cuda --dtype bf16 --model "$model7b" --random-weights --tp 2 \
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
    echo '$ curl /v1/completions sampled (temperature 0.8, top_p 0.9, seed 7), twice'
    for _ in 1 2; do
      curl -s http://127.0.0.1:18000/v1/completions -H 'Content-Type: application/json' \
        -d '{"model":"deepseek-llm-7b","prompt":"Once","max_tokens":8,"temperature":0.8,"top_p":0.9,"seed":7}'
      echo
    done
    echo '$ curl /v1/chat/completions stream (8 tokens)'
    curl -sN http://127.0.0.1:18000/v1/chat/completions -H 'Content-Type: application/json' \
      -d '{"model":"deepseek-llm-7b","messages":[{"role":"user","content":"Hi"}],"max_tokens":8,"stream":true}'
  } > "$out/serve-7b-tp2-curl.txt" 2>&1
  # Drain: a stream in flight, then SIGUSR1 to mpirun (forwarded to every rank).
  curl -sN http://127.0.0.1:18000/v1/completions -H 'Content-Type: application/json' \
    -d '{"model":"deepseek-llm-7b","prompt":"x","max_tokens":200,"stream":true,"ignore_eos":true}' \
    > "$out/serve-drain-stream.txt" 2>&1 &
  curl -s http://127.0.0.1:18000/metrics > "$out/serve-metrics.txt" 2>&1
  sleep 0.5
  # Open MPI 4.1.6's mpirun on the GPU machine did not forward SIGUSR1 to the ranks (rank 0 never
  # logged a drain; its signal thread sat in sigtimedwait), so the signal goes to rank 0 itself, as
  # Slurm's --signal delivers it to every task.
  rank0=$(for p in $(pgrep -x dshpc); do
    tr '\0' '\n' < "/proc/$p/environ" 2> /dev/null | grep -qx OMPI_COMM_WORLD_RANK=0 && echo "$p"
  done | head -1)
  echo "serve-drain: SIGUSR1 to rank 0 (pid ${rank0:-none}; mpirun $server)" >> "$status"
  kill -USR1 "${rank0:-$server}"
  started=$SECONDS
  for _ in $(seq 1 600); do kill -0 $server 2> /dev/null || break; sleep 0.1; done
  if kill -0 $server 2> /dev/null; then
    echo "serve-drain: still running after $((SECONDS - started)) s; thread states:" >> "$status"
    for pid in $(pgrep -x dshpc); do
      echo "== pid $pid"; for t in /proc/$pid/task/*; do
        echo "$(cat "$t/comm") $(cat "$t/wchan" 2> /dev/null)"; done
    done > "$out/serve-hang-threads.txt" 2>&1
    command -v cuda-gdb > /dev/null && for pid in $(pgrep -x dshpc); do
      timeout 30 cuda-gdb -p "$pid" -batch -ex "thread apply all bt 12" 2>&1 | tail -200
    done > "$out/serve-hang-stacks.txt"
    kill -9 $server; wait $server
    echo "serve exit killed" >> "$status"
  else
    wait $server
    echo "serve exit $? (drained in $((SECONDS - started)) s)" | tee -a "$status"
  fi
  tail -c 400 "$out/serve-drain-stream.txt" >> "$out/serve-7b-tp2-curl.txt"
fi

if has bench1; then
  bench bench-deepseek-llm-7b 1 --model "$model7b" --kv-blocks 4400 \
    --batch-sizes 1,16,64,256 --prompt-len 128 --gen-len 128 --prefill-lens 512,2048
  bench bench-deepseek-v2-lite 1 --model "$modelv2" --kv-blocks 4400 \
    --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 --prefill-lens 512,2048
fi

if has hf; then
  step hf-deepseek-llm-7b "${DSHPC_HF_TIMEOUT_S:-150}" python3 "$root/bench/hf_transformers_bench.py" \
    --config "$model7b" --batch-sizes 1,16,64 --prompt-len 128 --gen-len 128 \
    --json "$out/hf-deepseek-llm-7b.json"
  step hf-deepseek-v2-lite "${DSHPC_HF_TIMEOUT_S:-150}" python3 "$root/bench/hf_transformers_bench.py" \
    --config "$modelv2" --batch-sizes 1,64 --prompt-len 128 --gen-len 64 \
    --json "$out/hf-deepseek-v2-lite.json"
fi

if has benchtp; then
  if [ "$gpus" -ge 2 ]; then
    bench bench-deepseek-llm-7b-tp2 2 --model "$model7b" --tp 2 --kv-blocks 4400 \
      --batch-sizes 1,16,64 --prompt-len 128 --gen-len 128 --prefill-lens 2048
    # The same with the opt-in one-shot CUDA IPC all-reduce, for comparison; not summarised (the
    # name does not start with bench-).
    export DSHPC_IPC_ALL_REDUCE=1
    bench ab-deepseek-llm-7b-tp2-ipc 2 --model "$model7b" --tp 2 \
      --kv-blocks 4400 --batch-sizes 1,16 --prompt-len 128 --gen-len 128 --prefill-lens 512
    unset DSHPC_IPC_ALL_REDUCE
  fi
  if [ "$gpus" -ge 4 ]; then
    bench bench-deepseek-llm-67b-tp4 4 --model "$model67b" --tp 4 --kv-blocks 2000 \
      --batch-sizes 1,16,64 --prompt-len 128 --gen-len 64 --prefill-lens 2048
  fi
fi

if has summary; then
  mkdir -p "$out/results"
  for json in "$out"/bench-*.json; do
    [ -e "$json" ] || continue
    name=$(basename "$json" .json)
    model=${name#bench-}
    model=${model%-tp[0-9]}
    hf=$out/hf-$model.json
    chart=()
    [ "$name" = "bench-$model" ] && [ -e "$hf" ] && chart=(--chart "$out/results/throughput-$model.png")
    step "summary-$name" 120 python3 "$root/bench/summarize.py" --dshpc "$json" --hf "$hf" \
      --device h200 --out-dir "$out/results" "${chart[@]}"
  done
fi
cat "$status"

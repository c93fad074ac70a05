#!/usr/bin/env bash
# One short device call (little device time left): build, the new GPU tests, the all-reduce test,
# fixture goldens of the MLA/MoE models (graphs now on) on 1 and 2 GPUs, then benchmarks. Every
# step appends to $OUT/all.log so that a cut-off run still reports what it did.
root=$(pwd); log=$OUT/all.log; res=$OUT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
source launch/device-deps.sh .device/debs 2>> "$log"
b=$root/build-device
t0=$SECONDS
s() { local lim=$1; shift; echo "=== $* (t=$((SECONDS - t0)) s)" >> "$log"; timeout "$lim" "$@" >> "$log" 2>&1; echo "=== exit $? (t=$((SECONDS - t0)) s)" >> "$log"; }
nvidia-smi -L >> "$log"
s 60 cmake -S . -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CUDA_ARCHITECTURES=90 -DDSHPC_GPU_TESTS=ON
s 120 cmake --build "$b" -j "$(nproc)" --target dshpc dshpc_gpu_tests dshpc_gpu_all_reduce_test
grep -E "error" "$log" | head -20 >> "$OUT/errors.txt"
s 60 "$b/bin/dshpc_gpu_tests" --gtest_filter='GpuMoe*:GpuGraphs*:*MatmulHeads*:GpuModel*' --gtest_brief=1
s 40 mpirun --allow-run-as-root --bind-to none -np 2 "$b/bin/dshpc_gpu_all_reduce_test" --expect-ipc 1
fx=tests/fixtures/models
for m in deepseek-v2-lite-tiny deepseek-v3-tiny; do
  s 20 "$b/bin/dshpc" eval-golden --model $fx/$m --golden $fx/$m/golden.safetensors --device cuda --dtype f32
  s 25 mpirun --allow-run-as-root --bind-to none -np 2 "$b/bin/dshpc" eval-golden --model $fx/$m --golden $fx/$m/golden.safetensors --device cuda --dtype f32 --tp 2
done
s 25 mpirun --allow-run-as-root --bind-to none -np 2 "$b/bin/dshpc" eval-golden --model $fx/llama-mha --golden $fx/llama-mha/golden.safetensors --device cuda --dtype f32 --tp 2
bench() { local name=$1 np=$2; shift 2; local c=("$b/bin/dshpc" bench --device cuda --dtype bf16 --random-weights --json "$res/$name.json" "$@"); [ "$np" -gt 1 ] && c=(mpirun --allow-run-as-root -np "$np" "${c[@]}"); s 60 "${c[@]}"; }
m7=configs/models/deepseek-llm-7b.json; mv2=configs/models/deepseek-v2-lite.json
bench bench-7b-tp2 2 --model $m7 --tp 2 --kv-blocks 4400 --batch-sizes 1,16 --prompt-len 128 --gen-len 128 --prefill-lens 512
bench bench-7b-tp1 1 --model $m7 --kv-blocks 4400 --batch-sizes 1 --prompt-len 128 --gen-len 128 --prefill-lens 512
bench bench-v2-lite 1 --model $mv2 --kv-blocks 4400 --batch-sizes 1,64 --prompt-len 128 --gen-len 64 --prefill-lens 512
export DSHPC_IPC_ALL_REDUCE=0
bench ab-7b-tp2-nccl 2 --model $m7 --tp 2 --kv-blocks 4400 --batch-sizes 1 --prompt-len 128 --gen-len 128 --prefill-lens 512
echo "=== done (t=$((SECONDS - t0)) s)" >> "$log"

#!/usr/bin/env bash
# Session 6, call 5 (one H200): the dense decode attention's keys per warp iteration, 4 (the
# default build) against 8 (a second build with -DDSHPC_DECODE_UNROLL=8): the attention, graph
# and model GPU tests on the second build, DeepSeek-LLM-7B decode at batch 1, 16, 64 on both. If
# the 8-key build passed its tests and is faster at batch 64, it also runs bench1 + hf + summary
# (dshpc and transformers, 7B and V2-Lite, same call) as the run of record.
root=$(pwd); R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source launch/device-deps.sh "$root/.device/debs" > "$R/deps.log" 2>&1
cfg() { cmake -S . -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DDSHPC_GPU_TESTS=ON "${@:2}" > "$R/configure-$(basename $1).log" 2>&1 &&
  cmake --build "$1" -j 8 --target dshpc dshpc_gpu_tests > "$R/build-$(basename $1).log" 2>&1; }
cfg build-device & cfg build-u8 -DCMAKE_CUDA_FLAGS=-DDSHPC_DECODE_UNROLL=8 & wait
echo "builds: $(ls build-device/bin/dshpc build-u8/bin/dshpc 2>&1 | tr '\n' ' ')" >> "$R/status.txt"
timeout 120 build-u8/bin/dshpc_gpu_tests --gtest_filter='*Attention*:*Graph*:*Model*:*Mla*' \
  > "$R/u8-tests.log" 2>&1
echo "u8-tests exit $?" >> "$R/status.txt"; tail -3 "$R/u8-tests.log" >> "$R/status.txt"
for v in device u8; do
  timeout 90 build-$v/bin/dshpc bench --device cuda --dtype bf16 --random-weights \
    --model configs/models/deepseek-llm-7b.json --kv-blocks 4400 --batch-sizes 1,16,64 \
    --prompt-len 128 --gen-len 128 --prefill-lens 16 --json "$R/ab-7b-$v.json" > "$R/ab-7b-$v.log" 2>&1
  echo "ab-7b-$v exit $?" >> "$R/status.txt"
  grep -E "^(batch|1 |16 |64 )|device:" "$R/ab-7b-$v.log" >> "$R/status.txt"
done
faster=$(python3 -c "
import json
t = lambda f: [d['tokens_per_s'] for d in json.load(open(f))['decode'] if d['batch'] == 64][0]
print(int(t('$R/ab-7b-u8.json') > 1.01 * t('$R/ab-7b-device.json')))" 2>> "$R/status.txt")
if grep -q "u8-tests exit 0" "$R/status.txt" && [ "$faster" = 1 ]; then
  echo "8 keys: tests passed and faster at batch 64: run of record with build-u8" >> "$R/status.txt"
  DSHPC_DEVICE_BUILD_DIR=$root/build-u8 launch/device-run.sh "$R" bench1 hf summary > "$R/record.log" 2>&1
fi
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

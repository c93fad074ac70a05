#!/usr/bin/env bash
# Session 10, call 4 (one H200), at 67af04a: build dshpc; kernel timelines of DeepSeek-LLM-7B
# at batches 16 and 64 (where dshpc runs at 93-95 % of its bound), for the next step.
R=$OUT/run; mkdir -p "$R/trace"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source launch/device-deps.sh "$PWD/.device/debs" > "$R/deps.log" 2>&1
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CUDA_ARCHITECTURES=90 \
  > "$R/configure.log" 2>&1
cmake --build build-device -j "$(nproc)" --target dshpc > "$R/build.log" 2>&1
echo "build exit $?" >> "$R/status.txt"
timeout 120 build-device/bin/dshpc bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 \
  --model configs/models/deepseek-llm-7b.json --batch-sizes 16,64 --prompt-len 128 --gen-len 64 \
  --prefill-lens 16 --trace "$R/trace/7b" --trace-steps 2 > "$R/7b-trace.log" 2>&1
echo "7b-trace exit $?" >> "$R/status.txt"
grep -vE '^\{"@timestamp' "$R/7b-trace.log" | cut -c1-200 > "$OUT/trace.txt"
gzip -c "$R/trace/7b-decode-b64.json" > "$OUT/trace-7b-decode-b64.json.gz" 2>/dev/null
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

#!/usr/bin/env bash
# Session 11, call 1 (one H200): the decode attention's forms and cuBLAS(Lt)'s algorithms for
# DeepSeek-LLM-7B's decode shapes, through the two probes in bench/probes.
R=$OUT/run; mkdir -p "$R"
source launch/device-deps.sh "$PWD/.device/debs" > "$R/deps.log" 2>&1
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  > "$R/configure.log" 2>&1
cmake --build build-device -j "$(nproc)" --target dshpc_decode_attention_probe dshpc_gemm_probe \
  > "$R/build.log" 2>&1
echo "build exit $?" >> "$R/status.txt"
P=build-device/bin
for shape in "64 32 32 192" "16 32 32 192" "256 32 32 192" "64 32 32 1024" "1 32 32 1024"; do
  timeout 60 $P/dshpc_decode_attention_probe $shape >> "$OUT/attention.txt" 2>&1
  echo "attention $shape exit $?" >> "$R/status.txt"
done
timeout 200 $P/dshpc_gemm_probe > "$OUT/gemm.txt" 2>&1
echo "gemm exit $?" >> "$R/status.txt"
cp "$R/status.txt" "$OUT/status.txt"
tail -30 "$R/build.log" > "$OUT/build-tail.txt"

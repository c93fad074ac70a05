#!/usr/bin/env bash
# Session 11, call 3 (one H200), at ab9689b (the code of call 2): a second run of bench1 + hf +
# summary (dshpc and transformers, 7B and V2-Lite, same call) to show the spread of the run of
# record, then V2-Lite batch 1 three more times and 7B batch 64 twice more.
R=$OUT/run; mkdir -p "$R"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/device-run.sh "$R" build bench1 hf summary > "$OUT/console.log" 2>&1
for f in bench-deepseek-llm-7b bench-deepseek-v2-lite; do
  echo "== $f" >> "$OUT/ab.txt"
  grep -E "^(batch|prompt|1 |16 |64 |256 |512 |2048 )|paths|device:" "$R/$f.log" | cut -c1-300 >> "$OUT/ab.txt"
done
b=build-device/bin/dshpc
common=(bench --device cuda --dtype bf16 --random-weights --kv-blocks 4400 --prompt-len 128 --gen-len 128 --prefill-lens 16)
for i in 1 2 3; do
  n=v2l-b1-$i
  timeout 60 $b "${common[@]}" --model configs/models/deepseek-v2-lite.json --batch-sizes 1 > "$R/$n.log" 2>&1
  echo "$n exit $?" >> "$R/status.txt"
  { echo "== $n"; grep -E "^(1 )" "$R/$n.log"; } >> "$OUT/ab.txt"
done
for i in 1 2; do
  n=7b-b64-$i
  timeout 90 $b "${common[@]}" --model configs/models/deepseek-llm-7b.json --batch-sizes 64 > "$R/$n.log" 2>&1
  echo "$n exit $?" >> "$R/status.txt"
  { echo "== $n"; grep -E "^(64 )" "$R/$n.log"; } >> "$OUT/ab.txt"
done
cp "$R/status.txt" "$OUT/status.txt"
tar -czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$R"

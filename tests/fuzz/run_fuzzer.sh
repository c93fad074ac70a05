#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time over its committed corpus:
#   run_fuzzer.sh BINARY FUZZ_SOURCE_DIR TARGET WORK_DIR SECONDS
# The committed corpus (FUZZ_SOURCE_DIR/corpus/TARGET) is read only; what the run discovers goes
# to WORK_DIR/TARGET/corpus and a crashing input to WORK_DIR/TARGET/crash-*, whose path is
# printed. Exit status: 0 when no input crashed, hung or broke an oracle.
set -euo pipefail
binary=$1 source=$2 target=$3 work=$4 seconds=$5
seeds=$source/corpus/$target
[ -d "$seeds" ] || { echo "run_fuzzer.sh: no corpus at $seeds" >&2; exit 2; }
out=$work/$target
mkdir -p "$out/corpus"
args=(-max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -max_len=8192
      -artifact_prefix="$out/" -print_final_stats=1)
[ -f "$source/$target.dict" ] && args+=(-dict="$source/$target.dict")
# libFuzzer runs every seed (old crashes included) before it starts mutating.
exec "$binary" "${args[@]}" "$out/corpus" "$seeds"

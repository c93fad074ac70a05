#!/usr/bin/env bash
# check_rank_weights.sh MPIRUN_PREFIX... -- DSHPC MODEL_DIR TP PP
# Runs eval-golden on one rank and under tp × pp ranks, reads each rank's resident weight bytes
# from the start-up report in the JSON line, and checks that every rank holds about 1/(tp × pp)
# of the model: at most 1.3 × total / (tp × pp) (stages differ by the embedding, the output head
# and uneven layer counts; replicated norms and latent projections are small).
set -euo pipefail
launcher=()
while [ "$1" != "--" ]; do launcher+=("$1"); shift; done
shift
dshpc=$1 model=$2 tp=$3 pp=$4
np=$((tp * pp))
golden=(--model "$model" --golden "$model/golden.safetensors")
total=$("$dshpc" eval-golden "${golden[@]}" 2>/dev/null | jq '.ranks[0].weight_bytes')
line=$("${launcher[@]}" -np "$np" "$dshpc" eval-golden "${golden[@]}" --tp "$tp" --pp "$pp" 2>/dev/null)
echo "$line" | jq -c '.ranks[] | {rank, tp, pp, layer_begin, layer_end, weight_bytes}'
ok=$(echo "$line" | jq --argjson total "$total" --argjson n "$np" \
  '.ok and (.ranks | length == $n) and all(.ranks[]; .weight_bytes <= 1.3 * $total / $n)')
max=$(echo "$line" | jq '[.ranks[].weight_bytes] | max')
echo "total $total bytes on one rank; largest rank $max bytes; bound $(jq -n "1.3 * $total / $np") bytes"
[ "$ok" = "true" ] || { echo "FAIL: a rank holds more than its share (or eval-golden failed)"; exit 1; }
echo "ok"

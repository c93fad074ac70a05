#!/usr/bin/env bash
# compare_h5_golden.sh MPIRUN_PREFIX... -- DSHPC MODEL_DIR MODEL_H5 TP PP
# eval-golden under tp × pp from the safetensors directory and from its HDF5 conversion: both
# must pass, and their JSON lines must be identical but for the model path (the same weights,
# bit for bit, through the same loader).
set -euo pipefail
launcher=()
while [ "$1" != "--" ]; do launcher+=("$1"); shift; done
shift
dshpc=$1 dir=$2 h5=$3 tp=$4 pp=$5
np=$((tp * pp))
run() {
  "${launcher[@]}" -np "$np" "$dshpc" eval-golden --model "$1" --golden "$dir/golden.safetensors" \
    --tp "$tp" --pp "$pp" 2>/dev/null | jq -c 'del(.model)'
}
from_dir=$(run "$dir")
from_h5=$(run "$h5")
echo "safetensors: $from_dir"
echo "hdf5:        $from_h5"
[ "$(echo "$from_dir" | jq .ok)" = "true" ] || { echo "FAIL: eval-golden from $dir failed"; exit 1; }
[ "$from_dir" = "$from_h5" ] || { echo "FAIL: the HDF5 conversion evaluates differently"; exit 1; }
echo "ok: identical under tp $tp × pp $pp"

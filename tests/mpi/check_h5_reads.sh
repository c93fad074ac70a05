#!/usr/bin/env bash
# check_h5_reads.sh MPIRUN_PREFIX... -- DSHPC NP OUT_JSON MODEL_DIR MODEL_H5 LAYOUTS
# dshpc bench-load of a safetensors directory and its HDF5 conversion in several layouts: every
# load succeeds and no rank reads a tensor it does not hold (bench-load's own audit, exit 0);
# with HDF5 every rank reads exactly the bytes of its slices (the chunks align with them: no
# excess) and as many bytes as from safetensors.
set -euo pipefail
launcher=()
while [ "$1" != "--" ]; do launcher+=("$1"); shift; done
shift
dshpc=$1 np=$2 out=$3 dir=$4 h5=$5 layouts=$6
"${launcher[@]}" -np "$np" "$dshpc" bench-load --models "$dir,$h5" --layouts "$layouts" \
  --json "$out" > /dev/null
jq -c '.[] | {format, tp, pp, load_s_max, bytes_read_total, ok,
               ranks: [.ranks[] | {rank, bytes_read, owned_bytes, excess_bytes}]}' "$out"
jq -e 'length > 0 and all(.[]; .ok)' "$out" > /dev/null ||
  { echo "FAIL: a load failed or a rank read what it does not hold"; exit 1; }
jq -e '[.[] | select(.format == "hdf5") | .ranks[]]
       | length > 0 and all(.[]; .bytes_read > 0 and .excess_bytes == 0 and .bytes_read == .owned_bytes)' \
  "$out" > /dev/null || { echo "FAIL: an HDF5 rank read more than its slices"; exit 1; }
jq -e 'group_by([.tp, .pp]) | all(.[]; length == 2 and
         ([.[0].ranks[].bytes_read] == [.[1].ranks[].bytes_read]))' "$out" > /dev/null ||
  { echo "FAIL: HDF5 and safetensors loads read different byte counts"; exit 1; }
echo "ok"

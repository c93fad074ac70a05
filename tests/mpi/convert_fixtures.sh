#!/usr/bin/env bash
# convert_fixtures.sh DSHPC FIXTURES_DIR OUT_DIR MODEL... : each fixture to OUT_DIR/MODEL.h5.
set -euo pipefail
dshpc=$1 fixtures=$2 out=$3
shift 3
mkdir -p "$out"
for model in "$@"; do
  "$dshpc" convert --from "$fixtures/$model" --to "$out/$model.h5"
done

#!/usr/bin/env bash
# make_bad_h5.sh DSHPC H5_TOOL OUT_DIR FIXTURE_DIR
# Converts a fixture to HDF5 and makes damaged copies for the corruption tests: a flipped byte in
# a tensor's chunk, a truncated file, a missing tensor, a wrong shape, a newer format version, a
# foreign HDF5 file; and a safetensors copy with a tensors.sha256 manifest, plus one with a
# flipped byte under that manifest.
set -euo pipefail
dshpc=$1 tool=$2 out=$3 good=$4
rm -rf "$out"
mkdir -p "$out"
"$dshpc" convert --from "$good" --to "$out/good.h5"
cp "$out/good.h5" "$out/flipped.h5"
"$tool" flip "$out/flipped.h5" model.layers.1.mlp.down_proj.weight
cp "$out/good.h5" "$out/truncated.h5"
truncate -s $(($(stat -c %s "$out/good.h5") / 2)) "$out/truncated.h5"
cp "$out/good.h5" "$out/missing.h5"
"$tool" delete "$out/missing.h5" model.layers.2.self_attn.k_proj.weight
cp "$out/good.h5" "$out/wrong-shape.h5"
"$tool" reshape "$out/wrong-shape.h5" model.layers.0.mlp.up_proj.weight
cp "$out/good.h5" "$out/newer.h5"
"$tool" version "$out/newer.h5" 2
"$tool" foreign "$out/foreign.h5"
mkdir -p "$out/st-manifest"
cp "$good"/config.json "$good"/model.safetensors "$out/st-manifest/"
"$dshpc" validate "$out/st-manifest" --write-manifest
cp -r "$out/st-manifest" "$out/st-flipped"
"$tool" flip-safetensors "$out/st-flipped/model.safetensors" model.layers.1.self_attn.o_proj.weight
# A checkpoint whose stored tokenizer is one dshpc cannot load: serve and batch read it from the
# file when --tokenizer is not given.
mkdir -p "$out/st-badtok"
cp "$good"/config.json "$good"/model.safetensors "$out/st-badtok/"
echo '{"version": "1.0", "model": {"type": "Unigram", "vocab": []}}' > "$out/st-badtok/tokenizer.json"
"$dshpc" convert --from "$out/st-badtok" --to "$out/badtok.h5"
: > "$out/empty.jsonl"

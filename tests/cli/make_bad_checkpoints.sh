#!/usr/bin/env bash
# Builds broken copies of a fixture checkpoint under $1 for the command-line tests.
set -euo pipefail
out=$1
src=$2  # a good checkpoint directory (llama-mha)
rm -rf "$out"
mkdir -p "$out"
copy() { mkdir -p "$out/$1"; cp "$src/config.json" "$src/model.safetensors" "$out/$1/"; chmod -R u+w "$out/$1"; }

# Data cut short: the header promises more bytes than the file has.
copy truncated
size=$(stat -c %s "$src/model.safetensors")
head -c $((size / 2)) "$src/model.safetensors" > "$out/truncated/model.safetensors"

# Header length field larger than the file (first 8 bytes = 2^62).
copy huge-header
printf '\x00\x00\x00\x00\x00\x00\x00\x40' | dd of="$out/huge-header/model.safetensors" bs=1 count=8 conv=notrunc status=none

# Header JSON broken in place (a brace replaced by a letter, same length).
copy bad-json
printf 'X' | dd of="$out/bad-json/model.safetensors" bs=1 seek=8 count=1 conv=notrunc status=none

# Config that does not fit the weights: hidden_size 256 while tensors are [*, 128].
copy wrong-shape
sed -i 's/"hidden_size": 128/"hidden_size": 256/' "$out/wrong-shape/config.json"

# Config with more layers than the checkpoint holds: layer 4 is missing.
copy missing-tensor
sed -i 's/"num_hidden_layers": 4/"num_hidden_layers": 5/' "$out/missing-tensor/config.json"

# No weights at all.
mkdir -p "$out/no-weights"
cp "$src/config.json" "$out/no-weights/"

# Config that is not JSON.
copy bad-config
echo '{"architectures": ["LlamaForCausalLM"], ' > "$out/bad-config/config.json"

# Unknown architecture.
copy unknown-arch
sed -i 's/LlamaForCausalLM/GPT2LMHeadModel/' "$out/unknown-arch/config.json"

# Deployment files: an unknown key, and YAML that does not parse.
printf 'model: x.json\nfrobnicate: 3\n' > "$out/unknown-key.yaml"
printf 'model: [unclosed\n' > "$out/broken.yaml"

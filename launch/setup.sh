#!/usr/bin/env bash
# Installs the Debian 12 packages dshpc builds and tests with, when they are missing.
# Idempotent: a machine that has everything returns at once without touching apt.
# Usage: launch/setup.sh            (build + test dependencies)
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libopenmpi-dev openmpi-bin           # MPI: control plane and CPU data plane
  libboost1.81-dev libboost-json1.81-dev  # Asio, Beast, JSON
  libhdf5-dev                          # HDF5 checkpoints
  libgtest-dev libgmock-dev            # unit tests
  libopenblas-dev                      # CPU matrix products
  libpcre2-dev                         # tokenizer pre-tokenizer regexes (\p{..})
  libyaml-cpp-dev                      # deployment YAML
  prometheus-cpp-dev                   # metrics (core library: registry, text serializer)
  prometheus                           # promtool (rule and metrics checks) and the server for tests
  curl jq                              # end-to-end tests
  python3                              # end-to-end reliability tests (standard library only)
  clang libclang-rt-14-dev             # sanitizer and libFuzzer build (launch/fuzz.sh)
  yq                                   # YAML checks of configs/ (ops tests)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

# Node.js runs the official openai client in the end-to-end tests (any Node >= 18 will do).
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  missing+=(nodejs npm)
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The openai npm package for tests/e2e, at the versions of its package-lock.json.
root=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$root/tests/e2e/node_modules/openai" ]; then
  echo "setup: npm ci in tests/e2e" >&2
  (cd "$root/tests/e2e" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

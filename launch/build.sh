#!/usr/bin/env bash
# Configures and builds dshpc into build/ (or $DSHPC_BUILD_DIR). Extra arguments go to cmake.
# Installs missing Debian packages first (launch/setup.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${DSHPC_BUILD_DIR:-$root/build}
"$root/launch/setup.sh"
jobs=${DSHPC_JOBS:-$(nproc)}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${DSHPC_BUILD_TYPE:-RelWithDebInfo} "$@"
cmake --build "$build" -j "$jobs"

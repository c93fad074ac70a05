#!/usr/bin/env bash
# Builds dshpc and runs every test (ctest), from a fresh Debian 12 machine:
#   ./launch/test.sh                 everything, then the sanitizer layer (launch/fuzz.sh: the unit
#                                    tests under ASan + UBSan and each fuzz target for 30 s, in a
#                                    second tree built by clang; DSHPC_SANITIZER_TESTS=0 skips it)
#   ./launch/test.sh -L unit         one layer (labels: unit, golden, cli, mpi, e2e, reliability, ops)
# Arguments are passed to ctest. Missing packages are installed by launch/setup.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${DSHPC_BUILD_DIR:-$root/build}
"$root/launch/build.sh"
# Open MPI refuses to run as root unless told; CI and containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# One BLAS thread per rank: tests oversubscribe the cores with MPI ranks.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
cd "$build"
ctest --output-on-failure --timeout 600 -j "${DSHPC_TEST_JOBS:-2}" "$@"
if [ $# -eq 0 ] && [ "${DSHPC_SANITIZER_TESTS:-1}" != 0 ]; then
  "$root/launch/fuzz.sh" all
fi

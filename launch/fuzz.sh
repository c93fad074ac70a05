#!/usr/bin/env bash
# The sanitizer layer: a second build tree, build-fuzz/ (or $DSHPC_FUZZ_BUILD_DIR), compiled by
# clang with AddressSanitizer + UndefinedBehaviorSanitizer and libFuzzer coverage, in which
#   - the unit tests run (ctest -L unit), and
#   - each libFuzzer target of tests/fuzz runs over its committed corpus for a bounded time
#     (ctest -L fuzz; tests/fuzz/CMakeLists.txt).
# Only dshpc_unit_tests and the fuzz targets are built (no CUDA, no dshpc binary).
#
#   launch/fuzz.sh                  both (what launch/test.sh runs)
#   launch/fuzz.sh unit | fuzz      one of them
#   DSHPC_FUZZ_SECONDS=300 launch/fuzz.sh fuzz     fuzz longer (default 30 s per target)
#   launch/fuzz.sh fuzz -R http     extra arguments go to ctest
# A crash prints the sanitizer report and the path of the input (build-fuzz/tests/fuzz/work/
# TARGET/crash-*); reproduce it with `build-fuzz/tests/fuzz/fuzz_TARGET FILE`, and once fixed,
# commit the input as tests/fuzz/corpus/TARGET/regression-NAME.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${DSHPC_FUZZ_BUILD_DIR:-$root/build-fuzz}
what=all
case "${1:-}" in
  unit|fuzz|all) what=$1; shift ;;
esac
"$root/launch/setup.sh"
command -v clang++ > /dev/null || { echo "fuzz.sh: clang++ not found (apt-get install clang)" >&2; exit 2; }

jobs=${DSHPC_JOBS:-$(nproc)}
mkdir -p "$build"
# -O2 as in the main build, line tables only (enough for file:line in reports, and a third less
# to compile and link), and libstdc++'s and Boost's own assertions (bounds of operator[],
# iterator checks, Beast's preconditions) on top of the sanitizers.
flags="-O2 -gline-tables-only -D_GLIBCXX_ASSERTIONS"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$flags" -DCMAKE_C_FLAGS_RELWITHDEBINFO="$flags" \
  -DDSHPC_WITH_CUDA=OFF -DDSHPC_SANITIZE=ON -DDSHPC_FUZZ=ON \
  -DDSHPC_FUZZ_SECONDS="${DSHPC_FUZZ_SECONDS:-30}" > "$build/configure.log" 2>&1 \
  || { cat "$build/configure.log" >&2; exit 1; }
targets=()
[ "$what" != fuzz ] && targets+=(dshpc_unit_tests)
[ "$what" != unit ] && targets+=(dshpc_fuzz_targets)
cmake --build "$build" -j "$jobs" --target "${targets[@]}"

# Leaks are reported by LeakSanitizer at exit; a sanitizer finding fails the test.
# allocator_may_return_null: a host allocation the machine cannot satisfy returns null, as it does
# without ASan, so that the tests of that path (a workspace reservation of 2^40 tokens fails
# cleanly) test it; operator new still throws.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
# The reference-model sweep is the slowest unit test under the sanitizers; 3 random
# configurations per family instead of 10 (the main build runs all of them).
export DSHPC_REFERENCE_SWEEP_PER_FAMILY=${DSHPC_REFERENCE_SWEEP_PER_FAMILY:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
labels=unit
[ "$what" = fuzz ] && labels=fuzz
[ "$what" = all ] && labels='^(unit|fuzz)$'
cd "$build"
ctest --output-on-failure --timeout 900 -j "${DSHPC_TEST_JOBS:-2}" -L "$labels" "$@"

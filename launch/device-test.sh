#!/usr/bin/env bash
# The GPU machine's test run, in one command:
#
#   launch/device-test.sh OUT_DIR
#
# configures (Ninja, -DCMAKE_CUDA_ARCHITECTURES=90, -DDSHPC_GPU_TESTS=ON) and builds, runs the GPU
# test suite (every CUDA op against the CPU backend, and the fixture models end to end), then
# `dshpc eval-golden --device cuda` on the four public fixtures in float32 (the CPU's tolerance)
# and in bf16 (the tolerance argued below), and, when several GPUs are visible, the multi-GPU
# layouts under mpirun (tp 2 and pp 2; with 4 GPUs also tp 4, tp 2 × pp 2, pp 2 × dp 2), plus the refusal
# of two ranks on one GPU. Every step's log goes to OUT_DIR/logs/, with OUT_DIR/summary.md,
# OUT_DIR/summary.json and OUT_DIR/logs.tar.gz (all logs in one file). A failing step is recorded
# and the run goes on; the exit status is non-zero when any step failed.
#
# Environment (all optional):
#   DSHPC_DEVICE_BUILD_DIR  build folder (default: build-device in the checkout)
#   DSHPC_JOBS              build parallelism (default 16)
#   DSHPC_BUILD_TARGETS     targets to build (default: all; "dshpc dshpc_gpu_tests" is quicker)
#   DSHPC_DEVICE_CPU_TESTS  1: also run the CPU ctest labels unit, golden and cli there
#   DSHPC_BF16_ATOL         bf16 logits tolerance of the dense models (default below)
#   DSHPC_BF16_MOE_ATOL     bf16 logits tolerance of the MoE models (default below)
#   DSHPC_MAX_GPUS          use at most this many GPUs for the layouts
#
# bf16 tolerance. bf16 keeps 8 significant bits: every rounding of a weight or an activation is
# off by up to 2^-9 ≈ 0.2 % relative. A token's logits pass through about 8 roundings per layer
# (weights, projection outputs, attention, norms, MLP, residual) and the fixtures have 3-4 layers,
# so some 30 roundings accumulate; as independent errors they grow like √30 · 2^-9 ≈ 1.1 % of the
# activations' scale, worst case over the ~10^5 logits of a golden file about 4.5 standard
# deviations. The fixtures' logits have an rms of about 2 (max about 10), giving
# 4.5 × 1.1 % × 2 ≈ 0.1; we allow 0.25 (DSHPC_BF16_ATOL) for margin against error growth through
# the attention softmax and the MoE router. Greedy tokens are compared only where the reference's
# top-2 gap exceeds twice that tolerance (--tie-gap 2·atol): a logit error ≤ atol cannot reorder a
# pair of tokens that far apart, so any mismatch there is a real bug, not bf16 noise.
#
# MoE models (the DeepSeek fixtures) are not smooth in their inputs: where two experts' choice
# values lie closer than the bf16 noise of the router input, bf16 and float32 pick different
# experts and that token's logits move by O(1) (measured: 3.1 on deepseek-v3-tiny, max logit ≈ 10),
# as bf16 and float32 runs of the reference model do. eval-golden's maximum over all positions
# therefore only bounds gross errors there (DSHPC_BF16_MOE_ATOL = 5, half the largest logit, with
# greedy comparison above twice that, i.e. none on the fixtures); the per-position check — the
# smooth bound on most positions, cosine similarity on all — is in dshpc_gpu_tests (GpuModel).
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1/logs"
out=$(cd "$1" && pwd)
logs=$out/logs
build=${DSHPC_DEVICE_BUILD_DIR:-$root/build-device}
jobs=${DSHPC_JOBS:-16}
targets=${DSHPC_BUILD_TARGETS:-all}
bf16_atol=${DSHPC_BF16_ATOL:-0.25}
bf16_tie_gap=$(awk -v a="$bf16_atol" 'BEGIN { printf "%g", 2 * a }')
bf16_moe_atol=${DSHPC_BF16_MOE_ATOL:-5}
bf16_moe_tie_gap=$(awk -v a="$bf16_moe_atol" 'BEGIN { printf "%g", 2 * a }')
fixtures=$root/tests/fixtures/models
models=(llama-mha llama-gqa-linear deepseek-v2-lite-tiny deepseek-v3-tiny)
dshpc=$build/bin/dshpc

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OPENBLAS_NUM_THREADS=1
# A hung collective becomes an error well before a step's own time limit.
export DSHPC_COLLECTIVE_TIMEOUT_S=${DSHPC_COLLECTIVE_TIMEOUT_S:-120}

steps=$out/steps.tsv
: >"$steps"
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# record NAME STATUS RC SECONDS LOG
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$steps"; }

# step NAME LOG_FILE COMMAND...: runs the command (10 minutes at most), logs it, records pass/fail.
step() {
  local name=$1 log=$2
  shift 2
  echo "== $name" >&2
  local t0=$SECONDS
  {
    echo "\$ $*"
    timeout --kill-after=10 600 "$@"
  } >"$logs/$log" 2>&1
  local rc=$?
  local status=pass
  [ $rc -eq 0 ] || status=fail
  [ $rc -eq 124 ] && echo "(timed out after 600 s)" >>"$logs/$log"
  record "$name" "$status" "$rc" "$((SECONDS - t0))" "$log"
  echo "   $status (rc $rc, $((SECONDS - t0)) s)" >&2
  return $rc
}

# expect_failure NAME LOG TEXT COMMAND...: passes when the command fails and prints TEXT.
expect_failure() {
  local name=$1 log=$2 text=$3
  shift 3
  echo "== $name" >&2
  local t0=$SECONDS
  { echo "\$ $*"; timeout --kill-after=10 120 "$@"; } >"$logs/$log" 2>&1
  local rc=$?
  local status=fail
  if [ $rc -ne 0 ] && grep -q -- "$text" "$logs/$log"; then status=pass; fi
  record "$name" "$status" "$rc" "$((SECONDS - t0))" "$log"
  echo "   $status (rc $rc)" >&2
}

skip() { record "$1" skipped "" 0 ""; echo "== $1: skipped" >&2; }

# ---- machine
{
  echo "date: $started_at"
  uname -a
  nvidia-smi || true
  nvcc --version || /usr/local/cuda/bin/nvcc --version || true
  cmake --version | head -1
  mpirun --version | head -1
  echo "NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE-unset}"
} >"$logs/machine.log" 2>&1
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
gpus=${gpus:-0}
if [ -n "${DSHPC_MAX_GPUS:-}" ] && [ "$gpus" -gt "$DSHPC_MAX_GPUS" ]; then gpus=$DSHPC_MAX_GPUS; fi
echo "GPUs: $gpus" >&2

# ---- configure and build
# The GPU machine lacks libpcre2-dev: the Debian 12 package carried in launch/device/debs is
# unpacked into the build folder (never into /) and found through CMAKE_PREFIX_PATH.
prefix_args=()
if [ ! -f /usr/include/pcre2.h ]; then
  sysroot=$build/sysroot
  mkdir -p "$sysroot"
  for deb in "$root"/launch/device/debs/*.deb; do
    [ -f "$deb" ] && dpkg -x "$deb" "$sysroot"
  done
  # Its pkg-config files name /usr, not the sysroot: without them CMake finds header and static
  # library by their paths instead.
  rm -rf "$sysroot"/usr/lib/*/pkgconfig
  prefix_args=(-DCMAKE_PREFIX_PATH="$sysroot/usr")
fi
nvcc_path=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
built=0
if step configure configure.log cmake -S "$root" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CUDA_COMPILER="$nvcc_path" \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DDSHPC_GPU_TESTS=ON "${prefix_args[@]}"; then
  # shellcheck disable=SC2086
  step build build.log cmake --build "$build" -j "$jobs" --target $targets && built=1
else
  skip build
fi

# ---- GPU tests: every op against the CPU backend, the fixture models end to end
if [ $built -eq 1 ]; then
  step gpu_tests gpu_tests.log "$build/bin/dshpc_gpu_tests" --gtest_output="json:$logs/gpu_tests.json"
  if [ "${DSHPC_DEVICE_CPU_TESTS:-0}" = 1 ]; then
    step cpu_tests cpu_tests.log ctest --test-dir "$build" -L "unit|golden|cli" -j 8 --output-on-failure
  fi
else
  skip gpu_tests
fi

# ---- golden parity: one GPU, float32 (the CPU's tolerance) and bf16
golden() {  # golden NAME LOG RANKS MODEL ARGS...
  local name=$1 log=$2 ranks=$3 model=$4
  shift 4
  if [ $built -ne 1 ]; then skip "$name"; return; fi
  local cmd=("$dshpc" eval-golden --model "$fixtures/$model"
             --golden "$fixtures/$model/golden.safetensors" --device cuda "$@")
  if [ "$ranks" -gt 1 ]; then
    cmd=(mpirun --allow-run-as-root --bind-to none -np "$ranks" "${cmd[@]}")
  fi
  step "$name" "$log" "${cmd[@]}"
}

# bf16_args MODEL: the bf16 tolerance options of a fixture (MoE or dense).
bf16_args() {
  case $1 in
    deepseek-*) echo "--atol $bf16_moe_atol --tie-gap $bf16_moe_tie_gap" ;;
    *) echo "--atol $bf16_atol --tie-gap $bf16_tie_gap" ;;
  esac
}

for m in "${models[@]}"; do
  golden "golden.$m.f32" "golden.$m.f32.log" 1 "$m" --dtype f32
  # shellcheck disable=SC2046
  golden "golden.$m.bf16" "golden.$m.bf16.log" 1 "$m" --dtype bf16 $(bf16_args "$m")
done

# ---- multi-GPU layouts (one rank per GPU, NCCL)
layouts=()
[ "$gpus" -ge 2 ] && layouts+=("2 1 1" "1 2 1")
[ "$gpus" -ge 4 ] && layouts+=("4 1 1" "2 2 1" "1 2 2")
for layout in "${layouts[@]}"; do
  read -r tp pp dp <<<"$layout"
  ranks=$((tp * pp * dp))
  tag=tp${tp}_pp${pp}_dp${dp}
  for m in "${models[@]}"; do
    golden "golden.$m.$tag.f32" "golden.$m.$tag.f32.log" "$ranks" "$m" --dtype f32 \
      --tp "$tp" --pp "$pp" --dp "$dp"
    # shellcheck disable=SC2046
    golden "golden.$m.$tag.bf16" "golden.$m.$tag.bf16.log" "$ranks" "$m" --dtype bf16 \
      $(bf16_args "$m") --tp "$tp" --pp "$pp" --dp "$dp"
  done
done
if [ ${#layouts[@]} -eq 0 ]; then skip "multi_gpu_layouts (fewer than 2 GPUs visible)"; fi

# ---- the tensor-parallel all-reduce on 2 and 4 GPUs: the one-shot CUDA IPC path (exact sums,
# graph replay, back-to-back reuse of its buffers) and NCCL above its limit, with a latency table
ar_test=$build/bin/dshpc_gpu_all_reduce_test
for np in 2 4; do
  [ "$gpus" -ge "$np" ] || continue
  if [ $built -eq 1 ] && [ -x "$ar_test" ]; then
    step "all_reduce.np$np" "all_reduce.np$np.log" \
      mpirun --allow-run-as-root --bind-to none -np "$np" "$ar_test" --expect-ipc 1
  else
    skip "all_reduce.np$np"
  fi
done

# ---- two ranks on one GPU are refused with a clear message
if [ $built -eq 1 ] && [ "$gpus" -ge 1 ]; then
  np=$((gpus + 1))
  expect_failure two_ranks_one_gpu two_ranks_one_gpu.log "two ranks would share a GPU" \
    mpirun --allow-run-as-root --bind-to none -np "$np" "$dshpc" eval-golden \
    --model "$fixtures/llama-mha" --golden "$fixtures/llama-mha/golden.safetensors" \
    --device cuda --dp "$np"
fi

# ---- summary
finished_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
failed=$(awk -F'\t' '$2 == "fail" || ($2 == "skipped" && $1 !~ /multi_gpu/) { n++ } END { print n + 0 }' "$steps")
if command -v python3 >/dev/null; then
  python3 - "$out" "$started_at" "$finished_at" "$gpus" "$bf16_atol" "$bf16_moe_atol" <<'PY'
import json, os, sys

out, started, finished, gpus, bf16_atol, bf16_moe_atol = sys.argv[1:7]
logs = os.path.join(out, "logs")
steps = []
for line in open(os.path.join(out, "steps.tsv")):
    name, status, rc, seconds, log = line.rstrip("\n").split("\t")
    step = {"name": name, "status": status, "rc": int(rc) if rc else None,
            "seconds": int(seconds), "log": "logs/" + log if log else None}
    if log and name.startswith("golden."):
        for text in reversed(open(os.path.join(logs, log), errors="replace").read().splitlines()):
            if text.startswith("{"):
                try:
                    result = json.loads(text)
                    step["result"] = {k: result.get(k) for k in (
                        "prefill_max_abs_err", "decode_max_abs_err", "greedy_tokens_matched",
                        "greedy_tokens_compared", "atol", "ok", "layout")}
                except ValueError:
                    pass
                break
    steps.append(step)
gpu_tests = None
try:
    report = json.load(open(os.path.join(logs, "gpu_tests.json")))
    failures = [f"{s['name']}.{t['name']}" for s in report["testsuites"] for t in s["testsuite"]
                if t.get("failures")]
    gpu_tests = {"tests": report["tests"], "failures": report["failures"],
                 "failed": failures}
except (OSError, ValueError, KeyError):
    pass
failed = [s["name"] for s in steps if s["status"] == "fail" or
          (s["status"] == "skipped" and not s["name"].startswith("multi_gpu"))]
summary = {"started": started, "finished": finished, "gpus": int(gpus),
           "bf16_atol": float(bf16_atol), "bf16_moe_atol": float(bf16_moe_atol),
           "ok": not failed, "failed_steps": failed,
           "gpu_tests": gpu_tests, "steps": steps}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)

md = [f"# dshpc device test ({started} → {finished})", "",
      f"GPUs: {gpus}. Result: **{'PASS' if not failed else 'FAIL'}**"
      + (f" ({len(failed)} failed: {', '.join(failed)})" if failed else ""), ""]
if gpu_tests:
    md += [f"GPU tests: {gpu_tests['tests']} run, {gpu_tests['failures']} failed"
           + (": " + ", ".join(gpu_tests["failed"]) if gpu_tests["failed"] else ""), ""]
md += ["| step | status | s | prefill err | decode err | greedy | atol | log |",
       "|---|---|---|---|---|---|---|---|"]
for s in steps:
    r = s.get("result") or {}
    fmt = lambda v: "" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))
    greedy = (f"{r.get('greedy_tokens_matched')}/{r.get('greedy_tokens_compared')}"
              if "greedy_tokens_matched" in r else "")
    md.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {fmt(r.get('prefill_max_abs_err'))}"
              f" | {fmt(r.get('decode_max_abs_err'))} | {greedy} | {fmt(r.get('atol'))}"
              f" | {s['log'] or ''} |")
md += ["", f"bf16 tolerance: dense models --atol {bf16_atol} --tie-gap {2 * float(bf16_atol):g}; "
       f"MoE models --atol {bf16_moe_atol} --tie-gap {2 * float(bf16_moe_atol):g} (gross errors "
       "only: routing flips; the per-position check is in the GPU tests); the argument is in "
       "launch/device-test.sh. float32: eval-golden's defaults, as on the CPU."]
open(os.path.join(out, "summary.md"), "w").write("\n".join(md) + "\n")
PY
else
  {
    echo "# dshpc device test ($started_at → $finished_at)"
    echo
    echo "| step | status | rc | s | log |"
    echo "|---|---|---|---|---|"
    awk -F'\t' '{ printf "| %s | %s | %s | %s | logs/%s |\n", $1, $2, $3, $4, $5 }' "$steps"
  } >"$out/summary.md"
  echo "{\"ok\": $([ "$failed" -eq 0 ] && echo true || echo false), \"failed_steps\": $failed}" \
    >"$out/summary.json"
fi
tar -czf "$out/logs.tar.gz" -C "$out" logs steps.tsv 2>/dev/null || true
cat "$out/summary.md" >&2
if [ "$failed" -ne 0 ]; then
  echo "device-test: $failed step(s) failed" >&2
  exit 1
fi
echo "device-test: all steps passed" >&2

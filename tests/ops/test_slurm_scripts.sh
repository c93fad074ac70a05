#!/usr/bin/env bash
# launch/slurm/serve.sbatch and batch.sbatch, run as plain bash scripts against stand-ins for
# srun, scancel and scontrol (no Slurm needed). The stand-ins behave as the real ones do in the
# respects the scripts rely on: srun starts SLURM_NTASKS tasks and returns the highest status;
# `scancel --signal=TERM JOB` signals the tasks of the job's steps (not the batch script);
# `scontrol requeue` is recorded. Checked: the srun options (--mpi=pmix, -K1 …), the dshpc
# command line, the time-limit drain (SIGUSR1 → tasks get SIGTERM → exit 0 → requeue), a step
# restarted by supervise.sh after a failure, the Prometheus target file, and exit statuses.
#   tests/ops/test_slurm_scripts.sh REPO_ROOT
set -euo pipefail
root=${1:?usage: test_slurm_scripts.sh REPO_ROOT}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; for f in "$work"/out*; do [ -f "$f" ] && { echo "--- $f" >&2; cat "$f" >&2; }; done; exit 1; }
export FAKE_SLURM=$work/slurm
mkdir -p "$FAKE_SLURM" "$work/bin"

cat >"$work/bin/srun" <<'FAKE'
#!/usr/bin/env bash
echo "$*" >>"$FAKE_SLURM/srun_calls"
kill_on_bad_exit=0
while [[ "${1:-}" == --* ]]; do
  [ "$1" = --kill-on-bad-exit=1 ] && kill_on_bad_exit=1
  shift
done
pids=()
for ((task = 0; task < ${SLURM_NTASKS:-2}; task++)); do
  SLURM_PROCID=$task "$@" &
  pids+=($!)
  echo $! >>"$FAKE_SLURM/tasks"
done
rc=0
for _ in "${pids[@]}"; do
  wait -n
  status=$?
  [ "$status" -gt "$rc" ] && rc=$status
  # -K1: the first task to fail ends the others, and its status is the step's.
  if [ "$status" -ne 0 ] && [ "$kill_on_bad_exit" = 1 ]; then
    kill -KILL "${pids[@]}" 2>/dev/null
    wait 2>/dev/null
    exit "$status"
  fi
done
exit "$rc"
FAKE
cat >"$work/bin/scancel" <<'FAKE'
#!/usr/bin/env bash
echo "scancel $*" >>"$FAKE_SLURM/calls"
[ "$1" = --signal=TERM ] || exit 1
while read -r pid; do kill -TERM "$pid" 2>/dev/null; done <"$FAKE_SLURM/tasks"
exit 0
FAKE
cat >"$work/bin/scontrol" <<'FAKE'
#!/usr/bin/env bash
echo "scontrol $*" >>"$FAKE_SLURM/calls"
case "$1 $2" in
  "show hostnames") printf 'node01\nnode02\n' ;;
esac
exit 0
FAKE
# dshpc: FAKE_DSHPC_MODE serve (run until SIGTERM, then exit 0), fail-once (the first task run
# exits 1, later ones serve), quick (exit 0), fail (exit 3).
cat >"$work/bin/dshpc" <<'FAKE'
#!/usr/bin/env bash
echo "task $SLURM_PROCID: $*" >>"$FAKE_SLURM/dshpc_args"
case "$FAKE_DSHPC_MODE" in
  quick) exit 0 ;;
  fail) exit 3 ;;
  fail-once)
    if mkdir "$FAKE_SLURM/failed_once" 2>/dev/null; then exit 1; fi ;;
esac
trap 'echo "drained $SLURM_PROCID" >>"$FAKE_SLURM/drained"; exit 0' TERM
echo "up $SLURM_PROCID" >>"$FAKE_SLURM/up"
while true; do sleep 0.05; done
FAKE
chmod +x "$work/bin/"*

export PATH="$work/bin:$PATH"
export SLURM_JOB_ID=4242 SLURM_JOB_NAME=dshpc-serve SLURM_NTASKS=2 SLURM_JOB_NODELIST='node[01-02]' \
       SLURM_SUBMIT_DIR=$root SLURM_CPUS_PER_TASK=4 DSHPC_BIN=$work/bin/dshpc \
       DSHPC_LOG_DIR=$work/logs DSHPC_SUPERVISE_BACKOFF=0.01
unset SLURM_RESTART_COUNT DSHPC_PORT DSHPC_DRAIN_TIMEOUT DSHPC_SUPERVISE DSHPC_PROMETHEUS_SD_DIR

reset_fakes() { rm -rf "${FAKE_SLURM:?}"/*; }
count() { cat "$1" 2>/dev/null | wc -l; }
wait_for() {  # wait_for FILE LINES
  for _ in $(seq 200); do [ "$(count "$1")" -ge "$2" ] && return 0; sleep 0.05; done
  fail "timed out waiting for $2 lines in $1"
}

# 1. serve: time-limit drain. SIGUSR1 to the script → scancel --signal=TERM → tasks drain →
#    exit 0 → scontrol requeue; the Prometheus target file exists while the job runs.
reset_fakes
mkdir -p "$work/sd"
DSHPC_PROMETHEUS_SD_DIR=$work/sd FAKE_DSHPC_MODE=serve \
  bash "$root/launch/slurm/serve.sbatch" --model /models/v3 --tp 2 >"$work/out1" 2>&1 &
script=$!
wait_for "$FAKE_SLURM/up" 2
jq -e '.[0].targets == ["node01:8000"] and .[0].labels.slurm_job_id == "4242"' \
  "$work/sd/dshpc-4242.json" >/dev/null || fail "case 1: bad Prometheus target file"
kill -USR1 "$script"
set +e
wait "$script"
rc=$?
set -e
[ "$rc" = 0 ] || fail "case 1: serve.sbatch exited $rc after a time-limit drain"
[ "$(count "$FAKE_SLURM/drained")" = 2 ] || fail "case 1: not every task drained"
grep -qx "scancel --signal=TERM 4242" "$FAKE_SLURM/calls" || fail "case 1: tasks not signalled with scancel"
grep -qx "scontrol requeue 4242" "$FAKE_SLURM/calls" || fail "case 1: job not requeued"
[ ! -e "$work/sd/dshpc-4242.json" ] || fail "case 1: target file left behind"
srun_line=$(head -n 1 "$FAKE_SLURM/srun_calls")
for option in --mpi=pmix --kill-on-bad-exit=1 --distribution=block --cpu-bind=cores --gpu-bind=none; do
  grep -qF -- "$option" <<<"$srun_line" || fail "case 1: srun lacks $option: $srun_line"
done
grep -qx "task 0: serve --host 0.0.0.0 --port 8000 --drain-timeout-s 150 --log-format json --model /models/v3 --tp 2" \
  "$FAKE_SLURM/dshpc_args" || fail "case 1: dshpc command line: $(cat "$FAKE_SLURM/dshpc_args")"
[ "$(count "$FAKE_SLURM/srun_calls")" = 1 ] || fail "case 1: the step was restarted after the drain"
jq -e -s 'length == 3 and all(.[]; has("@timestamp") and has("log.level") and .["ecs.version"] == "8.11.0"
          and .["service.name"] == "dshpc-slurm" and .["slurm.job_id"] == "4242")' "$work/out1" >/dev/null ||
  fail "case 1: the script's own lines are not ECS JSON lines"
jq -e -s 'any(.[]; .["event.action"] == "supervise.start")' "$work/logs/supervise-4242.log" >/dev/null ||
  fail "case 1: no supervise log"

# 2. serve: a step that fails is started again by supervise.sh inside the allocation; a graceful
#    stop (scancel --signal=TERM) then ends the job with 0 and no requeue.
reset_fakes
FAKE_DSHPC_MODE=fail-once bash "$root/launch/slurm/serve.sbatch" --model /m >"$work/out2" 2>&1 &
script=$!
wait_for "$FAKE_SLURM/up" 2
[ "$(count "$FAKE_SLURM/srun_calls")" = 2 ] || fail "case 2: expected the failed step to be started again"
scancel --signal=TERM 4242
set +e
wait "$script"
rc=$?
set -e
[ "$rc" = 0 ] || fail "case 2: serve.sbatch exited $rc after a graceful stop"
! grep -q "requeue" "$FAKE_SLURM/calls" || fail "case 2: requeued after an operator's stop"

# 3. batch: a run that finishes ends the job with 0, no supervise, no requeue.
reset_fakes
DSHPC_SUPERVISE=0 FAKE_DSHPC_MODE=quick SLURM_JOB_NAME=dshpc-batch \
  bash "$root/launch/slurm/batch.sbatch" --model /m --input in.jsonl --output out.jsonl >"$work/out3" 2>&1 ||
  fail "case 3: batch.sbatch exited $?"
grep -qx "task 1: batch --log-format json --model /m --input in.jsonl --output out.jsonl" \
  "$FAKE_SLURM/dshpc_args" || fail "case 3: dshpc command line: $(cat "$FAKE_SLURM/dshpc_args")"
! grep -q "requeue" "$FAKE_SLURM/calls" 2>/dev/null || fail "case 3: requeued a finished job"

# 4. batch without supervise: a failing task fails the job with its status.
reset_fakes
set +e
DSHPC_SUPERVISE=0 FAKE_DSHPC_MODE=fail bash "$root/launch/slurm/batch.sbatch" --input a --output b \
  >"$work/out4" 2>&1
rc=$?
set -e
[ "$rc" = 3 ] || fail "case 4: expected status 3 from a failing task, got $rc"

# 5. batch: time-limit drain and requeue, as for serve.
reset_fakes
FAKE_DSHPC_MODE=serve bash "$root/launch/slurm/batch.sbatch" --input a --output b >"$work/out5" 2>&1 &
script=$!
wait_for "$FAKE_SLURM/up" 2
kill -USR1 "$script"
set +e
wait "$script"
rc=$?
set -e
[ "$rc" = 0 ] || fail "case 5: batch.sbatch exited $rc after a time-limit drain"
grep -qx "scontrol requeue 4242" "$FAKE_SLURM/calls" || fail "case 5: job not requeued"

# The #SBATCH header asks for what the issue requires.
for script_file in serve.sbatch batch.sbatch; do
  for directive in "--requeue" "--signal=B:USR1@180" "--ntasks-per-node=8" "--gpus-per-node=8"; do
    grep -qx "#SBATCH $directive" "$root/launch/slurm/$script_file" ||
      fail "$script_file lacks #SBATCH $directive"
  done
done
echo "slurm scripts: all cases passed"

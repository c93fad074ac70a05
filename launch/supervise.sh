#!/usr/bin/env bash
# Restarts a job command after a failure, with exponential back-off and a bound on attempts: the
# self-healing loop of the deployment guide. The alert rules (configs/prometheus/alerts.yml) point
# here; docs/deploy.md ("Restart") explains how to use it.
#
#   launch/supervise.sh [options] -- COMMAND [ARGS...]
#   launch/supervise.sh -- launch/mpirun.sh --hostfile hosts -- serve --model /models/v3
#
# Behaviour
#   - COMMAND exits 0            → supervise exits 0 (a drained, finished job is not restarted).
#   - COMMAND exits non-zero     → wait the back-off, start it again; the back-off doubles after
#                                  each failure (initial, 2×, 4× … up to the maximum).
#   - more than --max-restarts failures in a row → give up, exit with COMMAND's last status.
#   - a run that lasted --reset-after seconds or more resets the count and the back-off: a server
#     that crashes once a week is not "failing in a row".
#   - COMMAND exits with a status in --no-restart-on (default 2: a command-line error, which a
#     restart cannot fix) → no restart, that status is returned.
#   - SIGTERM, SIGINT or SIGHUP to supervise → SIGTERM to COMMAND (which drains and exits; see
#     issue 9), no further restart; supervise exits with COMMAND's status.
#   - SIGUSR1 to supervise → COMMAND is left alone, but is not restarted when it ends (for a
#     caller that signals the job's processes itself, as launch/slurm/*.sbatch do).
#
# Every start, exit, restart and give-up is one JSON line (ECS fields, like dshpc's own logs) on
# stderr, or appended to --log FILE, so that Filebeat ships it with the job's logs.
#
# Options (each also settable through the environment variable in brackets)
#   --max-restarts N   restarts after failures in a row before giving up [DSHPC_SUPERVISE_MAX_RESTARTS, 5]
#   --backoff S        first back-off in seconds, may be fractional [DSHPC_SUPERVISE_BACKOFF, 5]
#   --backoff-max S    largest back-off [DSHPC_SUPERVISE_BACKOFF_MAX, 300]
#   --reset-after S    run length that resets the count [DSHPC_SUPERVISE_RESET_AFTER, 600]
#   --no-restart-on L  comma-separated exit statuses never restarted [DSHPC_SUPERVISE_NO_RESTART_ON, 2]
#   --log FILE         JSON lines go to FILE instead of stderr [DSHPC_SUPERVISE_LOG]
set -uo pipefail

max_restarts=${DSHPC_SUPERVISE_MAX_RESTARTS:-5}
backoff_initial=${DSHPC_SUPERVISE_BACKOFF:-5}
backoff_max=${DSHPC_SUPERVISE_BACKOFF_MAX:-300}
reset_after=${DSHPC_SUPERVISE_RESET_AFTER:-600}
no_restart_on=${DSHPC_SUPERVISE_NO_RESTART_ON:-2}
log_file=${DSHPC_SUPERVISE_LOG:-}

usage() {  # usage EXIT_STATUS: the comment block above, without the leading "# "
  sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit "$1"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --max-restarts) max_restarts=${2:?--max-restarts needs a value}; shift 2 ;;
    --backoff) backoff_initial=${2:?--backoff needs a value}; shift 2 ;;
    --backoff-max) backoff_max=${2:?--backoff-max needs a value}; shift 2 ;;
    --reset-after) reset_after=${2:?--reset-after needs a value}; shift 2 ;;
    --no-restart-on) no_restart_on=${2?--no-restart-on needs a value}; shift 2 ;;
    --log) log_file=${2:?--log needs a value}; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "supervise: unknown option '$1' (COMMAND goes after --)" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "supervise: no COMMAND after --" >&2; exit 2; }
case "$max_restarts" in ''|*[!0-9]*) echo "supervise: --max-restarts '$max_restarts' is not a whole number" >&2; exit 2 ;; esac
for value in "$backoff_initial" "$backoff_max" "$reset_after"; do
  if ! [[ "$value" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "supervise: '$value' is not a number of seconds" >&2
    exit 2
  fi
done

host=$(hostname 2>/dev/null || echo unknown)

# JSON string body: backslash, quote and control characters escaped.
json_escape() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  s=$(printf '%s' "$s" | tr -d '\000-\010\013\014\016-\037')
  printf '%s' "$s"
}

command_text=$(json_escape "$*")

# log LEVEL ACTION MESSAGE [raw JSON members to append, e.g. "\"process.exit_code\":1"]
log() {
  local level=$1 action=$2 message=$3 extra=${4:-}
  local line
  line=$(printf '{"@timestamp":"%s","log.level":"%s","message":"%s","ecs.version":"8.11.0","service.name":"dshpc-supervise","host.name":"%s","process.pid":%d,"event.action":"%s","supervise.command":"%s"' \
    "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$level" "$(json_escape "$message")" "$(json_escape "$host")" \
    "$$" "$action" "$command_text")
  if [ -n "${SLURM_JOB_ID:-}" ]; then line+=",\"slurm.job_id\":\"$(json_escape "$SLURM_JOB_ID")\""; fi
  if [ -n "$extra" ]; then line+=",$extra"; fi
  line+="}"
  if [ -n "$log_file" ]; then
    printf '%s\n' "$line" >>"$log_file"
  else
    printf '%s\n' "$line" >&2
  fi
}

child=""
stopping=""
# The job gets SIGTERM whatever supervise received: a background command of a non-interactive
# shell starts with SIGINT ignored, and TERM is what dshpc drains on (issue 9).
on_signal() {
  stopping=$1
  if [ -n "$child" ]; then
    log info supervise.signal "SIG$1 received: sending SIGTERM to the job; no further restarts" "\"supervise.signal\":\"$1\",\"supervise.child_pid\":$child"
    kill -s TERM "$child" 2>/dev/null || true
  fi
}
no_restart=""
on_no_restart() {
  no_restart=1
  log info supervise.signal "SIGUSR1 received: the running job will not be restarted" "\"supervise.signal\":\"USR1\""
}
trap on_no_restart USR1
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap 'on_signal HUP' HUP

# Waits for the child; a trapped signal interrupts `wait`, so wait again until it has exited.
# bash keeps the status of a reaped background job, so the second wait returns the real status.
wait_child() {
  local rc
  while true; do
    wait "$child"
    rc=$?
    if ! kill -0 "$child" 2>/dev/null; then
      wait "$child" 2>/dev/null
      local again=$?
      [ "$again" -ne 127 ] && rc=$again
      return "$rc"
    fi
  done
}

# Sleeps in the background so that a signal ends the back-off at once.
interruptible_sleep() {
  sleep "$1" &
  local sleeper=$!
  while kill -0 "$sleeper" 2>/dev/null; do
    wait "$sleeper" 2>/dev/null
    if [ -n "$stopping" ]; then
      kill "$sleeper" 2>/dev/null
      return 1
    fi
  done
  return 0
}

is_no_restart_code() {
  local code
  IFS=',' read -ra codes <<<"$no_restart_on"
  for code in "${codes[@]}"; do
    [ "$code" = "$1" ] && return 0
  done
  return 1
}

failures=0
backoff=$backoff_initial
run=0
while true; do
  if [ -n "$stopping" ]; then
    log warn supervise.exit "SIG$stopping before the job started; not starting it" "\"process.exit_code\":${rc:-0}"
    exit "${rc:-0}"
  fi
  run=$((run + 1))
  started=$(date +%s.%N)
  "$@" &
  child=$!
  log info supervise.start "job started (run $run)" "\"supervise.run\":$run,\"supervise.child_pid\":$child"
  wait_child
  rc=$?
  child=""
  elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')

  if [ "$rc" -eq 0 ]; then
    log info supervise.exit "job finished" "\"process.exit_code\":0,\"supervise.run\":$run,\"supervise.run_seconds\":$elapsed"
    exit 0
  fi
  if [ -n "$stopping" ]; then
    log warn supervise.exit "job ended after SIG$stopping; not restarting" "\"process.exit_code\":$rc,\"supervise.run\":$run,\"supervise.run_seconds\":$elapsed"
    exit "$rc"
  fi
  if [ -n "$no_restart" ]; then
    log warn supervise.exit "job ended with status $rc after SIGUSR1; not restarting" "\"process.exit_code\":$rc,\"supervise.run\":$run,\"supervise.run_seconds\":$elapsed"
    exit "$rc"
  fi
  if is_no_restart_code "$rc"; then
    log error supervise.give_up "job exited with status $rc, which a restart cannot fix" "\"process.exit_code\":$rc,\"supervise.run\":$run"
    exit "$rc"
  fi
  if awk -v e="$elapsed" -v r="$reset_after" 'BEGIN { exit !(e >= r) }'; then
    failures=0
    backoff=$backoff_initial
  fi
  failures=$((failures + 1))
  if [ "$failures" -gt "$max_restarts" ]; then
    log error supervise.give_up "job failed $failures times in a row; giving up" "\"process.exit_code\":$rc,\"supervise.run\":$run,\"supervise.failures\":$failures,\"supervise.max_restarts\":$max_restarts"
    exit "$rc"
  fi
  log warn supervise.restart "job failed with status $rc; restart $failures of $max_restarts in ${backoff}s" \
    "\"process.exit_code\":$rc,\"supervise.run\":$run,\"supervise.run_seconds\":$elapsed,\"supervise.restart\":$failures,\"supervise.max_restarts\":$max_restarts,\"supervise.backoff_seconds\":$backoff"
  if ! interruptible_sleep "$backoff"; then
    log warn supervise.exit "SIG$stopping during back-off; not restarting" "\"process.exit_code\":$rc"
    exit "$rc"
  fi
  backoff=$(awk -v b="$backoff" -v m="$backoff_max" 'BEGIN { b *= 2; if (b > m) b = m; print b }')
done

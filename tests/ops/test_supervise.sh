#!/usr/bin/env bash
# launch/supervise.sh: restarts after failures with back-off, gives up after the bound, does not
# restart after exit 0 or a command-line error, forwards SIGTERM and stops restarting.
# Back-off is kept tiny through the environment so that the whole test takes about a second.
#   tests/ops/test_supervise.sh SUPERVISE_SH
set -euo pipefail
supervise=${1:?usage: test_supervise.sh path/to/supervise.sh}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export DSHPC_SUPERVISE_BACKOFF=0.01 DSHPC_SUPERVISE_BACKOFF_MAX=0.04 DSHPC_SUPERVISE_RESET_AFTER=600
unset DSHPC_SUPERVISE_LOG DSHPC_SUPERVISE_MAX_RESTARTS DSHPC_SUPERVISE_NO_RESTART_ON

fail() { echo "FAIL: $*" >&2; exit 1; }

# A job that counts its runs in a file and exits with the status given for that run number
# (the last status repeats): flaky_job COUNT_FILE STATUS...
cat >"$work/flaky_job.sh" <<'EOF'
#!/usr/bin/env bash
count_file=$1; shift
n=$(( $(cat "$count_file" 2>/dev/null || echo 0) + 1 ))
echo "$n" >"$count_file"
statuses=("$@")
idx=$(( n <= ${#statuses[@]} ? n - 1 : ${#statuses[@]} - 1 ))
exit "${statuses[$idx]}"
EOF
chmod +x "$work/flaky_job.sh"

# Every log line must be one JSON object with the ECS fields.
check_log() {
  local log=$1
  [ -s "$log" ] || fail "no log lines in $log"
  jq -e -s 'all(.[]; has("@timestamp") and has("log.level") and has("message") and
                     .["ecs.version"] == "8.11.0" and .["service.name"] == "dshpc-supervise" and
                     has("event.action") and has("host.name"))' "$log" >/dev/null ||
    fail "log lines without ECS fields in $log: $(cat "$log")"
}
count_action() { jq -s --arg a "$2" '[.[] | select(.["event.action"] == $a)] | length' "$1"; }

# 1. Fails twice, then succeeds: 3 runs, 2 restarts logged, exit 0.
"$supervise" --max-restarts 5 -- "$work/flaky_job.sh" "$work/count1" 1 3 0 2>"$work/log1" ||
  fail "case 1: supervise exited $? for a job that eventually succeeds"
[ "$(cat "$work/count1")" = 3 ] || fail "case 1: expected 3 runs, got $(cat "$work/count1")"
check_log "$work/log1"
[ "$(count_action "$work/log1" supervise.restart)" = 2 ] || fail "case 1: expected 2 restarts logged"
jq -e -s '[.[] | select(.["event.action"] == "supervise.restart")] |
          .[0]["process.exit_code"] == 1 and .[1]["process.exit_code"] == 3 and
          .[0]["supervise.backoff_seconds"] == 0.01 and .[1]["supervise.backoff_seconds"] == 0.02' \
  "$work/log1" >/dev/null || fail "case 1: restart lines lack exit codes or doubling back-off"
[ "$(count_action "$work/log1" supervise.exit)" = 1 ] || fail "case 1: expected one exit line"

# 2. Always fails: stops after the bound (1 run + 3 restarts) with the job's status.
set +e
DSHPC_SUPERVISE_MAX_RESTARTS=3 "$supervise" --log "$work/log2" -- "$work/flaky_job.sh" "$work/count2" 7
rc=$?
set -e
[ "$rc" = 7 ] || fail "case 2: expected exit 7 after giving up, got $rc"
[ "$(cat "$work/count2")" = 4 ] || fail "case 2: expected 4 runs, got $(cat "$work/count2")"
check_log "$work/log2"
[ "$(count_action "$work/log2" supervise.restart)" = 3 ] || fail "case 2: expected 3 restarts logged"
[ "$(count_action "$work/log2" supervise.give_up)" = 1 ] || fail "case 2: expected a give-up line"
jq -e -s '[.[] | select(.["event.action"] == "supervise.restart")] | .[2]["supervise.backoff_seconds"] == 0.04' \
  "$work/log2" >/dev/null || fail "case 2: back-off is not capped at the maximum"

# 3. Exit 0 at once: one run, no restart.
"$supervise" -- "$work/flaky_job.sh" "$work/count3" 0 2>"$work/log3" || fail "case 3: exit $?"
[ "$(cat "$work/count3")" = 1 ] || fail "case 3: a successful job was restarted"

# 4. A command-line error (status 2) is not restarted.
set +e
"$supervise" -- "$work/flaky_job.sh" "$work/count4" 2 2>"$work/log4"
rc=$?
set -e
[ "$rc" = 2 ] || fail "case 4: expected exit 2, got $rc"
[ "$(cat "$work/count4")" = 1 ] || fail "case 4: a usage error was restarted"
[ "$(count_action "$work/log4" supervise.give_up)" = 1 ] || fail "case 4: no give-up line"

# 5. SIGTERM to supervise reaches the job, which drains and exits 0; no restart.
cat >"$work/drain_job.sh" <<EOF
#!/usr/bin/env bash
trap 'echo drained >>"$work/runs5"; exit 0' TERM
echo started >>"$work/runs5"
while true; do sleep 0.05; done
EOF
chmod +x "$work/drain_job.sh"
"$supervise" --log "$work/log5" -- "$work/drain_job.sh" &
sup=$!
for _ in $(seq 100); do [ -s "$work/runs5" ] && break; sleep 0.02; done
[ -s "$work/runs5" ] || fail "case 5: the job did not start"
kill -TERM "$sup"
set +e
wait "$sup"
rc=$?
set -e
[ "$rc" = 0 ] || fail "case 5: expected exit 0 after a drain, got $rc"
[ "$(cat "$work/runs5")" = "$(printf 'started\ndrained')" ] ||
  fail "case 5: expected one run that drained, got: $(cat "$work/runs5")"
check_log "$work/log5"
[ "$(count_action "$work/log5" supervise.signal)" = 1 ] || fail "case 5: the signal was not logged"

# 6. SIGTERM to supervise while a failing job is killed by it: no restart, non-zero exit.
cat >"$work/stubborn_job.sh" <<EOF
#!/usr/bin/env bash
trap 'exit 143' TERM
echo started >>"$work/runs6"
while true; do sleep 0.05; done
EOF
chmod +x "$work/stubborn_job.sh"
"$supervise" --log "$work/log6" -- "$work/stubborn_job.sh" &
sup=$!
for _ in $(seq 100); do [ -s "$work/runs6" ] && break; sleep 0.02; done
kill -TERM "$sup"
set +e
wait "$sup"
rc=$?
set -e
[ "$rc" = 143 ] || fail "case 6: expected the job's status 143, got $rc"
sleep 0.1
[ "$(wc -l <"$work/runs6")" = 1 ] || fail "case 6: the job was restarted after SIGTERM"

# 7. SIGUSR1: the running job is left alone and, when it fails, not restarted.
cat >"$work/usr1_job.sh" <<EOF
#!/usr/bin/env bash
echo started >>"$work/runs7"
while [ ! -e "$work/release7" ]; do sleep 0.02; done
exit 5
EOF
chmod +x "$work/usr1_job.sh"
"$supervise" --log "$work/log7" -- "$work/usr1_job.sh" &
sup=$!
for _ in $(seq 100); do [ -s "$work/runs7" ] && break; sleep 0.02; done
kill -USR1 "$sup"
for _ in $(seq 100); do
  [ -s "$work/log7" ] && [ "$(count_action "$work/log7" supervise.signal)" = 1 ] && break
  sleep 0.02
done
touch "$work/release7"
set +e
wait "$sup"
rc=$?
set -e
[ "$rc" = 5 ] || fail "case 7: expected the job's status 5, got $rc"
[ "$(wc -l <"$work/runs7")" = 1 ] || fail "case 7: the job was restarted after SIGUSR1"

# 8. Bad usage is refused with status 2; --help is not an error.
set +e
"$supervise" --max-restarts many -- true 2>/dev/null; rc1=$?
"$supervise" 2>/dev/null; rc2=$?
"$supervise" --help >/dev/null; rc3=$?
set -e
[ "$rc1" = 2 ] && [ "$rc2" = 2 ] || fail "case 8: bad usage gave $rc1 / $rc2, expected 2"
[ "$rc3" = 0 ] || fail "case 8: --help exited $rc3"

echo "supervise.sh: all cases passed"

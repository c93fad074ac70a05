#!/usr/bin/env bash
# check_metrics.sh and check_ecs_log.sh fail, saying why, on text that breaks their rules, and
# check_ecs_log.sh passes a well-formed line: the real-server test relies on both.
#   tests/ops/test_checkers.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "test_checkers: FAIL: $*" >&2; exit 1; }
expect_failure() {  # expect_failure TEXT_IN_MESSAGE COMMAND...
  local want=$1
  shift
  if "$@" >"$work/out" 2>&1; then fail "'$*' passed; expected a failure mentioning '$want'"; fi
  grep -qF -- "$want" "$work/out" || fail "'$*' failed without mentioning '$want': $(cat "$work/out")"
}

# A counter without _total: promtool's lint rejects it.
printf '# HELP dshpc_x_count A counter.\n# TYPE dshpc_x_count counter\ndshpc_x_count 1\n' >"$work/lint.txt"
expect_failure "promtool check metrics" "$here/check_metrics.sh" --command cat "$work/lint.txt"
# Clean text that lacks the issue's families.
printf '# HELP dshpc_num_requests_running Requests.\n# TYPE dshpc_num_requests_running gauge\ndshpc_num_requests_running{model="m"} 0\n' >"$work/partial.txt"
expect_failure "missing from /metrics: dshpc_num_requests_waiting" "$here/check_metrics.sh" --command cat "$work/partial.txt"

good='{"@timestamp":"2026-11-28T14:00:00.123Z","log.level":"info","message":"m","ecs.version":"8.11.0","service.name":"dshpc","mpi.rank":0,"host.name":"h"}'
printf '%s\n' "$good" >"$work/good.log"
"$here/check_ecs_log.sh" "$work/good.log" >/dev/null || fail "a well-formed ECS line was rejected"
printf '%s\nnot json\n' "$good" >"$work/text.log"
expect_failure "2: not json" "$here/check_ecs_log.sh" "$work/text.log"
printf '%s\n' "${good/\"mpi.rank\":0,/}" >"$work/norank.log"
expect_failure "not ECS log lines" "$here/check_ecs_log.sh" "$work/norank.log"
printf '%s\n' "${good/\"host.name\":\"h\"/\"host.name\":\"h\",\"event.action\":\"request.accepted\"}" >"$work/noid.log"
expect_failure "not ECS log lines" "$here/check_ecs_log.sh" "$work/noid.log"
echo "test_checkers: OK"

#!/usr/bin/env bash
# Checks JSON log lines as Filebeat will read them: every line is one JSON object with the ECS
# fields dshpc writes (@timestamp in RFC 3339 UTC with milliseconds, log.level, message,
# ecs.version, service.name, mpi.rank, host.name), and request events carry request.id.
#   tests/ops/check_ecs_log.sh FILE...        (- for standard input)
set -euo pipefail
fail() { echo "check_ecs_log: FAIL: $*" >&2; exit 1; }
[ $# -gt 0 ] || { echo "usage: check_ecs_log.sh FILE... | -" >&2; exit 2; }
command -v jq >/dev/null 2>&1 || fail "jq not found (launch/setup.sh installs it)"

# One jq pass per file: each raw line that is not a valid ECS object is printed as "N: line".
check='
  def ecs:
    type == "object" and
    (.["@timestamp"] | type == "string" and
       test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$")) and
    (.["log.level"] | IN("debug", "info", "warn", "error")) and
    (.message | type == "string") and
    .["ecs.version"] == "8.11.0" and
    (.["service.name"] | type == "string") and
    has("mpi.rank") and
    (.["host.name"] | type == "string") and
    (if ((.["event.action"] // "") | startswith("request.")) then (.["request.id"] | type == "string")
     else true end);
  . as $line | (try ($line | fromjson | ecs) catch false) as $ok |
  if $ok then empty else "\(input_line_number): \($line)" end'

total=0
for file in "$@"; do
  [ "$file" = - ] && file=/dev/stdin
  content=$(cat "$file")
  [ -n "$content" ] || fail "$file has no log lines"
  bad=$(printf '%s\n' "$content" | jq -R -r "$check") || fail "jq could not read $file"
  [ -z "$bad" ] || fail "$file: lines that are not ECS log lines:
$bad"
  total=$((total + $(printf '%s\n' "$content" | wc -l)))
done
echo "check_ecs_log: OK ($total lines)"

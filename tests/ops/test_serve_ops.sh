#!/usr/bin/env bash
# Operations against a real server: mpirun -np 2 dshpc serve (demo model, random weights, tp 2)
# on a free loopback port, a few requests with curl, then
#   - its /metrics passes `promtool check metrics` and has every family of dshpc_series.txt;
#   - the figures add up (successes, the 400 as a failure, tokens) and the worker rank's own
#     series (collectives, forward steps) reached rank 0;
#   - a real Prometheus (Debian package) on loopback scrapes it, and queries through its HTTP API
#     return dshpc_ series, rank 1's included; the dashboard's queries run;
#   - after a drain (exit 0), every log line of both ranks is an ECS JSON object, request events
#     carry request.id (accepted, first token, finished with reason, error), and rank 0 logged
#     the weight load after binding the port.
#   tests/ops/test_serve_ops.sh DSHPC MPIRUN_AND_FLAGS...
set -euo pipefail
dshpc=${1:?usage: test_serve_ops.sh DSHPC MPIRUN_AND_FLAGS...}
shift
launcher=("$@")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
mpirun_pid=""
cleanup() {
  [ -n "$mpirun_pid" ] && kill "$mpirun_pid" 2>/dev/null && wait "$mpirun_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "test_serve_ops: FAIL: $*" >&2
  echo "--- last lines of the server's log:" >&2
  tail -n 20 "$work/serve.log" >&2 || true
  exit 1
}
command -v jq >/dev/null 2>&1 || fail "jq not found (launch/setup.sh installs it)"

"${launcher[@]}" -np 2 "$dshpc" serve --model "$root/configs/models/demo.json" --random-weights \
  --tp 2 --host 127.0.0.1 --port 0 --log-format json >"$work/stdout" 2>"$work/serve.log" &
mpirun_pid=$!

# The port from the "server.listening" line (port 0: the kernel picked a free one).
port=""
for _ in $(seq 600); do
  port=$(grep -F '"server.listening"' "$work/serve.log" 2>/dev/null | jq -r '.["server.port"]' 2>/dev/null | head -n 1 || true)
  [ -n "$port" ] && break
  kill -0 "$mpirun_pid" 2>/dev/null || fail "the server exited before listening"
  sleep 0.1
done
[ -n "$port" ] || fail "no server.listening log line within 60 s"
url=http://127.0.0.1:$port
for _ in $(seq 600); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/health")" = 200 ] && break
  sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/health")" = 200 ] || fail "/health never became 200"

# A few requests: chat, a stream, completions, and one the server must refuse (400).
json=(-H 'Content-Type: application/json')
post() { curl -s -o "$work/body" -w '%{http_code}' "$url$1" "${json[@]}" -d "$2"; }
[ "$(post /v1/chat/completions '{"model":"demo","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}')" = 200 ] ||
  fail "chat completion: $(cat "$work/body")"
[ "$(post /v1/completions '{"model":"demo","prompt":"Hello","max_tokens":3,"stream":true}')" = 200 ] ||
  fail "streamed completion"
for prompt in one two; do
  [ "$(post /v1/completions "{\"model\":\"demo\",\"prompt\":\"$prompt\",\"max_tokens\":2}")" = 200 ] ||
    fail "completion: $(cat "$work/body")"
done
[ "$(post /v1/completions '{"model":"demo","prompt":"x","temperature":-1}')" = 400 ] ||
  fail "a negative temperature was not refused with 400"

# The worker's figures come with the steps at most once a second: wait until rank 1's all-reduce
# histogram shows up (it proves that they reached rank 0).
metrics="$work/metrics.txt"
for _ in $(seq 100); do
  curl -fsS "$url/metrics" >"$metrics" || fail "GET /metrics"
  grep -qE '^dshpc_collective_seconds_count\{[^}]*op="all_reduce_sum"[^}]*rank="1"[^}]*\} [1-9]' "$metrics" && break
  sleep 0.1
done

"$here/check_metrics.sh" --url "$url/metrics"

# Values: sum of a family's samples whose labels match a pattern.
total() {  # total FAMILY LABEL_REGEX
  awk -v name="$1" -v labels="$2" '
    index($0, name "{") == 1 && $0 ~ labels { sum += $NF }
    END { printf "%g\n", sum + 0 }' "$metrics"
}
positive() { awk -v v="$1" 'BEGIN { exit !(v > 0) }'; }
[ "$(total dshpc_request_success_total 'finished_reason="(stop|length)"')" = 4 ] ||
  fail "expected 4 successful requests, /metrics says $(total dshpc_request_success_total .)"
[ "$(total dshpc_request_failure_total 'reason="invalid_request"')" = 1 ] ||
  fail "expected 1 invalid_request failure: $(grep '^dshpc_request_failure_total' "$metrics")"
[ "$(total dshpc_e2e_request_latency_seconds_count .)" = 4 ] || fail "e2e latency count"
[ "$(total dshpc_time_to_first_token_seconds_count .)" = 4 ] || fail "time to first token count"
[ "$(total dshpc_request_queue_time_seconds_count .)" = 4 ] || fail "queue time count"
positive "$(total dshpc_generation_tokens_total .)" || fail "no generated tokens counted"
positive "$(total dshpc_batch_size_count .)" || fail "no scheduler step counted"
for rank in 0 1; do
  positive "$(total dshpc_collective_seconds_count "op=\"all_reduce_sum\".*rank=\"$rank\"")" ||
    fail "rank $rank: no all-reduce observed in dshpc_collective_seconds"
  positive "$(total dshpc_step_seconds_count "phase=\"forward\".*rank=\"$rank\"")" ||
    fail "rank $rank: no forward step observed in dshpc_step_seconds"
  grep -qE "^dshpc_gpu_memory_used_bytes\{[^}]*rank=\"$rank\"" "$metrics" ||
    fail "rank $rank: no dshpc_gpu_memory_used_bytes"
done
positive "$(total dshpc_step_seconds_count 'phase="step".*rank="0"')" || fail "no coordinator step phase"
echo "test_serve_ops: /metrics figures add up"

"$here/scrape_with_prometheus.sh" "127.0.0.1:$port" \
  --dashboard "$root/configs/grafana/dshpc-dashboard.json" \
  --expect 'sum(dshpc_request_success_total{job="dshpc"})' \
  --expect 'dshpc_step_seconds_count{job="dshpc", rank="1", phase="forward"}' \
  --expect 'sum by (rank) (dshpc_collective_seconds_sum{job="dshpc"})'

# Drain: SIGUSR1 reaches both ranks (as launch/mpirun.sh sends it); exit 0.
kill -USR1 "$mpirun_pid"
set +e
wait "$mpirun_pid"
rc=$?
set -e
mpirun_pid=""
[ "$rc" = 0 ] || fail "the server exited $rc after a drain"
[ ! -s "$work/stdout" ] || fail "serve wrote to stdout: $(head -c 300 "$work/stdout")"

# mpirun's own notes on stderr ("mpiexec: Forwarding signal 10 to job") are not dshpc's; every
# other line is.
log="$work/dshpc.log"
grep -vE '^(mpirun|mpiexec|prterun): ' "$work/serve.log" >"$log" || true
"$here/check_ecs_log.sh" "$log"
events() { jq -c --arg a "$1" 'select(.["event.action"] == $a)' "$log"; }
count() { events "$1" | wc -l; }
[ "$(jq -s '[.[]["mpi.rank"]] | unique' "$log" | jq -c .)" = "[0,1]" ] ||
  fail "expected lines of ranks 0 and 1, got $(jq -s -c '[.[]["mpi.rank"]] | unique' "$log")"
[ "$(count request.accepted)" = 4 ] || fail "expected 4 request.accepted lines, got $(count request.accepted)"
[ "$(count request.first_token)" = 4 ] || fail "expected 4 request.first_token lines"
[ "$(count request.finished)" = 4 ] || fail "expected 4 request.finished lines"
[ "$(count request.error)" = 1 ] || fail "expected 1 request.error line"
# (jq -s: one verdict over all lines; jq -e alone judges only the last input.)
events request.finished | jq -s -e 'all(.[]; .["request.finish_reason"] | IN("stop", "length"))' >/dev/null ||
  fail "a request.finished line without a finish reason: $(events request.finished)"
events request.error | jq -s -e 'all(.[]; .["http.response.status_code"] == 400 and (.["error.message"] | test("temperature")))' >/dev/null ||
  fail "request.error does not say 400 and why: $(events request.error)"
# Every finished request was accepted and got a first token, under the same request.id.
for id in $(events request.finished | jq -r '.["request.id"]'); do
  for action in request.accepted request.first_token; do
    events "$action" | jq -s -e --arg id "$id" 'any(.[]; .["request.id"] == $id)' >/dev/null ||
      fail "request $id finished without a $action line"
  done
done
# Rank 0 bound the port, then loaded the weights and logged it with the byte counts.
jq -s -e '
  (map(.["event.action"]) | index("server.listening")) as $listen |
  (map(.["event.action"]) | index("weights.load_done")) as $done |
  $listen != null and $done != null and $listen < $done' "$log" >/dev/null ||
  fail "server.listening does not come before weights.load_done"
events weights.load_done | jq -e '.["mpi.rank"] == 0 and .["dshpc.load.bytes_total"] > 0 and
  .["dshpc.load.bytes_done"] == .["dshpc.load.bytes_total"] and .["dshpc.load.bytes_per_second"] > 0' >/dev/null ||
  fail "weights.load_done lacks its figures: $(events weights.load_done)"
echo "test_serve_ops: OK ($(wc -l <"$log") ECS log lines, $(grep -c '^dshpc_' "$metrics") samples)"

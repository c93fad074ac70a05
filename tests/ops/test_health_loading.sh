#!/usr/bin/env bash
# The HTTP port answers before the weights are loaded: /health is 503 with a JSON body that shows
# the loading progress (bytes, percent) until the model is ready, then 200. The server is started
# from a deployment YAML that asks for text logs (--log-format through the file), and rank 0's
# text lines report the load. A model with a wider hidden size than demo.json takes about a
# second to load on one rank, long enough to be seen loading.
#   tests/ops/test_health_loading.sh DSHPC
set -euo pipefail
dshpc=${1:?usage: test_health_loading.sh DSHPC}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "test_health_loading: FAIL: $*" >&2; tail -n 20 "$work/serve.log" >&2 || true; exit 1; }

jq '.hidden_size = 512 | .intermediate_size = 1024 | .moe_intermediate_size = 256' \
  "$root/configs/models/demo.json" >"$work/model.json"
cat >"$work/deploy.yaml" <<YAML
model: $work/model.json
random_weights: true
host: 127.0.0.1
port: 0
log_format: text
log_level: info
YAML

"$dshpc" serve --config "$work/deploy.yaml" >"$work/stdout" 2>"$work/serve.log" &
pid=$!
port=""
for _ in $(seq 2000); do
  port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/serve.log" | head -n 1)
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || fail "the server exited before listening"
  sleep 0.005
done
[ -n "$port" ] || fail "no 'listening on' line"

# Poll as fast as curl goes: every 503 body must be a loading report; the first 200 ends it.
loading=0
for _ in $(seq 3000); do
  code=$(curl -s -o "$work/health" -w '%{http_code}' "http://127.0.0.1:$port/health" || true)
  if [ "$code" = 503 ]; then
    jq -e '.status == "loading" and (.progress | type == "number") and .progress >= 0 and .progress <= 1
           and .total_bytes >= .loaded_bytes and .loaded_bytes >= 0
           and (.percent - 100 * .progress | fabs) < 0.1' "$work/health" >/dev/null ||
      fail "503 without a loading report: $(cat "$work/health")"
    jq -e '.total_bytes > 0' "$work/health" >/dev/null && cp "$work/health" "$work/loading"
    loading=$((loading + 1))
  elif [ "$code" = 200 ]; then
    break
  fi
  sleep 0.01
done
[ "$code" = 200 ] || fail "/health never became 200 (last: $code)"
[ "$loading" -gt 0 ] || fail "/health was never 503 while loading (the port was bound late?)"
[ -s "$work/loading" ] || fail "no loading report carried the shard's total bytes"
jq -e '.status == "ok"' "$work/health" >/dev/null || fail "ready body: $(cat "$work/health")"

# Text logs (from the YAML's log_format), with the load reported by rank 0.
grep -qE '^[0-9T:.-]+Z INFO rank 0 loading weights event.action=weights.load_start dshpc.load.bytes_total=[1-9]' \
  "$work/serve.log" || fail "no text line for the start of the load"
grep -qE 'INFO rank 0 weights loaded .*dshpc.load.bytes_per_second=' "$work/serve.log" ||
  fail "no text line for the end of the load"
! grep -q '^{' "$work/serve.log" || fail "JSON lines although log_format is text"

kill -TERM "$pid"
set +e
wait "$pid"
rc=$?
set -e
pid=""
[ "$rc" = 0 ] || fail "serve exited $rc after SIGTERM"
echo "test_health_loading: OK ($loading loading answers, e.g. $(jq -c . "$work/loading"))"

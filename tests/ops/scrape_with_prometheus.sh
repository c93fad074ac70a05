#!/usr/bin/env bash
# Starts a real Prometheus server (Debian package) on loopback that scrapes dshpc's /metrics at
# HOST:PORT and evaluates configs/prometheus/alerts.yml, then asks its HTTP API for dshpc series:
# the end-to-end path of the monitoring, without any network beyond 127.0.0.1.
#   tests/ops/scrape_with_prometheus.sh 127.0.0.1:8000 [--dashboard DASHBOARD.json] [--expect QUERY]...
# Passes when a query through /api/v1/query returns dshpc_num_requests_running and
# up{job="dshpc"} == 1 for the target, and the alert rules loaded without error. With a Grafana
# dashboard, each of its queries must also run ($model → .*, $__rate_interval → 1m). Each
# --expect QUERY must return at least one series whose value is above 0.
set -euo pipefail
usage="usage: scrape_with_prometheus.sh HOST:PORT [--dashboard DASHBOARD.json] [--expect QUERY]..."
target=${1:?$usage}
shift
dashboard=""
expects=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dashboard) dashboard=${2:?$usage}; shift 2 ;;
    --expect) expects+=("${2:?$usage}"); shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/../.." && pwd)
fail() { echo "scrape_with_prometheus: FAIL: $*" >&2; [ -s "${work:-}/prometheus.log" ] && tail -n 20 "$work/prometheus.log" >&2; exit 1; }
command -v prometheus >/dev/null 2>&1 ||
  fail "prometheus not found: install the Debian package 'prometheus' (launch/setup.sh does)"

work=$(mktemp -d)
prom_pid=""
cleanup() {
  if [ -n "$prom_pid" ]; then
    kill "$prom_pid" 2>/dev/null || true
    wait "$prom_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# A loopback port for Prometheus: a random high port that nothing answers on (bash cannot bind
# port 0 and read back what the kernel chose).
port=""
for _ in $(seq 50); do
  candidate=$((20000 + RANDOM % 40000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
done
[ -n "$port" ] || fail "no free port for Prometheus"

cp "$root/configs/prometheus/alerts.yml" "$work/alerts.yml"
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - alerts.yml
scrape_configs:
  - job_name: dshpc
    static_configs:
      - targets: ["$target"]
YAML

prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$port" --log.level=warn >"$work/prometheus.log" 2>&1 &
prom_pid=$!

api="http://127.0.0.1:$port/api/v1"
query() { curl -fsS --max-time 2 --get "$api/query" --data-urlencode "query=$1" 2>/dev/null; }

deadline=$((SECONDS + 30))
series=""
while [ $SECONDS -lt $deadline ]; do
  kill -0 "$prom_pid" 2>/dev/null || fail "prometheus exited"
  series=$(query 'dshpc_num_requests_running{job="dshpc"}' | jq -r '.data.result | length' 2>/dev/null || true)
  [ "${series:-0}" -gt 0 ] 2>/dev/null && break
  sleep 0.3
done
[ "${series:-0}" -gt 0 ] 2>/dev/null || fail "no dshpc_num_requests_running from $target within 30 s"

up=$(query "up{job=\"dshpc\",instance=\"$target\"}" | jq -r '.data.result[0].value[1]')
[ "$up" = 1 ] || fail "up{instance=\"$target\"} is '$up', expected 1"

# The alert rules loaded and evaluate without error.
rules=$(curl -fsS --max-time 2 "$api/rules" | jq -r '[.data.groups[].rules[]] | length')
[ "$rules" -ge 6 ] || fail "only $rules alert rules loaded"
bad=$(curl -fsS --max-time 2 "$api/rules" | jq -r '[.data.groups[].rules[] | select(.health == "err")] | map(.name + ": " + .lastError) | join("; ")')
[ -z "$bad" ] || fail "rules failing to evaluate: $bad"

checked=0
if [ -n "$dashboard" ]; then
  while IFS= read -r expr; do
    expr=${expr//\$model/.*}
    expr=${expr//\$__rate_interval/1m}
    status=$(query "$expr" | jq -r '.status' 2>/dev/null || true)
    [ "$status" = success ] || fail "dashboard query does not run: $expr"
    checked=$((checked + 1))
  done < <(jq -r '.panels[].targets[]?.expr' "$dashboard")
fi

# Queries that must find a positive value (e.g. a worker rank's series: its figures reached rank 0
# and, through it, Prometheus). Scrapes are 1 s apart: wait a few for counters that move late.
for expr in "${expects[@]}"; do
  found=""
  deadline=$((SECONDS + 15))
  while [ $SECONDS -lt $deadline ]; do
    found=$(query "$expr" | jq -r '[.data.result[] | select((.value[1] | tonumber) > 0)] | length' 2>/dev/null || true)
    [ "${found:-0}" -gt 0 ] 2>/dev/null && break
    sleep 0.3
  done
  [ "${found:-0}" -gt 0 ] 2>/dev/null || fail "no positive value for '$expr': $(query "$expr")"
  checked=$((checked + 1))
done

families=$(curl -fsS --max-time 2 "$api/label/__name__/values" | jq -r '[.data[] | select(startswith("dshpc_"))] | length')
echo "scrape_with_prometheus: OK (Prometheus on 127.0.0.1:$port scraped $target: $families dshpc_ series names, $rules rules, $checked queries)"

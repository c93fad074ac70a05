#!/usr/bin/env bash
# The Grafana dashboard parses as JSON, is importable (title, uid, panels with unique ids, a
# Prometheus datasource variable) and has a panel for each figure issue 7 asks for.
#   tests/ops/test_grafana.sh configs/grafana/dshpc-dashboard.json
set -euo pipefail
dashboard=${1:?usage: test_grafana.sh DASHBOARD.json}
fail() { echo "test_grafana: FAIL: $*" >&2; exit 1; }
command -v jq >/dev/null 2>&1 || fail "jq not found (launch/setup.sh installs it)"

jq -e . "$dashboard" >/dev/null || fail "$dashboard is not valid JSON"
jq -e '(.title | type == "string") and (.uid | type == "string") and (.panels | length > 0)' \
  "$dashboard" >/dev/null || fail "title, uid or panels missing"
jq -e '[.templating.list[] | select(.type == "datasource" and .query == "prometheus")] | length == 1' \
  "$dashboard" >/dev/null || fail "no Prometheus datasource variable"
# Panel ids unique; every graph panel has at least one query with an expression.
jq -e '[.panels[].id] | length == (unique | length)' "$dashboard" >/dev/null || fail "duplicate panel ids"
jq -e '[.panels[] | select(.type != "row") | (.targets | length > 0) and all(.targets[]; (.expr | type == "string") and (.expr | length > 0))] | all' \
  "$dashboard" >/dev/null || fail "a panel without a PromQL expression"

# A panel per figure, found by the series its queries use.
expect() {
  local what=$1 pattern=$2
  jq -e --arg p "$pattern" '[.panels[].targets[]?.expr | select(test($p))] | length > 0' "$dashboard" >/dev/null ||
    fail "no panel for $what (a query matching /$pattern/)"
}
expect "QPS" 'rate\(dshpc_request_success_total'
expect "p50/p99 latency" 'histogram_quantile\(0\.5, .*dshpc_e2e_request_latency_seconds_bucket'
expect "p99 latency" 'histogram_quantile\(0\.99, .*dshpc_e2e_request_latency_seconds_bucket'
expect "time to first token" 'dshpc_time_to_first_token_seconds_bucket'
expect "success rate" 'dshpc_request_failure_total'
expect "running requests" 'dshpc_num_requests_running'
expect "waiting requests" 'dshpc_num_requests_waiting'
expect "KV cache usage" 'dshpc_kv_cache_usage_ratio'
expect "GPU utilisation" 'dshpc_gpu_utilization_ratio'
expect "GPU memory" 'dshpc_gpu_memory_used_bytes'
expect "collective time per rank" 'dshpc_collective_seconds_sum'
expect "step time per rank" 'dshpc_step_seconds'
echo "test_grafana: OK ($(jq '.panels | length' "$dashboard") panels)"

#!/usr/bin/env bash
# A real Prometheus scrapes the probe's /metrics (tests/ops/ops_probe.cpp) over loopback.
#   tests/ops/test_prometheus_scrape.sh path/to/dshpc_ops_probe
set -euo pipefail
probe=${1:?usage: test_prometheus_scrape.sh path/to/dshpc_ops_probe}
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp)
"$probe" serve >"$out" &
probe_pid=$!
cleanup() { kill "$probe_pid" 2>/dev/null || true; wait "$probe_pid" 2>/dev/null || true; rm -f "$out"; }
trap cleanup EXIT
address=""
for _ in $(seq 100); do
  address=$(sed -n 's/^listening //p' "$out")
  [ -n "$address" ] && break
  sleep 0.05
done
[ -n "$address" ] || { echo "FAIL: the probe did not start listening" >&2; exit 1; }
"$here/check_metrics.sh" --url "http://$address/metrics"
"$here/scrape_with_prometheus.sh" "$address" "$here/../../configs/grafana/dshpc-dashboard.json"

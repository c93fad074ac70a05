#!/usr/bin/env bash
# Every dshpc_ series that the alert rules, their tests, the Grafana dashboard and the docs name
# is one that dshpc serves (tests/ops/dshpc_series.txt, itself checked against /metrics), and
# docs/metrics.md describes every served family. Catches a renamed metric that would leave an
# alert or a panel silently empty.
#   tests/ops/check_references.sh REPO_ROOT
set -euo pipefail
root=${1:?usage: check_references.sh REPO_ROOT}
fail() { echo "check_references: FAIL: $*" >&2; exit 1; }

known=$(grep -vE '^(#|$)' "$root/tests/ops/dshpc_series.txt")
# dshpc_ words that are not metrics (targets, files).
not_metrics='^(dshpc_series|dshpc_unit_tests|dshpc_common|dshpc_coordinator|dshpc_worker|dshpc_parallel|dshpc_kernels)$'

files=("$root/configs/prometheus/alerts.yml" "$root/configs/prometheus/alerts_test.yml"
       "$root/configs/grafana/dshpc-dashboard.json" "$root/docs/metrics.md" "$root/docs/deploy.md")
problems=()
for file in "${files[@]}"; do
  [ -r "$file" ] || fail "cannot read $file"
  for name in $(grep -ohE '\bdshpc_[a-z0-9_]+' "$file" | sort -u | grep -vE "$not_metrics" || true); do
    base=$name
    if ! grep -qxF "$base" <<<"$known"; then
      # Histogram series: NAME_bucket, NAME_sum, NAME_count.
      base=$(sed -E 's/_(bucket|sum|count)$//' <<<"$name")
    fi
    grep -qxF "$base" <<<"$known" || problems+=("${file#$root/}: $name")
  done
done
[ ${#problems[@]} -eq 0 ] || fail "names that dshpc does not serve: ${problems[*]}"

for name in $known; do
  grep -q "\`$name\`" "$root/docs/metrics.md" || problems+=("$name")
done
[ ${#problems[@]} -eq 0 ] || fail "docs/metrics.md does not describe: ${problems[*]}"
echo "check_references: OK"

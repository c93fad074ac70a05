#!/usr/bin/env bash
# Checks dshpc's /metrics text: `promtool check metrics` finds no problem (no lint warning
# either), and every family of tests/ops/dshpc_series.txt is there.
#   tests/ops/check_metrics.sh --url http://127.0.0.1:8000/metrics     a running server
#   tests/ops/check_metrics.sh --command cat saved_metrics.txt
# promtool comes with Debian's prometheus package (launch/setup.sh); without it the check fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fail() { echo "check_metrics: FAIL: $*" >&2; exit 1; }

command -v promtool >/dev/null 2>&1 ||
  fail "promtool not found: install the Debian package 'prometheus' (launch/setup.sh does)"

text=$(mktemp)
trap 'rm -f "$text"' EXIT
case "${1:-}" in
  --url) curl -fsS --max-time 10 "${2:?--url needs a URL}" >"$text" || fail "cannot GET $2" ;;
  --command) shift; "$@" >"$text" || fail "'$*' exited $?" ;;
  *) echo "usage: check_metrics.sh --url URL | --command CMD [ARGS...]" >&2; exit 2 ;;
esac
[ -s "$text" ] || fail "the metrics text is empty"

# promtool exits 1 on a parse error and 3 on lint problems (counter without _total, …).
lint=$(promtool check metrics <"$text" 2>&1) || fail "promtool check metrics: $lint"
[ -z "$lint" ] || fail "promtool check metrics reported: $lint"

missing=()
while IFS= read -r name; do
  case "$name" in ''|'#'*) continue ;; esac
  grep -q "^# TYPE $name " "$text" || missing+=("$name")
  # Each family must have at least one sample.
  grep -qE "^${name}(_bucket|_sum|_count)?(\{| )" "$text" || missing+=("$name (no sample)")
done <"$here/dshpc_series.txt"
[ ${#missing[@]} -eq 0 ] || fail "missing from /metrics: ${missing[*]}"

# Nothing outside the documented list.
extra=$(grep -oE '^# TYPE dshpc_[a-z0-9_]+' "$text" | awk '{print $3}' | sort -u |
        grep -vxF -f <(grep -vE '^(#|$)' "$here/dshpc_series.txt") || true)
[ -z "$extra" ] || fail "families not in tests/ops/dshpc_series.txt (document them): $extra"

echo "check_metrics: OK ($(grep -c '^dshpc_' "$text") samples, promtool clean)"

#!/usr/bin/env bash
# expect_error.sh EXPECTED_CODE SUBSTRING -- COMMAND...
# Passes when COMMAND exits with EXPECTED_CODE (never by a signal) and its stderr contains SUBSTRING.
set -u
want_code=$1
want_text=$2
shift 3
stderr_file=$(mktemp)
"$@" > /dev/null 2> "$stderr_file"
code=$?
msg=$(cat "$stderr_file")
rm -f "$stderr_file"
if [ "$code" -ge 128 ]; then
  echo "FAIL: killed by signal $((code - 128)): $msg"
  exit 1
fi
if [ "$code" -ne "$want_code" ]; then
  echo "FAIL: exit code $code, expected $want_code; stderr: $msg"
  exit 1
fi
if ! grep -qF -- "$want_text" <<< "$msg"; then
  echo "FAIL: stderr does not mention '$want_text': $msg"
  exit 1
fi
echo "ok: exit $code: $msg"

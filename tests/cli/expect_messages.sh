#!/usr/bin/env bash
# expect_messages.sh EXPECTED_CODE TEXT [TEXT...] -- COMMAND...
# Passes when COMMAND exits with EXPECTED_CODE (never by a signal) and its stderr contains every
# TEXT (fixed strings).
set -u
want_code=$1
shift
texts=()
while [ "$1" != "--" ]; do texts+=("$1"); shift; done
shift
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
for text in "${texts[@]}"; do
  if ! grep -qF -- "$text" <<< "$msg"; then
    echo "FAIL: stderr does not mention '$text': $msg"
    exit 1
  fi
done
echo "ok: exit $code: $msg"

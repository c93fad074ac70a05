#!/usr/bin/env bash
# dshpc batch on a file with good and malformed lines, then again over the same output: the
# second run answers nothing twice.   batch_e2e.sh DSHPC
set -u
dshpc=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/in.jsonl" <<'JSON'
{"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}}
{"custom_id": "completion", "method": "POST", "url": "/v1/completions", "body": {"model": "demo", "prompt": "Once", "max_tokens": 3}}
this line is not JSON
{"custom_id": "bad-body", "method": "POST", "url": "/v1/completions", "body": {"model": "demo", "prompt": "x", "max_tokens": -1}}
{"custom_id": "bad-url", "method": "POST", "url": "/v1/embeddings", "body": {}}
{"custom_id": "seeded", "method": "POST", "url": "/v1/completions", "body": {"model": "demo", "prompt": "y", "max_tokens": 4, "temperature": 1, "seed": 3}}
JSON
run() { OPENBLAS_NUM_THREADS=1 "$dshpc" batch --model "$root/configs/models/demo.json" --random-weights \
          --input "$work/in.jsonl" --output "$work/out.jsonl" --concurrency 4 2> "$work/log"; }
passed=0 failed=0
check() { if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "ok: $1"; else failed=$((failed + 1)); echo "FAIL: $1 — $3"; fi; }
run; rc=$?
check "batch exits 0 with bad lines in its input" $([ $rc = 0 ]; echo $?) "exit $rc: $(tail -3 "$work/log")"
check "one output line per input line" $([ "$(wc -l < "$work/out.jsonl")" = 6 ]; echo $?) "$(wc -l < "$work/out.jsonl") lines"
q() { jq -c "select(.custom_id == \"$1\") | $2" "$work/out.jsonl"; }
check "chat answered" $([ "$(q chat '.response.status_code')" = 200 ] && [ "$(q chat '.response.body.usage.completion_tokens')" = 5 ]; echo $?) "$(q chat .)"
check "completion answered" $([ "$(q completion '.response.body.object')" = '"text_completion"' ]; echo $?) "$(q completion .)"
check "bad body gets the server's 400" $([ "$(q bad-body '.response.status_code')" = 400 ]; echo $?) "$(q bad-body .)"
check "bad url gets an error line" $(q bad-url '.error.message' | grep -q url; echo $?) "$(q bad-url .)"
check "unparseable line gets an error line" $(jq -c 'select(.id == "batch_req_3") | .error.message' "$work/out.jsonl" | grep -q JSON; echo $?) "$(sed -n 3p "$work/out.jsonl")"
check "progress lines" $(grep -q "done, .* tok/s" "$work/log"; echo $?) "$(cat "$work/log")"
run
check "a second run skips what is answered" $([ "$(wc -l < "$work/out.jsonl")" = 6 ] && grep -q "0 requests to run, 6 already" "$work/log"; echo $?) "$(grep 'requests to run' "$work/log")"
echo "$passed passed, $failed failed"
[ $failed = 0 ]

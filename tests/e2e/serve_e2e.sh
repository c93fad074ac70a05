#!/usr/bin/env bash
# End to end: mpirun -np 2 dshpc serve (demo model, random weights, tp 2) on loopback, exercised
# with curl and with the official openai npm client, then drained with a signal.
#   serve_e2e.sh DSHPC MPIRUN_AND_FLAGS...
set -u
dshpc=$1; shift
launcher=("$@")
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'kill $mpirun_pid 2>/dev/null; rm -rf "$work"' EXIT
passed=0 failed=0
check() {  # check NAME CONDITION-RESULT DETAIL
  if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "ok: $1"; else failed=$((failed + 1)); echo "FAIL: $1 — $3"; fi
}

"${launcher[@]}" -np 2 "$dshpc" serve --model "$root/configs/models/demo.json" --random-weights \
  --tp 2 --host 127.0.0.1 --port 0 --max-body-bytes 65536 --max-batch-size 4 --max-queue-len 40 \
  > "$work/serve.log" 2>&1 &
mpirun_pid=$!
port=""
for _ in $(seq 1 600); do
  port=$(grep -o "listening on http://[^ ]*:[0-9]*" "$work/serve.log" | grep -o "[0-9]*$" | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { cat "$work/serve.log"; echo "FAIL: the server did not start"; exit 1; }
url=http://127.0.0.1:$port
for _ in $(seq 1 600); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/health")" = 200 ] && break
  sleep 0.1
done
code() { curl -s -o "$work/body" -w '%{http_code}' "$@"; }
json=(-H 'Content-Type: application/json')

c=$(code "$url/health"); check "/health is 200 when ready" $([ "$c" = 200 ]; echo $?) "$c"
c=$(code "$url/v1/models"); check "/v1/models lists demo" $([ "$c" = 200 ] && grep -q '"demo"' "$work/body"; echo $?) "$(cat "$work/body")"
c=$(code "$url/v1/chat/completions" "${json[@]}" -d '{"model":"demo","messages":[{"role":"user","content":"Hi"}],"max_tokens":5}')
check "chat completion" $([ "$c" = 200 ] && jq -e '.choices[0].message.role == "assistant" and .usage.completion_tokens == 5 and .usage.total_tokens == .usage.prompt_tokens + 5' "$work/body" > /dev/null; echo $?) "$c $(cat "$work/body")"
c=$(code -N "$url/v1/completions" "${json[@]}" -d '{"model":"demo","prompt":"Hello","max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}')
check "completion stream ends with [DONE] after a usage chunk" $([ "$c" = 200 ] && tail -2 "$work/body" | grep -q '^data: \[DONE\]' && grep -q '"completion_tokens":4' "$work/body"; echo $?) "$c"
c=$(code "$url/v1/completions" "${json[@]}" -d '{"model":"demo","prompt":"x","max_tokens":3,"stop_token_ids":[]}')
check "completion" $([ "$c" = 200 ]; echo $?) "$c"
c=$(code "$url/tokenize" "${json[@]}" -d '{"prompt":"Hello, world"}')
check "/tokenize" $([ "$c" = 200 ] && jq -e '.count == (.tokens | length)' "$work/body" > /dev/null; echo $?) "$c"

# Errors in the OpenAI shape.
err() {  # err NAME EXPECTED_CODE CURL_ARGS...
  local name=$1 want=$2; shift 2
  local got; got=$(code "$@")
  check "$name is $want" $([ "$got" = "$want" ] && jq -e '.error.message and .error.type' "$work/body" > /dev/null; echo $?) "got $got: $(head -c 300 "$work/body")"
}
err "malformed JSON" 400 "$url/v1/completions" "${json[@]}" -d '{"model":"demo","prompt":'
err "wrong type" 400 "$url/v1/completions" "${json[@]}" -d '{"model":"demo","prompt":"x","max_tokens":"many"}'
err "out-of-range temperature" 400 "$url/v1/completions" "${json[@]}" -d '{"model":"demo","prompt":"x","temperature":-1}'
err "prompt longer than the context" 400 "$url/v1/completions" "${json[@]}" -d '{"model":"demo","prompt":"x","max_tokens":100000}'
err "unknown model" 404 "$url/v1/completions" "${json[@]}" -d '{"model":"gpt-4","prompt":"x"}'
err "unknown path" 404 "$url/v2/everything"
head -c 100000 /dev/zero | tr '\0' 'a' > "$work/big"
err "body over the limit" 413 "$url/v1/completions" "${json[@]}" --data-binary @"$work/big"
# A full queue: 4 long requests run (max_batch_size 4), 40 short ones wait (max_queue_len 40),
# the next is refused.
busy=()
for i in $(seq 1 44); do
  tokens=1
  [ "$i" -le 4 ] && tokens=120
  curl -s -o /dev/null "$url/v1/completions" "${json[@]}" -d "{\"model\":\"demo\",\"prompt\":\"x\",\"max_tokens\":$tokens,\"ignore_eos\":true}" &
  busy+=($!)
  [ "$i" -eq 4 ] && sleep 0.5
done
sleep 1
c=$(curl -s -D "$work/headers" -o "$work/body" -w '%{http_code}' "$url/v1/completions" "${json[@]}" -d '{"model":"demo","prompt":"x","max_tokens":2}')
check "a full queue is 429 with Retry-After" $([ "$c" = 429 ] && grep -qi '^retry-after:' "$work/headers"; echo $?) "got $c"
wait "${busy[@]}"

# The official openai client.
if node "$root/tests/e2e/openai_client.mjs" "$url" demo > "$work/node.log" 2>&1; then node_ok=0; else node_ok=1; fi
cat "$work/node.log"
check "openai npm client" $node_ok "see above"

# Drain: a stream in flight completes, new requests get 503, the job exits 0.
curl -sN "$url/v1/completions" "${json[@]}" -d '{"model":"demo","prompt":"x","max_tokens":60,"stream":true,"ignore_eos":true}' > "$work/drain_stream" &
stream_pid=$!
sleep 0.5
kill -USR1 $mpirun_pid
sleep 0.3
c=$(code "$url/v1/completions" "${json[@]}" -d '{"model":"demo","prompt":"x","max_tokens":2}')
check "new requests get 503 while draining" $([ "$c" = 503 ]; echo $?) "got $c"
wait $stream_pid
check "the stream in flight completes during the drain" $(tail -2 "$work/drain_stream" | grep -q '^data: \[DONE\]' && ! grep -q '"error"' "$work/drain_stream"; echo $?) "$(tail -c 300 "$work/drain_stream")"
wait $mpirun_pid
rc=$?
check "the job exits 0 after the drain" $([ $rc = 0 ]; echo $?) "exit $rc; $(tail -5 "$work/serve.log")"

echo "$passed passed, $failed failed"
[ $failed = 0 ]

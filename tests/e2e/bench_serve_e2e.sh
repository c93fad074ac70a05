#!/usr/bin/env bash
# dshpc bench serve against a real dshpc serve (demo model, random weights, one rank) on
# loopback: a Poisson run of completions with exact output lengths, a chat run from a dataset
# under a concurrency cap and an SLO, and a run against a closed port that must fail loudly.
#   bench_serve_e2e.sh DSHPC
set -u
dshpc=${1:?usage: bench_serve_e2e.sh DSHPC}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
passed=0 failed=0
check() {  # check NAME EXIT-STATUS-OF-CONDITION DETAIL
  if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "ok: $1"; else failed=$((failed + 1)); echo "FAIL: $1 — $3"; fi
}

"$dshpc" serve --model "$root/configs/models/demo.json" --random-weights --host 127.0.0.1 --port 0 \
  --log-format text > "$work/serve.out" 2> "$work/serve.log" &
server_pid=$!
port=""
for _ in $(seq 1 600); do
  port=$(grep -o "listening on http://127.0.0.1:[0-9]*" "$work/serve.log" | grep -o "[0-9]*$" | head -1)
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$port" ] || { tail -20 "$work/serve.log"; echo "FAIL: the server did not start"; exit 1; }
url=http://127.0.0.1:$port
for _ in $(seq 1 600); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/health")" = 200 ] && break
  sleep 0.1
done

# 1. Completions, Poisson arrivals at 20/s, exact lengths. The model name comes from /v1/models.
"$dshpc" bench serve --url "$url" --num-requests 12 --request-rate 20 --input-len 16 --output-len 8 \
  --ignore-eos --seed 1 --warmup 2 --json "$work/out.json" > "$work/bench.out" 2> "$work/bench.err"
rc=$?
cat "$work/bench.out"
check "bench serve exits 0" $([ $rc = 0 ]; echo $?) "exit $rc: $(cat "$work/bench.err")"
python3 - "$work/out.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
problems = []
def need(ok, what):
    if not ok: problems.append(what)
need(r["completed"] == 12, f"completed {r['completed']} != 12")
need(r["failed"] == 0, f"failed {r['failed']} != 0")
need(r["model"] == "demo", f"model {r['model']!r} (from /v1/models) != 'demo'")
need(r["total_output_tokens"] == 96, f"output tokens {r['total_output_tokens']} != 96")
need(r["total_input_tokens"] == 12 * 16, f"input tokens {r['total_input_tokens']} != 192")
need(r["requests_with_usage"] == 12, "usage missing from some responses")
need(r["prompts"].startswith("random token ids"), f"prompts: {r['prompts']}")
for q in r["requests"]:
    need(q["ok"] and q["output_tokens"] == 8 and q["prompt_tokens"] == 16, f"request {q}")
    need(0 < q["ttft_ms"] < q["e2e_ms"], f"TTFT !< E2E in {q}")
    need(q["output_chunks"] >= 1, f"no output chunk in {q}")
sent = [q["sent_s"] for q in r["requests"]]
need(sent == sorted(sent) and sent[-1] > 0, f"send times not a rising schedule: {sent}")
for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
    d = r[name]
    need(d["count"] > 0, f"{name} empty")
    need(0 <= d["p50"] <= d["p90"] <= d["p99"] <= d["max"], f"{name} percentiles unordered: {d}")
    need(d["mean"] <= d["max"], f"{name} mean above max: {d}")
need(r["ttft_ms"]["mean"] < r["e2e_ms"]["mean"], "mean TTFT !< mean E2E")
need(r["ttft_ms"]["max"] <= r["e2e_ms"]["max"], "max TTFT > max E2E")
need(r["ttft_ms"]["count"] == 12 and r["e2e_ms"]["count"] == 12, "latency counts != 12")
for name in ("request_throughput", "output_token_throughput", "total_token_throughput", "duration_s"):
    need(r[name] > 0, f"{name} = {r[name]}")
need(abs(r["request_throughput"] - 12 / r["duration_s"]) < 1e-6 * r["request_throughput"], "req/s != 12 / duration")
need(abs(r["output_token_throughput"] - 96 / r["duration_s"]) < 1e-6 * r["output_token_throughput"], "tok/s != 96 / duration")
need(r["goodput"] is None and r["slo"]["ttft_ms"] is None, "goodput without an SLO")
need(r["command"].startswith("dshpc bench serve --url") and "--request-rate 20" in r["command"], f"command: {r['command']}")
need(r["request_rate"] == 20 and r["seed"] == 1, "settings not recorded")
for p in problems: print("  ", p)
sys.exit(1 if problems else 0)
PY
check "completions run: counts, tokens, ordered percentiles, TTFT < E2E, throughput" $? "see above"
check "the table shows the figures and the command" $(grep -q "TTFT" "$work/bench.out" && grep -q "^reproduce: dshpc bench serve --url" "$work/bench.out" && grep -q "completed / failed *12 / 0" "$work/bench.out"; echo $?) "$(cat "$work/bench.out")"

# 2. Chat from a dataset (output_len per line), at most 2 in flight, with SLOs.
printf '%s\n' '{"prompt": "Tell me about rivers.", "output_len": 5}' \
  '{"messages": [{"role": "user", "content": "Hi"}], "output_len": 5}' '' \
  '{"prompt": "Count to three.", "output_len": 5}' > "$work/prompts.jsonl"
"$dshpc" bench serve --url "$url" --model demo --endpoint chat --dataset "$work/prompts.jsonl" \
  --num-requests 6 --request-rate inf --max-concurrency 2 --ignore-eos --slo-ttft-ms 60000 \
  --slo-itl-ms 60000 --slo-e2e-ms 0.001 --json "$work/chat.json" > "$work/chat.out" 2>&1
rc=$?
check "chat run exits 0" $([ $rc = 0 ]; echo $?) "exit $rc: $(cat "$work/chat.out")"
python3 - "$work/chat.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
problems = []
def need(ok, what):
    if not ok: problems.append(what)
need(r["endpoint"] == "chat" and r["completed"] == 6 and r["failed"] == 0, f"{r['completed']}/{r['failed']}")
need(r["total_output_tokens"] == 30, f"output tokens {r['total_output_tokens']} != 6 x 5")
need(all(q["prompt_tokens"] > 3 for q in r["requests"]), "chat prompt tokens not from usage")
# An E2E bound of 1 µs no request meets: goodput 0 with the SLO recorded.
need(r["good_requests"] == 0 and r["goodput"] == 0, f"goodput {r['goodput']} with an impossible SLO")
need(r["slo"] == {"ttft_ms": 60000, "itl_ms": 60000, "e2e_ms": 0.001}, f"slo {r['slo']}")
# At most 2 in flight: the third request is sent only after one of the first two ended.
ends = sorted(q["sent_s"] + q["e2e_ms"] / 1e3 for q in r["requests"])
third = sorted(q["sent_s"] for q in r["requests"])[2]
need(third >= ends[0] - 1e-3, f"third send at {third} before the first end {ends[0]}")
for p in problems: print("  ", p)
sys.exit(1 if problems else 0)
PY
check "chat run: dataset lengths, concurrency cap, goodput under an SLO" $? "see above"
"$dshpc" bench serve --url "$url" --endpoint chat --num-requests 2 --input-len 4 --output-len 3 \
  --ignore-eos --slo-ttft-ms 60000 --json "$work/good.json" > /dev/null 2>&1
check "goodput counts requests within a loose SLO" $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r['good_requests'] == 2 and r['goodput'] > 0 else 1)" "$work/good.json"; echo $?) "$(cat "$work/good.json" 2>/dev/null | head -c 400)"

# 3. A closed port: every request fails, the reason is named, the exit is non-zero.
closed=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
"$dshpc" bench serve --url "http://127.0.0.1:$closed" --model demo --num-requests 5 --request-rate 50 \
  --json "$work/closed.json" > "$work/closed.out" 2> "$work/closed.err"
rc=$?
check "a closed port exits non-zero" $([ $rc != 0 ] && [ $rc -lt 128 ]; echo $?) "exit $rc"
check "a closed port says all requests failed and why" $(grep -q "all 5 requests failed" "$work/closed.err" && grep -q "cannot connect to 127.0.0.1:$closed" "$work/closed.err"; echo $?) "$(cat "$work/closed.err")"
check "a closed port reports 0 completed, 5 failed" $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r['completed'] == 0 and r['failed'] == 5 and r['errors'][0]['count'] == 5 else 1)" "$work/closed.json"; echo $?) "$(head -c 400 "$work/closed.json")"

echo "$passed passed, $failed failed"
[ $failed = 0 ]

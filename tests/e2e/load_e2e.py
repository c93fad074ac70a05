#!/usr/bin/env python3
"""Load over loopback: 256 concurrent streaming requests against `mpirun -np 2 dshpc serve`
(demo model, tp 2), a fifth of whose clients disconnect mid-stream. Every other request
completes in full (its usage chunk counts every token asked for, then [DONE]), and afterwards
the engine's running and waiting counts and its KV cache usage return to zero.

    load_e2e.py DSHPC MPIRUN [FLAGS...]

The gauges are read from /metrics under the names below (adapt them here if the series are
renamed).
"""
import json
import random
import re
import sys
import threading
import time

import dshpc_e2e as e2e

CLIENTS = 256
LEAVING = CLIENTS // 5
MAX_TOKENS = 24
SETTLED_GAUGES = ("dshpc_num_requests_running", "dshpc_num_requests_waiting", "dshpc_kv_cache_usage_ratio")


def gauges(port):
    status, response = e2e.request(port, "GET", "/metrics")
    values = {}
    for name in SETTLED_GAUGES:  # summed over every label set (replicas, models)
        samples = re.findall(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), response.body.decode(), re.M)
        values[name] = sum(float(v) for v in samples) if samples else None
    return values


def main():
    dshpc, launcher = sys.argv[1], sys.argv[2:]
    checks = e2e.Checks()
    server = e2e.Server(dshpc, launcher, ranks=2, extra_args=["--max-batch-size", "256", "--io-threads", "4"])
    try:
        server.start()
        run(server.port, checks)
    finally:
        server.stop()
        if checks.failed:
            print(server.read_log()[-3000:])
    return checks.finish()


def run(port, checks):
    leaving = set(random.Random(5).sample(range(CLIENTS), LEAVING))
    results = [None] * CLIENTS
    start = threading.Barrier(CLIENTS, timeout=120)

    class Left(Exception):
        pass

    def client(i):
        chat = i % 2 == 1
        body = {"max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": 0}
        if chat:
            body["messages"] = [{"role": "user", "content": f"Question {i}?"}]
        else:
            body["prompt"] = f"Prompt number {i}:"
        target = "/v1/chat/completions" if chat else "/v1/completions"
        try:
            with e2e.connect(port, timeout=300) as sock:
                start.wait()
                sock.sendall(e2e.http_bytes("POST", target, json.dumps(body),
                                            {"Content-Type": "application/json"}))

                def on_chunk(piece):
                    if i in leaving and (b'"text":"' in piece or b'"content":"' in piece) \
                            and b'"content":""' not in piece:
                        raise Left()

                results[i] = e2e.Reader(sock).response(on_chunk)
        except Left:
            results[i] = "left"
        except Exception as error:  # noqa: BLE001 — checked below
            results[i] = error

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    elapsed = time.monotonic() - started
    print(f"{CLIENTS} streams in {elapsed:.1f} s", flush=True)

    complete, problems = 0, []
    for i, result in enumerate(results):
        if i in leaving:
            if result != "left":
                problems.append(f"client {i} (leaving) got {result!r}")
            continue
        if not isinstance(result, e2e.Response) or result.status != 200:
            problems.append(f"client {i}: {result!r}")
            continue
        payloads = e2e.sse_payloads(result.body)
        usage = None
        try:
            usage = json.loads(payloads[-2]).get("usage") if len(payloads) >= 2 else None
        except ValueError:
            pass
        if payloads[-1:] != ["[DONE]"] or not usage or usage.get("completion_tokens") != MAX_TOKENS \
                or any('"error"' in p for p in payloads):
            problems.append(f"client {i}: incomplete stream, last payloads {payloads[-2:]}")
            continue
        complete += 1
    checks.check(f"{CLIENTS - LEAVING} staying clients get every token and [DONE]",
                 complete == CLIENTS - LEAVING and not problems,
                 f"{complete} complete; " + "; ".join(problems[:5]))

    deadline = time.monotonic() + 20
    values = gauges(port)
    while any(v != 0 for v in values.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
        values = gauges(port)
    checks.check("running, waiting and KV cache usage return to zero", all(v == 0 for v in values.values()),
                 f"{values}")
    status, response = e2e.post_json(port, "/v1/completions", {"prompt": "x", "max_tokens": 2})
    checks.check("a request afterwards succeeds", status == 200, f"got {response!r}")


if __name__ == "__main__":
    e2e.main_wrapper(main)

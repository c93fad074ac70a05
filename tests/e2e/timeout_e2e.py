#!/usr/bin/env python3
"""Per-request deadlines against a real `mpirun -np 1 dshpc serve` (demo model) started with
--request-timeout 2 --max-request-timeout 30:

    timeout_e2e.py DSHPC MPIRUN [FLAGS...]

A request with "timeout": 1 and a max_tokens it cannot reach in a second ends with
finish_reason "timeout": a 200 with the partial text (non-streaming), or a final chunk with that
finish reason then `data: [DONE]` (streaming). A request without "timeout" gets the server's
default (2 s). "timeout" above the maximum, or not a number > 0, is a 400 naming the parameter.
The server keeps serving afterwards, counts each as dshpc_request_failure_total{reason="timeout"},
and nothing is left running.
"""
import json
import sys
import threading
import time

import dshpc_e2e as e2e

MAX_TOKENS = 3000  # far more than the demo model makes in a few seconds on a CPU
DEFAULT_TIMEOUT_S = 2


def main():
    dshpc, launcher = sys.argv[1], sys.argv[2:]
    checks = e2e.Checks()
    server = e2e.Server(dshpc, launcher, ranks=1,
                        extra_args=["--request-timeout", str(DEFAULT_TIMEOUT_S),
                                    "--max-request-timeout", "30"])
    try:
        server.start()
        run(server.port, checks)
    finally:
        server.stop()
        if checks.failed:
            print(server.read_log()[-4000:])
    return checks.finish()


def metric(text, name, labels):
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def run(port, checks):
    long_request = {"prompt": "Once upon a time", "max_tokens": MAX_TOKENS, "ignore_eos": True,
                    "temperature": 0}
    results = {}

    def whole():
        started = time.monotonic()
        status, response = e2e.post_json(port, "/v1/completions", dict(long_request, timeout=1),
                                         timeout=60)
        results["whole"] = (response, time.monotonic() - started)

    def streamed():
        body = {"messages": [{"role": "user", "content": "Tell me a story"}], "stream": True,
                "max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0, "timeout": 1}
        status, response = e2e.post_json(port, "/v1/chat/completions", body, timeout=60)
        results["stream"] = response

    def default():
        started = time.monotonic()
        status, response = e2e.post_json(port, "/v1/completions", long_request, timeout=60)
        results["default"] = (response, time.monotonic() - started)

    threads = [threading.Thread(target=f) for f in (whole, streamed, default)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)

    response, elapsed = results.get("whole", (None, 0))
    ok = isinstance(response, e2e.Response) and response.status == 200
    choice = response.json()["choices"][0] if ok else {}
    usage = response.json()["usage"] if ok else {}
    checks.check('"timeout": 1 ends with finish_reason "timeout" and a 200',
                 choice.get("finish_reason") == "timeout", f"got {response!r}")
    checks.check("the partial text is kept",
                 0 < usage.get("completion_tokens", 0) < MAX_TOKENS and len(choice.get("text", "")) > 0,
                 f"usage {usage}, text {choice.get('text', '')[:80]!r}")
    checks.check("the deadline is about 1 s after arrival", 0.9 <= elapsed < 10, f"{elapsed:.2f} s")

    response = results.get("stream")
    payloads = e2e.sse_payloads(response.body) if isinstance(response, e2e.Response) else []
    chunks = []
    for payload in payloads[:-1]:
        try:
            chunks.append(json.loads(payload))
        except ValueError:
            chunks.append(None)
    reasons = [c["choices"][0]["finish_reason"] for c in chunks
               if isinstance(c, dict) and c.get("choices") and c["choices"][0].get("finish_reason")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if isinstance(c, dict) and c.get("choices"))
    checks.check("a stream ends with a chunk whose finish_reason is timeout, then [DONE]",
                 payloads[-1:] == ["[DONE]"] and reasons == ["timeout"] and None not in chunks
                 and not any("error" in c for c in chunks if isinstance(c, dict)),
                 f"reasons {reasons}, last payloads {payloads[-2:]}")
    checks.check("the stream carried text before its deadline", len(text) > 0, repr(text[:80]))

    response, elapsed = results.get("default", (None, 0))
    ok = isinstance(response, e2e.Response) and response.status == 200
    checks.check("without a timeout field the server default (2 s) applies",
                 ok and response.json()["choices"][0]["finish_reason"] == "timeout"
                 and DEFAULT_TIMEOUT_S - 0.1 <= elapsed < DEFAULT_TIMEOUT_S + 10,
                 f"after {elapsed:.2f} s: {response!r}")

    for value, expect in ((60, "at most 30"), (0, "must be in"), (-1, "must be in"),
                          ("soon", "number")):
        status, response = e2e.post_json(port, "/v1/completions",
                                         {"prompt": "x", "max_tokens": 2, "timeout": value})
        error = e2e.error_shape(response)
        checks.check(f'"timeout": {value!r} is a 400 naming the parameter',
                     status == 400 and error is not None and error["param"] == "timeout"
                     and expect in error["message"], f"{status} {response!r}")

    status, response = e2e.post_json(port, "/v1/completions",
                                     {"prompt": "Hello", "max_tokens": 4, "ignore_eos": True})
    checks.check("the server keeps serving: a short request completes with length",
                 status == 200 and response.json()["choices"][0]["finish_reason"] == "length",
                 f"{status} {response!r}")

    # Counted once each as a failure with reason "timeout"; nothing left running.
    deadline = time.monotonic() + 20
    while True:
        status, response = e2e.request(port, "GET", "/metrics")
        text = response.body.decode()
        timeouts = metric(text, "dshpc_request_failure_total", {"reason": "timeout"})
        running = metric(text, "dshpc_num_requests_running", {})
        if (timeouts == 3 and running == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    checks.check('three requests counted as dshpc_request_failure_total{reason="timeout"}',
                 timeouts == 3, f"{timeouts}")
    checks.check("no request is left running", running == 0, f"{running}")


if __name__ == "__main__":
    e2e.main_wrapper(main)

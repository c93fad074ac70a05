#!/usr/bin/env python3
"""Hostile input against a real server: `mpirun -np 2 dshpc serve` (demo model, tp 2) on
loopback gets random bytes, oversized headers, huge and bogus Content-Lengths, invalid UTF-8,
wrong JSON types, NaN / negative / huge numbers, empty bodies, wrong content types, unknown
routes and methods, pipelined requests, slow clients (slowloris) and bodies over the limit.
Each gets the right 4xx in the OpenAI error shape, and the server keeps serving: a good request
succeeds after every group, and the job drains and exits 0 at the end.

    hostile_e2e.py DSHPC MPIRUN [MPIRUN FLAGS...]
"""
import json
import random
import signal
import socket
import sys
import threading
import time

import dshpc_e2e as e2e

READ_TIMEOUT_MS = 3000   # --read-timeout-ms: the slow-client (slowloris) bound under test
MAX_BODY = 65536         # --max-body-bytes
MAX_HEADER = 8192        # --max-header-bytes
JSON = {"Content-Type": "application/json"}


def raw(port, data, timeout=10, half_close=False):
    """Sends `data` on a fresh connection and reads one response (None if the server closes
    without one)."""
    with e2e.connect(port, timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking everything (413, 431)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        try:
            return e2e.Reader(sock).response()
        except (EOFError, ConnectionResetError):
            return None


def main():
    dshpc, launcher = sys.argv[1], sys.argv[2:]
    checks = e2e.Checks()
    server = e2e.Server(dshpc, launcher, ranks=2, extra_args=[
        "--max-body-bytes", str(MAX_BODY), "--max-header-bytes", str(MAX_HEADER),
        "--read-timeout-ms", str(READ_TIMEOUT_MS), "--max-batch-size", "8"])
    try:
        server.start()
        run(server.port, checks)
        # The job drains on SIGUSR1 (what launch/mpirun.sh sends) and exits 0: nothing above
        # left it in a bad state.
        server.process.send_signal(signal.SIGUSR1)
        code = server.wait(60)
        checks.check("the job drains and exits 0 afterwards", code == 0,
                     f"exit {code}; log tail: {server.read_log()[-2000:]}")
    finally:
        server.stop()
        if checks.failed:
            print(server.read_log()[-4000:])
    return checks.finish()


def run(port, checks):
    def expect_error(name, response, status, param=None):
        error = e2e.error_shape(response) if response is not None else None
        ok = response is not None and response.status == status and error is not None
        if ok and param is not None:
            ok = error.get("param") == param
        checks.check(f"{name}: {status}", ok, f"got {response!r}")

    def still_serving(after):
        status, response = e2e.post_json(port, "/v1/completions",
                                         {"prompt": "Hello", "max_tokens": 3, "ignore_eos": True})
        ok = status == 200 and response.json()["usage"]["completion_tokens"] == 3
        checks.check(f"a good request succeeds after {after}", ok, f"got {response!r}")

    # ---- bytes that are not HTTP
    rng = random.Random(9)
    for i in range(8):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
        # a leading letter could start a method name; make the line certainly malformed
        junk = b"\x01" + junk
        expect_error(f"random bytes #{i}", raw(port, junk), 400)
    expect_error("a request line without a version", raw(port, b"GET /health\r\n\r\n"), 400)
    expect_error("a NUL in a header", raw(port, b"GET /health HTTP/1.1\r\nHost: a\x00b\r\n\r\n"), 400)
    expect_error("two different Content-Lengths",
                 raw(port, b"POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n"
                           b"Content-Length: 3\r\n\r\n{}"), 400)
    still_serving("garbage")

    # ---- sizes
    expect_error("oversized headers",
                 raw(port, e2e.http_bytes("GET", "/health", headers={"X-Big": "a" * (MAX_HEADER + 100)})), 431)
    expect_error("an oversized URL", raw(port, e2e.http_bytes("GET", "/" + "x" * (MAX_HEADER * 2))), 431)
    many = {f"X-H{i}": "v" for i in range(2000)}
    expect_error("too many headers", raw(port, e2e.http_bytes("GET", "/health", headers=many)), 431)
    expect_error("a huge Content-Length",
                 raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n{}"), 413)
    expect_error("a Content-Length beyond 64 bits",
                 raw(port, b"POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"), 400)
    expect_error("a negative Content-Length",
                 raw(port, b"POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n"), 400)
    body = json.dumps({"prompt": "a" * (MAX_BODY + 10)})
    expect_error("a body over the limit", raw(port, e2e.http_bytes("POST", "/v1/completions", body, JSON)), 413)
    chunk = b"%x\r\n%s\r\n" % (MAX_BODY // 4, b"a" * (MAX_BODY // 4))
    chunked = b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 5 + b"0\r\n\r\n"
    expect_error("a chunked body over the limit", raw(port, chunked), 413)
    still_serving("oversized requests")

    # ---- bodies that are not valid requests
    def post(name, body, status=400, param=None, target="/v1/completions", headers=JSON):
        response = raw(port, e2e.http_bytes("POST", target, body, headers))
        expect_error(name, response, status, param)
        return response

    post("an empty body", b"")
    post("a body of whitespace", b" \r\n\t ")
    post("malformed JSON", b'{"prompt": ')
    post("a JSON array instead of an object", b'[{"prompt": "x"}]')
    post("trailing data after the JSON", b'{"prompt": "x"} {"prompt": "y"}')
    post("invalid UTF-8 in the prompt", b'{"prompt": "caf\xc3 \xff\xfe", "max_tokens": 2}')
    post("invalid UTF-8 in a chat message", b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
         target="/v1/chat/completions")
    post("JSON nested deeper than the parser allows", b'{"prompt": "x", "stop": ' + b"[" * 100 + b"]" * 100 + b"}")
    wrong_types = [
        ("prompt", 5), ("prompt", {"text": "x"}), ("max_tokens", "many"), ("max_tokens", 2.5),
        ("n", "2"), ("stream", "yes"), ("stop", 5), ("stop", [1, 2]), ("temperature", [0.5]),
        ("top_p", True), ("seed", "x"), ("logprobs", True), ("stream_options", "usage"),
        ("stop_token_ids", "1"), ("ignore_eos", 1), ("model", 7),
    ]
    for field, value in wrong_types:
        body = {"prompt": "x", "max_tokens": 2, field: value}
        post(f"wrong type: {field}={json.dumps(value)}", json.dumps(body), param=field)
    chat_wrong = [
        ("messages", "hi"), ("messages", []), ("messages", [5]), ("messages", [{"role": "user"}]),
        ("messages", [{"role": "wizard", "content": "x"}]), ("messages", [{"role": "user", "content": 5}]),
        ("messages", [{"role": "user", "content": [{"type": "image_url"}]}]), ("tools", "all"),
        ("top_logprobs", 3),
    ]
    for field, value in chat_wrong:
        body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, field: value}
        response = post(f"chat, wrong {field}={json.dumps(value)[:40]}", json.dumps(body),
                        target="/v1/chat/completions")
    numbers = [
        ("temperature", b"NaN"), ("temperature", b"Infinity"), ("temperature", b"-1"),
        ("temperature", b"1e308"), ("temperature", b"2.0000001"), ("top_p", b"0"), ("top_p", b"-0.5"),
        ("top_p", b"1.5"), ("max_tokens", b"-5"), ("max_tokens", b"0"), ("max_tokens", b"1e20"),
        ("max_tokens", b"9223372036854775808"), ("max_tokens", b"-9223372036854775809"),
        ("n", b"0"), ("n", b"-1"), ("n", b"1000"), ("n", b"1.5"), ("logprobs", b"-1"),
        ("logprobs", b"6"), ("logprobs", b"1000000000000"), ("presence_penalty", b"-3"),
        ("frequency_penalty", b"1e999"), ("repetition_penalty", b"0"), ("top_k", b"-2"),
        ("stop_token_ids", b"[-1]"), ("stop_token_ids", b"[99999999999]"), ("seed", b"1.5"),
    ]
    for field, value in numbers:
        body = b'{"prompt": "x", "max_tokens": 2, "%s": %s}' % (field.encode(), value)
        # NaN, Infinity and 1e999 are not JSON at all: the parser refuses them (no param).
        not_json = value in (b"NaN", b"Infinity", b"1e999")
        post(f"{field}={value.decode()}", body, param=None if not_json else field)
    post("a prompt longer than the context", json.dumps({"prompt": [1] * 5000, "max_tokens": 2}), param="prompt")
    post("max_tokens beyond the context", json.dumps({"prompt": "x", "max_tokens": 100000}), param="max_tokens")
    post("a token id outside the vocabulary", json.dumps({"prompt": [1, 2, 10**6]}), param="prompt")
    post("an unknown model", json.dumps({"model": "gpt-4", "prompt": "x"}), status=404, param="model")
    post("/detokenize with ids outside the vocabulary", json.dumps({"tokens": [-1]}), target="/detokenize")
    post("/tokenize with both prompt and messages",
         json.dumps({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}), target="/tokenize")
    response = post("a form body (wrong content type)", b"prompt=x&max_tokens=2",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    error = e2e.error_shape(response) if response else None
    checks.check("the wrong content type is named in the error",
                 error is not None and "application/x-www-form-urlencoded" in error["message"],
                 f"got {response!r}")
    # JSON sent as text/plain (or with no type, as some clients do) is still JSON: accepted.
    status, response = e2e.request(port, "POST", "/v1/completions",
                                   json.dumps({"prompt": "x", "max_tokens": 2}), {"Content-Type": "text/plain"})
    checks.check("a JSON body labelled text/plain is served", status == 200, f"got {response!r}")
    still_serving("invalid bodies")

    # Valid but unusual text: lone surrogates as escapes, NUL, and control characters are text.
    for name, prompt in [("an escaped lone surrogate", '"\\ud800x"'), ("an escaped NUL", '"a\\u0000b"'),
                         ("control characters", '"\\u0001\\u001b[31m"')]:
        body = ('{"prompt": %s, "max_tokens": 2}' % prompt).encode()
        response = raw(port, e2e.http_bytes("POST", "/v1/completions", body, JSON))
        ok = response is not None and response.status in (200, 400)
        if ok and response.status == 400:
            ok = e2e.error_shape(response) is not None
        elif ok:
            ok = response.json()["usage"]["completion_tokens"] == 2
        checks.check(f"{name} in a prompt: a completion or a 400", ok, f"got {response!r}")

    # ---- routes and methods
    expect_error("an unknown route", raw(port, e2e.http_bytes("GET", "/v2/everything")), 404)
    expect_error("an unknown model route", raw(port, e2e.http_bytes("GET", "/v1/models/other")), 404)
    for method, target in [("GET", "/v1/completions"), ("DELETE", "/v1/chat/completions"),
                           ("POST", "/health"), ("PUT", "/metrics"), ("GET", "/tokenize")]:
        response = raw(port, e2e.http_bytes(method, target))
        expect_error(f"{method} {target}", response, 405)
        checks.check(f"{method} {target} names the allowed method",
                     response is not None and response.headers.get("allow") in ("GET", "POST"),
                     f"got {response and response.headers}")
    expect_error("an unknown method", raw(port, b"BREW /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n"), 405)
    expect_error("a path that is not UTF-8 (quoted in a valid JSON error)",
                 raw(port, b"GET /v1/com\xffpletions\xc3 HTTP/1.1\r\nHost: x\r\n\r\n"), 404)
    expect_error("an absolute-form target to elsewhere",
                 raw(port, b"GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n"), 404)
    still_serving("unknown routes")

    # ---- pipelining: four requests in one write, answered in order on one connection
    pipelined = (e2e.http_bytes("GET", "/health")
                 + e2e.http_bytes("POST", "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 2}), JSON)
                 + e2e.http_bytes("POST", "/v1/completions", b"{bad", JSON)
                 + e2e.http_bytes("GET", "/v1/models"))
    with e2e.connect(port) as sock:
        sock.sendall(pipelined)
        reader = e2e.Reader(sock)
        statuses = [reader.response().status for _ in range(4)]
    checks.check("pipelined requests are answered in order", statuses == [200, 200, 400, 200], f"got {statuses}")

    # ---- slow clients (slowloris): the read timeout ends a request that does not arrive
    def slow(name, first, trickle, status):
        started = time.monotonic()
        with e2e.connect(port, timeout=READ_TIMEOUT_MS / 1000 + 10) as sock:
            sock.sendall(first)
            response = None
            try:
                reader = e2e.Reader(sock)
                # Keep sending a byte every 200 ms: progress must not extend the deadline.
                sock.settimeout(0.2)
                while time.monotonic() - started < READ_TIMEOUT_MS / 1000 + 8:
                    try:
                        response = reader.response()
                        break
                    except socket.timeout:
                        try:
                            sock.sendall(trickle)
                        except OSError:
                            pass
            except (EOFError, ConnectionResetError):
                response = None
        elapsed = time.monotonic() - started
        if status is None:
            checks.check(f"{name}: closed without a response", response is None, f"got {response!r}")
        else:
            expect_error(name, response, status)
        checks.check(f"{name}: ended within the read timeout + 2 s", elapsed < READ_TIMEOUT_MS / 1000 + 2,
                     f"took {elapsed:.1f} s")

    slow("headers that never end", b"GET /health HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n", 408)
    slow("a body that never ends",
         b"POST /v1/completions HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"prompt\": \"", b"a", 408)
    slow("an idle connection", b"", b"", None)
    # Many slow clients at once do not stop others from being served.
    holders = []
    for _ in range(50):
        sock = e2e.connect(port)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
        holders.append(sock)
    started = time.monotonic()
    still_serving("50 slow clients connected")
    checks.check("served promptly while 50 slow clients wait", time.monotonic() - started < READ_TIMEOUT_MS / 1000,
                 f"took {time.monotonic() - started:.1f} s")
    timed_out = 0
    for sock in holders:
        sock.settimeout(READ_TIMEOUT_MS / 1000 + 10)
        try:
            timed_out += e2e.Reader(sock).response().status == 408
        except (EOFError, OSError):
            pass
        sock.close()
    checks.check("every slow client got 408", timed_out == len(holders), f"{timed_out} of {len(holders)}")

    # ---- a client that sends a request and leaves before the answer
    for _ in range(5):
        with e2e.connect(port) as sock:
            sock.sendall(e2e.http_bytes("POST", "/v1/completions",
                                        json.dumps({"prompt": "x", "max_tokens": 50, "ignore_eos": True,
                                                    "stream": True}), JSON))
    still_serving("clients that left mid-request")

    # ---- the metrics endpoint still answers and counted what happened
    status, response = e2e.request(port, "GET", "/metrics")
    text = response.body.decode()
    checks.check("/metrics answers after all this", status == 200 and "dshpc_" in text, f"got {status}")
    status, response = e2e.request(port, "GET", "/health")
    checks.check("/health is still 200", status == 200, f"got {response!r}")


if __name__ == "__main__":
    e2e.main_wrapper(main)

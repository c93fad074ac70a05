#!/usr/bin/env python3
"""A rank of `mpirun -np 2 dshpc serve` (demo model, tp 2) fails while requests are open:

    rank_failure_e2e.py kill DSHPC MPIRUN [FLAGS...]   kill -9 of rank 1 during streaming
    rank_failure_e2e.py stop DSHPC MPIRUN [FLAGS...]   SIGSTOP of rank 1 (a hung rank)

Either way every client gets an error — a stream an SSE error event then `data: [DONE]`, a
non-streaming request a 503 in the OpenAI shape — and the job exits non-zero: within 30 s of the
kill, and for the stop within DSHPC_COLLECTIVE_TIMEOUT_S (set small here) plus a margin.
"""
import json
import os
import signal
import sys
import threading
import time

import dshpc_e2e as e2e

COLLECTIVE_TIMEOUT_S = 4
STREAMS = 3
WHOLE = 2


def main():
    mode, dshpc, launcher = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert mode in ("kill", "stop"), mode
    checks = e2e.Checks()
    server = e2e.Server(dshpc, launcher, ranks=2, extra_args=["--max-batch-size", "8"],
                        env={"DSHPC_COLLECTIVE_TIMEOUT_S": str(COLLECTIVE_TIMEOUT_S)})
    try:
        server.start()
        run(mode, server, checks)
    finally:
        server.stop()
        if checks.failed:
            print(server.read_log()[-4000:])
    return checks.finish()


def run(mode, server, checks):
    port = server.port
    results = {}
    first_token = threading.Barrier(STREAMS + 1, timeout=60)

    def stream(i):
        body = {"prompt": "Hello", "max_tokens": 3000, "ignore_eos": True, "stream": True}
        if i % 2:
            body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3000,
                    "ignore_eos": True, "stream": True}
        target = "/v1/chat/completions" if i % 2 else "/v1/completions"
        seen = [False]

        def on_chunk(piece):
            if not seen[0] and (b'"text"' in piece or b'"content":"' in piece):
                seen[0] = True
                first_token.wait()

        try:
            with e2e.connect(port, timeout=120) as sock:
                sock.sendall(e2e.http_bytes("POST", target, json.dumps(body),
                                            {"Content-Type": "application/json"}))
                results[f"stream{i}"] = e2e.Reader(sock).response(on_chunk)
        except Exception as error:  # noqa: BLE001 — the result is checked below
            results[f"stream{i}"] = error
            if not seen[0]:
                first_token.abort()

    def whole(i):
        try:
            status, response = e2e.post_json(port, "/v1/completions",
                                              {"prompt": "x", "max_tokens": 3000, "ignore_eos": True},
                                              timeout=120)
            results[f"whole{i}"] = response
        except Exception as error:  # noqa: BLE001
            results[f"whole{i}"] = error

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
    threads += [threading.Thread(target=whole, args=(i,)) for i in range(WHOLE)]
    for t in threads:
        t.start()
    first_token.wait()  # every stream has text: the job is in the middle of generating
    victim = server.rank_pid(1)
    failed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL if mode == "kill" else signal.SIGSTOP)
    print(f"sent {'SIGKILL' if mode == 'kill' else 'SIGSTOP'} to rank 1 (pid {victim})", flush=True)

    limit = 30 if mode == "kill" else COLLECTIVE_TIMEOUT_S + 10
    code = server.wait(limit + 5)
    elapsed = time.monotonic() - failed_at
    print(f"the job exited with {code} {elapsed:.1f} s after the signal", flush=True)
    checks.check(f"the job exits non-zero within {limit} s", code not in (None, 0) and elapsed <= limit,
                 f"exit {code} after {elapsed:.1f} s")
    if mode == "stop":
        checks.check("the log names the operation that timed out",
                     "MPI operation timed out" in server.read_log(), "no timeout message in the log")
    for t in threads:
        t.join(30)

    for i in range(STREAMS):
        response = results.get(f"stream{i}")
        ok = isinstance(response, e2e.Response) and response.status == 200
        payloads = e2e.sse_payloads(response.body) if ok else []
        error = None
        if len(payloads) >= 2 and payloads[-1] == "[DONE]":
            try:
                error = json.loads(payloads[-2]).get("error")
            except ValueError:
                error = None
        checks.check(f"stream {i} ends with an SSE error event, then [DONE]",
                     ok and isinstance(error, dict) and error.get("type") == "server_error"
                     and isinstance(error.get("message"), str),
                     f"got {response!r} … last payloads {payloads[-2:]}")
    for i in range(WHOLE):
        response = results.get(f"whole{i}")
        ok = isinstance(response, e2e.Response) and response.status == 503 \
            and e2e.error_shape(response) is not None
        checks.check(f"non-streaming request {i} gets a 503 in the OpenAI shape", ok, f"got {response!r}")


if __name__ == "__main__":
    e2e.main_wrapper(main)

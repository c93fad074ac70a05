#!/usr/bin/env python3
"""A rank of `mpirun -np 2 dshpc serve` (demo model, tp 2) fails while requests are open:

    rank_failure_e2e.py kill DSHPC MPIRUN [FLAGS...]   kill -9 of rank 1 during streaming
    rank_failure_e2e.py stop DSHPC MPIRUN [FLAGS...]   SIGSTOP of rank 1 (a hung rank)
    rank_failure_e2e.py term DSHPC MPIRUN [FLAGS...]   SIGTERM to rank 0 from someone other than
                                                       the launcher (the control case)
    rank_failure_e2e.py stop0 DSHPC MPIRUN [FLAGS...]  SIGSTOP of rank 0 (a hung coordinator)

kill and stop: every client gets an error — a stream an SSE error event then `data: [DONE]`, a
non-streaming request a 503 in the OpenAI shape — and the job exits non-zero: within 30 s of the
kill, and for the stop within DSHPC_COLLECTIVE_TIMEOUT_S (set small here) plus a margin.
term: only a SIGTERM from Open MPI's launcher means the job is being torn down; one from anyone
else (Slurm, an operator) drains: every request completes without an error and the job exits 0.
stop0: the other rank stops waiting for rank 0's next control message once the control timeout
(DSHPC_CONTROL_TIMEOUT_S, a few keepalive intervals; set small here) has passed since rank 0's last
keepalive, logs that rank 0 is unresponsive and aborts: the job exits non-zero within that bound
plus a margin.
"""
import json
import os
import signal
import sys
import threading
import time

import dshpc_e2e as e2e

COLLECTIVE_TIMEOUT_S = 4
KEEPALIVE_INTERVAL_S = 0.5
CONTROL_TIMEOUT_S = 3
STREAMS = 3
WHOLE = 2
MAX_TOKENS = 3000  # long enough that every request is still running when the rank fails


def main():
    mode, dshpc, launcher = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert mode in ("kill", "stop", "term", "stop0"), mode
    if mode == "term":
        global MAX_TOKENS
        MAX_TOKENS = 150  # each request must finish within the drain
    checks = e2e.Checks()
    server = e2e.Server(dshpc, launcher, ranks=2, extra_args=["--max-batch-size", "8"],
                        env={"DSHPC_COLLECTIVE_TIMEOUT_S": str(COLLECTIVE_TIMEOUT_S),
                             "DSHPC_KEEPALIVE_INTERVAL_S": str(KEEPALIVE_INTERVAL_S),
                             "DSHPC_CONTROL_TIMEOUT_S": str(CONTROL_TIMEOUT_S)})
    try:
        server.start()
        if mode == "stop0":
            stop_coordinator(server, checks)
        else:
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
        body = {"prompt": "Hello", "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": True, "temperature": 0}
        if i % 2:
            body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": MAX_TOKENS,
                    "ignore_eos": True, "stream": True, "temperature": 0}
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
                                              {"prompt": "x", "max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0},
                                              timeout=120)
            results[f"whole{i}"] = response
        except Exception as error:  # noqa: BLE001
            results[f"whole{i}"] = error

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
    threads += [threading.Thread(target=whole, args=(i,)) for i in range(WHOLE)]
    for t in threads:
        t.start()
    first_token.wait()  # every stream has text: the job is in the middle of generating
    if mode == "term":
        return drain(server, threads, results, checks)
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


def stop_coordinator(server, checks):
    # Rank 1 holds rank 0 to the short bound once it has had a keepalive; its figures reach
    # /metrics only after it handled one (rank 0 asks for them on its first keepalive).
    deadline = time.monotonic() + 30
    while 'rank="1"' not in e2e.request(server.port, "GET", "/metrics")[1].body.decode():
        if time.monotonic() > deadline:
            checks.check("rank 1 reports its figures (it has had a keepalive)", False,
                         "no rank=\"1\" series in /metrics")
            return
        time.sleep(0.1)
    victim = server.rank_pid(0)
    stopped_at = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    print(f"sent SIGSTOP to rank 0 (pid {victim})", flush=True)
    limit = CONTROL_TIMEOUT_S + 10
    code = server.wait(limit + 5)
    elapsed = time.monotonic() - stopped_at
    print(f"the job exited with {code} {elapsed:.1f} s after the signal", flush=True)
    checks.check(f"the job exits non-zero within {limit} s", code not in (None, 0) and elapsed <= limit,
                 f"exit {code} after {elapsed:.1f} s")
    checks.check("no sooner than the control timeout", elapsed >= CONTROL_TIMEOUT_S - 0.5,
                 f"{elapsed:.1f} s")
    checks.check("the log names rank 0 as unresponsive",
                 "rank 0 (the coordinator) is unresponsive" in server.read_log(),
                 "no such message in the log")


def drain(server, threads, results, checks):
    rank0 = server.rank_pid(0)
    os.kill(rank0, signal.SIGTERM)
    print(f"sent SIGTERM to rank 0 (pid {rank0}) from the test, not from the launcher", flush=True)
    for t in threads:
        t.join(120)
    code = server.wait(60)
    checks.check("the job drains and exits 0", code == 0, f"exit {code}")
    for name, response in sorted(results.items()):
        ok = isinstance(response, e2e.Response) and response.status == 200
        if ok and name.startswith("stream"):
            payloads = e2e.sse_payloads(response.body)
            ok = payloads[-1:] == ["[DONE]"] and not any('"error"' in p for p in payloads)
        elif ok:
            ok = response.json()["usage"]["completion_tokens"] == MAX_TOKENS
        checks.check(f"{name} completes without an error", ok, f"got {response!r}")


if __name__ == "__main__":
    e2e.main_wrapper(main)

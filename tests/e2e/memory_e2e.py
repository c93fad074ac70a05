#!/usr/bin/env python3
"""Memory (issue 9) against `mpirun -np 2 dshpc serve` (demo model, tp 2), three servers in turn:

1. no fault: GET /debug/memory lists both ranks with plausible figures — weights equal to what
   each rank's start-up report logged, KV blocks that add up and agree with the /metrics KV
   gauge (idle and while a stream holds blocks), a workspace once steps have run — and the
   greedy completions of a burst of concurrent requests are recorded;
2. DSHPC_FAULT_ALLOC_FAIL_TOKENS on rank 1: every step over that many tokens fails its workspace
   reservation there; the same burst completes with the same greedy text, the shrink shows in
   the logs (rank 0: engine.batch_shrink, rank 1: engine.workspace_failed), on /metrics and on
   /debug/memory, and the server keeps serving;
3. the fault at 0 tokens (nothing fits, not even one token): a request ends with a 400 that says
   why, and the server still answers.

    memory_e2e.py DSHPC MPIRUN [FLAGS...]
"""
import json
import re
import sys
import threading
import time

import dshpc_e2e as e2e

FAULT_TOKENS = 40
BURST = 12
MAX_TOKENS = 10


def debug_memory(port):
    status, response = e2e.request(port, "GET", "/debug/memory")
    if status != 200:
        raise RuntimeError(f"/debug/memory answered {response!r}")
    return response.json()


def reported(port, ranks=2, timeout=20):
    """/debug/memory once every rank has reported (they do within a keepalive interval)."""
    deadline = time.monotonic() + timeout
    while True:
        report = debug_memory(port)
        if report.get("ranks_reported") == ranks or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def settled(port, predicate, timeout=8):
    """/debug/memory once `predicate(report)` holds (rank reports are up to a keepalive interval,
    2 s, old when the server is idle), or the last one after `timeout`."""
    deadline = time.monotonic() + timeout
    report = debug_memory(port)
    while not predicate(report) and time.monotonic() < deadline:
        time.sleep(0.2)
        report = debug_memory(port)
    return report


def metric(port, name):
    """The sum of a family's samples on /metrics (None when absent)."""
    status, response = e2e.request(port, "GET", "/metrics")
    samples = re.findall(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), response.body.decode(), re.M)
    return sum(float(v) for v in samples) if samples else None


def log_events(server, action):
    """The JSON log lines of the server (both ranks) whose event.action is `action`."""
    events = []
    for line in server.read_log().splitlines():
        if f'"{action}"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event.action") == action:
            events.append(record)
    return events


def prompt(i):
    # 20 to 64 tokens or so, different for every request.
    return f"Request {i}: " + " ".join(f"word{(i * 7 + k) % 23}" for k in range(10 + 3 * i))


def burst(port):
    """BURST concurrent greedy completions, started together: their texts (or the failures)."""
    results = [None] * BURST
    start = threading.Barrier(BURST, timeout=60)

    def client(i):
        start.wait()
        try:
            status, response = e2e.post_json(port, "/v1/completions",
                                             {"prompt": prompt(i), "max_tokens": MAX_TOKENS,
                                              "temperature": 0, "ignore_eos": True}, timeout=180)
            results[i] = response.json()["choices"][0]["text"] if status == 200 else response
        except Exception as error:  # noqa: BLE001 — reported by the caller
            results[i] = error

    threads = [threading.Thread(target=client, args=(i,)) for i in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    return results


def check_report_shape(checks, server, report):
    ranks = report.get("ranks", [])
    checks.check("/debug/memory lists both ranks, both reported",
                 report.get("world_size") == 2 and len(ranks) == 2 and report.get("ranks_reported") == 2
                 and all(r.get("reported") for r in ranks), json.dumps(report)[:600])
    logged = {r.get("dshpc.rank"): r.get("dshpc.weight_bytes") for r in log_events(server, "job.rank_report")}
    block_size = report.get("kv_block_size")
    for r in ranks:
        name = f"rank {r.get('rank')}"
        kv, workspace, host = r.get("kv_cache", {}), r.get("workspace", {}), r.get("host_memory", {})
        checks.check(f"{name}: layout coordinates (dp 0, pp 0, tp {r.get('rank')}), host and backend",
                     (r.get("dp"), r.get("pp"), r.get("tp")) == (0, 0, r.get("rank"))
                     and r.get("host") and r.get("backend") == "cpu", json.dumps(r)[:400])
        checks.check(f"{name}: weights > 0 and as its start-up report logged them",
                     r.get("weights_bytes", 0) > 0 and logged.get(r.get("rank")) == r.get("weights_bytes"),
                     f"report {r.get('weights_bytes')}, log {logged}")
        checks.check(f"{name}: KV blocks add up, bytes = blocks × bytes per block",
                     kv.get("blocks_total", 0) > 0 and kv.get("blocks_used", -1) >= 0
                     and kv["blocks_used"] + kv.get("blocks_free", -1) == kv["blocks_total"]
                     and kv.get("blocks_allocated", 0) >= kv["blocks_total"]
                     and kv.get("bytes_per_block", 0) > 0
                     and kv.get("bytes") == kv["blocks_allocated"] * kv["bytes_per_block"]
                     and kv.get("bytes_used") == kv["blocks_used"] * kv["bytes_per_block"]
                     and block_size == 16, json.dumps(kv))
        checks.check(f"{name}: the CPU backend reports no device figures, and the process RSS",
                     all(v is None for v in r.get("device", {}).values())
                     and host.get("process_rss_bytes", 0) > 0
                     and 0 < host.get("available_bytes", 0) <= host.get("total_bytes", 0), json.dumps(r)[:600])
        checks.check(f"{name}: workspace figures present",
                     workspace.get("reserved_bytes", -1) >= 0
                     and workspace.get("high_water_bytes", -1) >= workspace["reserved_bytes"], json.dumps(workspace))


def kv_used_ratio(report):
    ranks = report["ranks"]
    return ranks[0]["kv_cache"]["blocks_used"] / ranks[0]["kv_cache"]["blocks_total"]


def check_kv_against_metrics(checks, port):
    idle = debug_memory(port)
    checks.check("idle: no KV block in use, on /debug/memory and on /metrics",
                 all(r["kv_cache"]["blocks_used"] == 0 for r in idle["ranks"])
                 and metric(port, "dshpc_kv_cache_usage_ratio") == 0, json.dumps(idle)[:400])
    # A stream holds blocks while it runs: both views see them.
    sock = e2e.connect(port, timeout=120)
    try:
        body = {"prompt": prompt(30), "max_tokens": 400, "temperature": 0, "ignore_eos": True, "stream": True}
        sock.sendall(e2e.http_bytes("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}))
        reader = e2e.Reader(sock)
        while b'"text"' not in reader.buffer:
            reader._fill()
        during = debug_memory(port)
        gauge = metric(port, "dshpc_kv_cache_usage_ratio")
        ratio = kv_used_ratio(during)
        checks.check("while a stream runs: /debug/memory's KV blocks in use match the /metrics gauge",
                     ratio > 0 and abs(ratio - gauge) <= 3 / during["ranks"][0]["kv_cache"]["blocks_total"]
                     and during["ranks"][0]["kv_cache"]["blocks_used"] == during["ranks"][1]["kv_cache"]["blocks_used"],
                     f"debug {ratio}, metrics {gauge}")
    finally:
        sock.close()  # the stream is cancelled and its blocks freed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and kv_used_ratio(debug_memory(port)) != 0:
        time.sleep(0.1)
    checks.check("after the stream: the blocks are free again", kv_used_ratio(debug_memory(port)) == 0)


def reference_run(dshpc, launcher, checks):
    server = e2e.Server(dshpc, launcher, ranks=2)
    try:
        server.start()
        check_report_shape(checks, server, reported(server.port))
        check_kv_against_metrics(checks, server.port)
        texts = burst(server.port)
        checks.check("without the fault: every request of the burst completes",
                     all(isinstance(t, str) for t in texts), f"{texts}")
        # The next reports carry the workspace the burst reserved.
        report = settled(server.port, lambda rep: all(r["workspace"]["reserved_bytes"] > 0 for r in rep["ranks"]))
        checks.check("after steps ran: every rank holds a workspace, none failed",
                     all(r["workspace"]["reserved_bytes"] > 0 and r["workspace"]["reservation_failures"] == 0
                         and r["workspace"]["high_water_bytes"] >= r["workspace"]["reserved_bytes"]
                         for r in report["ranks"]) and report["batch"]["memory_failures"] == 0
                     and report["batch"]["token_cap"] == report["batch"]["token_limit"], json.dumps(report)[:800])
        return texts
    finally:
        server.stop()
        if checks.failed:
            print(server.read_log()[-3000:])


def fault_run(dshpc, launcher, checks, reference):
    server = e2e.Server(dshpc, launcher, ranks=2,
                        env={"DSHPC_FAULT_ALLOC_FAIL_TOKENS": str(FAULT_TOKENS), "DSHPC_FAULT_ALLOC_FAIL_RANK": "1"})
    try:
        server.start()
        texts = burst(server.port)
        checks.check("with the fault on rank 1: every request completes with the same greedy text",
                     texts == reference, f"\n  got      {texts}\n  expected {reference}")
        shrinks = log_events(server, "engine.batch_shrink")
        failed = log_events(server, "engine.workspace_failed")
        checks.check("rank 0 logged the shrink, rank 1 the failed reservations, no other rank failed",
                     shrinks and all(e.get("mpi.rank") == 0 and e.get("dshpc.token_cap", 1e9) < e.get("dshpc.step_tokens", 0)
                                     for e in shrinks)
                     and failed and all(e.get("mpi.rank") == 1 and e.get("dshpc.step_tokens", 0) > FAULT_TOKENS
                                        for e in failed),
                     f"shrinks {shrinks[:2]}, failed {failed[:2]}")
        lowest = min((e.get("dshpc.token_cap", 1e9) for e in shrinks), default=None)
        checks.check("the cap went below the fault's size",
                     lowest is not None and lowest <= FAULT_TOKENS, f"lowest cap logged {lowest}")
        # Once it fits, the cap rises again after successes (and may fail again): below the limit.
        failures = metric(server.port, "dshpc_step_memory_failures_total")
        cap = metric(server.port, "dshpc_batch_token_cap")
        checks.check("/metrics: memory failures counted, the token cap lowered",
                     failures is not None and failures >= len(shrinks) >= 1 and cap is not None and cap < 2048,
                     f"failures {failures}, cap {cap}")
        report = settled(server.port, lambda rep: rep["ranks"][1]["workspace"]["reservation_failures"] > 0)
        by_rank = {r["rank"]: r for r in report["ranks"]}
        checks.check("/debug/memory: rank 1's failed reservations, none on rank 0, the batch cap",
                     by_rank[1]["workspace"]["reservation_failures"] >= 1
                     and by_rank[0]["workspace"]["reservation_failures"] == 0
                     and report["batch"]["memory_failures"] == failures
                     and report["batch"]["token_cap"] == cap, json.dumps(report)[:800])
        status, response = e2e.post_json(server.port, "/v1/completions",
                                         {"prompt": prompt(3), "max_tokens": 4, "temperature": 0})
        checks.check("the server keeps serving", status == 200 and e2e.request(server.port, "GET", "/health")[0] == 200,
                     f"{response!r}")
        checks.check("the job is still up", server.process.poll() is None)
    finally:
        server.stop()
        if checks.failed:
            print(server.read_log()[-3000:])


def never_fits_run(dshpc, launcher, checks):
    server = e2e.Server(dshpc, launcher, ranks=2,
                        env={"DSHPC_FAULT_ALLOC_FAIL_TOKENS": "0", "DSHPC_FAULT_ALLOC_FAIL_RANK": "1"})
    try:
        server.start()
        status, response = e2e.post_json(server.port, "/v1/completions",
                                         {"prompt": prompt(1), "max_tokens": 4, "temperature": 0})
        error = e2e.error_shape(response)
        checks.check("a request that does not fit even alone: 400 that says why",
                     status == 400 and error is not None and "does not fit in device memory" in error["message"],
                     f"{response!r}")
        checks.check("and the server still answers",
                     e2e.request(server.port, "GET", "/health")[0] == 200 and server.process.poll() is None)
    finally:
        server.stop()
        if checks.failed:
            print(server.read_log()[-3000:])


def main():
    dshpc, launcher = sys.argv[1], sys.argv[2:]
    checks = e2e.Checks()
    reference = reference_run(dshpc, launcher, checks)
    fault_run(dshpc, launcher, checks, reference)
    never_fits_run(dshpc, launcher, checks)
    return checks.finish()


if __name__ == "__main__":
    e2e.main_wrapper(main)

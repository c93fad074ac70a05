#!/usr/bin/env python3
"""`mpirun -np 2 dshpc batch` (demo model, tp 2) stopped with SIGTERM and requeued:

    batch_drain_e2e.py DSHPC MPIRUN [FLAGS...]

1. drain: SIGTERM to rank 0 (as launch/mpirun.sh and Slurm deliver a stop) once a few results
   are out. The job stops taking requests, finishes the ones in flight and exits 0; the output
   is valid JSON lines, partial, each request at most once and each finished in full.
2. resume: the same command again runs exactly the requests not in the output; afterwards every
   request is in it exactly once.
3. cut: with --drain-timeout-s 1 and requests far too long to finish, SIGTERM cuts them: exit 0,
   nothing written for them (a rerun would do them), and a partial last line left in the output
   by an earlier kill is cut off rather than appended to.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import dshpc_e2e as e2e

REQUESTS = 64
MAX_TOKENS = 24


def batch_command(dshpc, launcher, work, name, extra=()):
    return list(launcher) + ["-np", "2", dshpc, "batch", "--model", e2e.DEMO_MODEL,
                             "--random-weights", "--tp", "2", "--log-format", "text",
                             "--input", os.path.join(work, name + ".jsonl"),
                             "--output", os.path.join(work, name + ".out.jsonl"),
                             "--concurrency", "4"] + list(extra)


class Job:
    def __init__(self, command, log_path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def read_log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait(self, timeout):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self.log.close()


def poll(condition, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def read_lines(path):
    """(parsed lines, number of lines that are not JSON objects)."""
    if not os.path.exists(path):
        return [], 0
    parsed, bad = [], 0
    with open(path) as f:
        for line in f:
            try:
                value = json.loads(line)
                if isinstance(value, dict):
                    parsed.append(value)
                    continue
            except ValueError:
                pass
            bad += 1
    return parsed, bad


def write_input(path, count, max_tokens):
    with open(path, "w") as f:
        for i in range(count):
            if i % 2:
                url, body = "/v1/chat/completions", {
                    "messages": [{"role": "user", "content": f"Question {i}"}]}
            else:
                url, body = "/v1/completions", {"prompt": f"Prompt number {i}"}
            body.update({"model": "demo", "max_tokens": max_tokens, "ignore_eos": True,
                         "temperature": 0})
            f.write(json.dumps({"custom_id": f"r{i:03d}", "method": "POST", "url": url,
                                "body": body}) + "\n")


def complete(line):
    response = line.get("response") or {}
    body = response.get("body") or {}
    return response.get("status_code") == 200 and \
        (body.get("usage") or {}).get("completion_tokens") == MAX_TOKENS


def main():
    dshpc, launcher = sys.argv[1], sys.argv[2:]
    checks = e2e.Checks()
    work = tempfile.mkdtemp(prefix="dshpc-batch-drain-")
    jobs = []
    try:
        drain_and_resume(dshpc, launcher, work, checks, jobs)
        cut(dshpc, launcher, work, checks, jobs)
    finally:
        for job in jobs:
            job.kill()
        if checks.failed:
            for job in jobs:
                print(f"--- {job.log_path}\n" + job.read_log()[-3000:])
    return checks.finish()


def drain_and_resume(dshpc, launcher, work, checks, jobs):
    write_input(os.path.join(work, "many.jsonl"), REQUESTS, MAX_TOKENS)
    output = os.path.join(work, "many.out.jsonl")
    command = batch_command(dshpc, launcher, work, "many", ["--drain-timeout-s", "60"])
    first = Job(command, os.path.join(work, "first.log"))
    jobs.append(first)
    started = poll(lambda: len(read_lines(output)[0]) >= 3 or first.process.poll() is not None, 180)
    checks.check("the first run writes results as they finish", started and first.process.poll() is None,
                 f"exit {first.process.poll()}, {len(read_lines(output)[0])} lines")
    rank0 = e2e.rank_pid(first.process.pid, 0)
    os.kill(rank0, signal.SIGTERM)
    signalled = time.monotonic()
    print(f"sent SIGTERM to rank 0 (pid {rank0})", flush=True)
    code = first.wait(90)
    print(f"the first run exited with {code} {time.monotonic() - signalled:.1f} s after the signal",
          flush=True)
    checks.check("a drained batch exits 0", code == 0, f"exit {code}")
    log = first.read_log()
    checks.check("its log says it drained and how much is left",
                 "draining" in log and "rerun with the same --output to resume" in log,
                 log[-1500:])

    lines, bad = read_lines(output)
    ids = [line.get("custom_id") for line in lines]
    checks.check("the output is valid JSON lines", bad == 0, f"{bad} bad lines")
    checks.check("the output is partial", 3 <= len(lines) < REQUESTS, f"{len(lines)} lines")
    checks.check("no request is in it twice", len(ids) == len(set(ids)), f"{sorted(ids)}")
    checks.check("every result in it finished in full (in flight ones were finished, not cut)",
                 all(complete(line) for line in lines),
                 f"{[line for line in lines if not complete(line)][:2]}")
    checks.check("the log counts nothing cut", " 0 cut in flight" in log, log[-800:])
    done_first = len(lines)

    second = Job(command, os.path.join(work, "second.log"))
    jobs.append(second)
    code = second.wait(240)
    checks.check("the rerun exits 0", code == 0, f"exit {code}")
    log = second.read_log()
    checks.check("the rerun runs only what is missing",
                 f"{REQUESTS - done_first} requests to run, {done_first} already in" in log,
                 [l for l in log.splitlines() if "requests to run" in l])
    lines, bad = read_lines(output)
    ids = sorted(line.get("custom_id") for line in lines)
    checks.check("afterwards every request is in the output exactly once",
                 bad == 0 and ids == [f"r{i:03d}" for i in range(REQUESTS)],
                 f"{len(lines)} lines, {bad} bad, duplicates "
                 f"{sorted({i for i in ids if ids.count(i) > 1})}")
    checks.check("and every one finished in full", all(complete(line) for line in lines),
                 f"{[line for line in lines if not complete(line)][:2]}")


def cut(dshpc, launcher, work, checks, jobs):
    write_input(os.path.join(work, "long.jsonl"), 4, 3000)
    output = os.path.join(work, "long.out.jsonl")
    # What a job killed while writing leaves behind: a line without its newline.
    with open(output, "w") as f:
        f.write('{"id": "batch_req_1", "custom_id": "r000", "response": {"status_co')
    command = batch_command(dshpc, launcher, work, "long", ["--drain-timeout-s", "1"])
    job = Job(command, os.path.join(work, "cut.log"))
    jobs.append(job)
    running = poll(lambda: "requests to run" in job.read_log() or job.process.poll() is not None, 180)
    checks.check("the cut run starts", running and job.process.poll() is None,
                 job.read_log()[-1500:])
    time.sleep(1)  # the four requests are generating (3000 tokens each take far longer)
    os.kill(e2e.rank_pid(job.process.pid, 0), signal.SIGTERM)
    signalled = time.monotonic()
    code = job.wait(60)
    elapsed = time.monotonic() - signalled
    checks.check("past --drain-timeout-s the requests in flight are cut and the job exits 0",
                 code == 0 and elapsed < 30, f"exit {code} after {elapsed:.1f} s")
    log = job.read_log()
    checks.check("the partial line of an earlier kill was cut off", "partial line" in log,
                 log[-1500:])
    checks.check("the log counts the cut requests",
                 re.search(r"drained: 0 of 4 requests finished .*, [1-4] cut in flight", log)
                 is not None, log[-800:])
    with open(output) as f:
        text = f.read()
    checks.check("nothing is written for cut requests (a rerun does them)", text == "",
                 repr(text[:200]))


if __name__ == "__main__":
    e2e.main_wrapper(main)

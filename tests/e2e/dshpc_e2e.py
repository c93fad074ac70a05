"""Shared pieces of the Python end-to-end tests (stdlib only): start `dshpc serve` under mpirun
on loopback, wait until it is ready, talk raw HTTP to it, find a rank's process, and check
results. Imported by hostile_e2e.py, rank_failure_e2e.py and load_e2e.py."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_MODEL = os.path.join(ROOT, "configs", "models", "demo.json")


class Checks:
    """Counts named checks; a failed one prints its detail and the run ends non-zero."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
            print(f"ok: {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL: {name} — {detail}", flush=True)
        return condition

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 else 1


class Server:
    """`LAUNCHER -np RANKS DSHPC serve --model demo.json --random-weights --tp RANKS ...` with
    its log in a temporary file; `port` is known once start() returns."""

    def __init__(self, dshpc, launcher, ranks=2, extra_args=(), env=None):
        self.log_dir = tempfile.mkdtemp(prefix="dshpc-e2e-")
        self.log_path = os.path.join(self.log_dir, "serve.log")
        self.command = list(launcher) + ["-np", str(ranks), dshpc, "serve", "--model", DEMO_MODEL,
                                         "--random-weights", "--tp", str(ranks),
                                         "--host", "127.0.0.1", "--port", "0"] + list(extra_args)
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.process = None
        self.port = None

    def start(self, timeout=120):
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.port is None:
            match = re.search(r"listening on http://[^ ]*:(\d+)", self.read_log())
            if match:
                self.port = int(match.group(1))
            elif self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start:\n" + self.read_log())
            else:
                time.sleep(0.1)
        while True:
            try:
                if request(self.port, "GET", "/health", timeout=5)[0] == 200:
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready:\n" + self.read_log())
            time.sleep(0.2)

    def read_log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait(self, timeout):
        """Exit code of the launcher, or None if it is still running after `timeout` s."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def rank_pid(self, rank):
        """The pid of world rank `rank` of this job (see rank_pid below)."""
        return rank_pid(self.process.pid, rank)

    def stop(self):
        """Kills whatever is left of the job (its whole session)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        if getattr(self, "log", None):
            self.log.close()


# The variable that carries a rank's world rank, per launcher (parallel/launcher.h): Open MPI,
# MPICH's Hydra, Slurm's srun.
RANK_VARIABLES = (b"OMPI_COMM_WORLD_RANK", b"PMI_RANK", b"SLURM_PROCID")


def rank_pid(launcher_pid, rank):
    """The pid of world rank `rank`: a process of the launcher's session whose environment says
    so (the first of RANK_VARIABLES it has)."""
    session = os.getsid(launcher_pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != session:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            with open(f"/proc/{entry}/comm", "rb") as f:
                if f.read().strip() != b"dshpc":
                    continue
        except OSError:
            continue
        for name in RANK_VARIABLES:
            if name in environ:
                if environ[name] == str(rank).encode():
                    return int(entry)
                break
    raise RuntimeError(f"no process of rank {rank} found")


def connect(port, timeout=10):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def http_bytes(method, target, body=b"", headers=None, version="HTTP/1.1"):
    if isinstance(body, str):
        body = body.encode()
    lines = [f"{method} {target} {version}", "Host: 127.0.0.1"]
    headers = dict(headers or {})
    if body or method == "POST":
        headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body        # bytes, de-chunked

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"{self.status} {self.body[:300]!r}"


class Reader:
    """Reads HTTP/1.1 responses (Content-Length, chunked, or ended by close) from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buffer += data

    def _line(self):
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, n):
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def response(self, on_chunk=None):
        """One response; `on_chunk(bytes)` sees each piece of a chunked body as it arrives."""
        status_line = self._line()
        while status_line == b"":
            status_line = self._line()
        parts = status_line.split(b" ", 2)
        status = int(parts[1])
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            name, _, value = line.partition(b":")
            headers[name.decode().strip().lower()] = value.decode().strip()
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    self._line()
                    break
                piece = self._exactly(size)
                self._exactly(2)
                body += piece
                if on_chunk:
                    on_chunk(piece)
        elif "content-length" in headers:
            body = self._exactly(int(headers["content-length"]))
        elif status >= 200 and status not in (204, 304):
            try:
                while True:
                    self._fill()
            except (EOFError, ConnectionResetError):
                body, self.buffer = self.buffer, b""
        return Response(status, headers, body)


def request(port, method, target, body=b"", headers=None, timeout=30):
    """One request on a fresh connection: (status, Response)."""
    with connect(port, timeout) as sock:
        sock.sendall(http_bytes(method, target, body, headers))
        response = Reader(sock).response()
        return response.status, response


def post_json(port, target, value, timeout=60):
    return request(port, "POST", target, json.dumps(value),
                   {"Content-Type": "application/json"}, timeout)


def error_shape(response):
    """The OpenAI error object of `response`, or None when the body does not have that shape."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str) \
            or not isinstance(error.get("type"), str) or "param" not in error or "code" not in error:
        return None
    return error


def sse_payloads(body):
    """The data: payloads of an SSE body, in order."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return [line[6:] for line in body.split("\n") if line.startswith("data: ")]


def main_wrapper(main):
    try:
        sys.exit(main())
    except Exception as error:  # an unexpected exception is a failed test, with its trace
        import traceback
        traceback.print_exc()
        print(f"FAIL: unexpected {type(error).__name__}: {error}", flush=True)
        sys.exit(1)

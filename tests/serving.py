"""What the serve, gRPC and attack tests share: a real `edgekit serve` process on loopback,
a plain HTTP client, and the server's memory as the kernel reports it."""
from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time

API_KEY = "test-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    def __init__(self, port: int, key: str | None = None):
        self.port, self.key = port, key

    def request(self, method: str, path: str, body: bytes | str | None = None, content_type: str | None = None,
                headers: dict | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        all_headers = dict(headers or {})
        if content_type:
            all_headers["Content-Type"] = content_type
        if self.key:
            all_headers.setdefault("Authorization", f"Bearer {self.key}")
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        return response.status, response.getheader("Content-Type"), payload

    def json(self, method: str, path: str, document=None):
        body = None if document is None else json.dumps(document)
        status, _, payload = self.request(method, path, body, "application/json" if body else None)
        return status, json.loads(payload)

    def predict(self, path: str, document):
        return self.json("POST", path, document)


class Server:
    def __init__(self, args: list[str], key: str | None = None, prefix: tuple[str, ...] = ()):
        """`prefix`: what the command runs under (e.g. taskset -c 0)."""
        self.port, self.grpc_port = free_port(), free_port()
        # The log goes to a file: a pipe nobody reads fills up and blocks the server's writes.
        self.log = tempfile.NamedTemporaryFile("w+", prefix="edgekit-serve-", suffix=".log")
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "edgekit.cli", "serve", *args, "--port", str(self.port),
             "--grpc-port", str(self.grpc_port), "--poll-seconds", "0.2"],
            stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )
        self.client = Client(self.port, key)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if self.client.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("server did not become ready:\n" + self.stop())

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.seek(0)
        return self.log.read()


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (VmHWM), and the address space (VmSize), from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "VmSize"):
                fields[key] = round(int(line.split()[1]) / 1024, 1)
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"], "size_mb": fields["VmSize"]}


def reserved_memory(port: int) -> float:
    """Request memory the server holds now (the --max-memory-mb budget's gauge in /metrics)."""
    text = Client(port).request("GET", "/metrics")[2].decode()
    return float(next(line for line in text.splitlines() if line.startswith("edgekit_request_memory_bytes ")).split()[-1])


def wait_for(predicate, seconds: float = 30.0) -> bool:
    """Poll `predicate` every 50 ms until it is true (True) or `seconds` pass (False)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False

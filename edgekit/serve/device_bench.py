"""The opt-in bench endpoint of `edgekit serve --allow-bench`: measure an artifact on this
device for a workstation's `edgekit bench --device URL`.

Off unless the server was started with --allow-bench, which needs --api-key-file (every
bench request must carry the key). It takes a .tflite the client uploads (at most
--bench-max-mb, its sha256 checked against the one the client's manifest records) or a
version the server already serves, with the rows to run. The file is written to a private
temporary folder (mode 0700) under a fixed name, never a path the client chose, and the
folder is removed afterwards. The work runs in a separate, lower-priority process
(bench_worker.py), so a model that crashes takes down the worker, not the server, and the
served models keep the CPU first. One bench runs at a time; the reply says how many
predicts the server answered meanwhile (they share the CPU with the timed runs).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit.errors import BadInput, ServerBusy

MAX_RUNS = 2000
WORKER_TIMEOUT_SECONDS = 600
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DeviceBench:
    """`lock_path`: with --workers, a file every worker locks (flock) for its bench, so one
    bench runs at a time on the device, not one per worker."""

    def __init__(self, max_bytes: int, count_predicts: Callable[[], float], lock_path: Path | None = None):
        self.max_bytes, self.count_predicts, self.lock_path = max_bytes, count_predicts, lock_path
        self._lock = threading.Lock()

    def info(self) -> dict[str, object]:
        from edgekit.serve.bench_worker import device_info

        return {"device": device_info(), "max_upload_bytes": self.max_bytes}

    def run(self, model: bytes | Path, sha256: str | None, inputs: dict[str, np.ndarray], *, signature: str,
            threads: list[int], runs: int, warmup: int) -> dict[str, object]:
        """Measure `model` (uploaded bytes, checked against `sha256`, or a served file)."""
        if not 1 <= runs <= MAX_RUNS or not 0 <= warmup <= MAX_RUNS:
            raise BadInput(f"runs must be 1 to {MAX_RUNS} and warmup 0 to {MAX_RUNS}", "e.g. runs=50&warmup=5")
        if not threads or any(not 1 <= t <= 64 for t in threads):
            raise BadInput("threads must be whole numbers from 1 to 64", "e.g. threads=1,4")
        if isinstance(model, bytes):
            if sha256 is None or not SHA256.match(sha256):
                raise BadInput("an uploaded artifact needs its sha256 (64 hex digits), as the manifest records it",
                               "send ?sha256=<the manifest's sha256 of the artifact>")
            if hashlib.sha256(model).hexdigest() != sha256:
                raise BadInput("the uploaded artifact does not match its sha256: it was changed or cut short",
                               "upload the file the manifest describes")
        if not self._lock.acquire(blocking=False):
            raise ServerBusy("a bench is already running on this device", "retry when it has finished")
        try:
            held = self._lock_across_workers()
        except BaseException:
            self._lock.release()
            raise
        folder = Path(tempfile.mkdtemp(prefix="edgekit-bench-"))  # 0700, ours alone
        try:
            if isinstance(model, bytes):
                (folder / "model.tflite").write_bytes(model)
            else:
                shutil.copyfile(model, folder / "model.tflite")
            if inputs:
                np.savez(folder / "inputs.npz", **inputs)
            served_before = self.count_predicts()
            done = subprocess.run([sys.executable, "-m", "edgekit.serve.bench_worker", str(folder),
                                   "--signature", signature, "--threads", ",".join(map(str, threads)),
                                   "--runs", str(runs), "--warmup", str(warmup)],
                                  capture_output=True, text=True, timeout=WORKER_TIMEOUT_SECONDS)
            served = self.count_predicts() - served_before
            result = _last_json(done.stdout)
            if done.returncode != 0 or result is None or "error" in result:
                if result and "error" in result:
                    raise BadInput(f"the device cannot run it: {result['error']}", result.get("hint"))
                raise BadInput(f"the model stopped the bench worker (exit status {done.returncode}): "
                               f"{done.stderr.strip()[-300:] or 'no message'}; the server is unaffected",
                               "check that the artifact runs in this device's LiteRT version")
            with np.load(folder / "outputs.npz", allow_pickle=False) as archive:
                buffer = io.BytesIO()
                np.savez(buffer, **{name: archive[name] for name in archive.files})
            result["outputs_npz_b64"] = base64.b64encode(buffer.getvalue()).decode()
            result["served_meanwhile"] = int(served)
            result["note"] = ("timed at a lower priority than serving, with the server's own models loaded; "
                              f"{int(served)} predicts were answered meanwhile" if served else
                              "timed at a lower priority than serving; no predict was answered meanwhile")
            return result
        except subprocess.TimeoutExpired:
            raise BadInput(f"the bench took over {WORKER_TIMEOUT_SECONDS} s on this device",
                           "ask for fewer runs or rows") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            if held is not None:
                os.close(held)  # closing the file gives its lock back
            self._lock.release()

    def _lock_across_workers(self) -> int | None:
        """The file descriptor holding the device-wide lock (None: one process, no file)."""
        if self.lock_path is None:
            return None
        import fcntl

        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise ServerBusy("a bench is already running on this device (in another worker)",
                             "retry when it has finished") from None
        return descriptor


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None

"""Run a TF.js graph model in stock TensorFlow.js under Node.js (no TensorFlow here).

One Node process per loaded model (`tfjs_runner.cjs` beside this file) speaks length-
prefixed frames over its stdin and stdout. Timing happens inside Node, so the figures
are TF.js's own, not those of the pipe.

The npm packages (@tensorflow/tfjs-core, -converter, -backend-cpu, -backend-wasm) are
pinned in the project's package.json; `npm ci` in a checkout installs them beside the
source, and `edgekit setup-tfjs` installs the same versions for a pip-installed edgekit
(into ~/.local/share/edgekit/tfjs). Set EDGEKIT_NODE_MODULES to a node_modules folder
that holds them to use another install.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np

from edgekit.errors import BadInput, EdgekitError, MissingDependency

RUNNER = Path(__file__).with_name("tfjs_runner.cjs")
BACKENDS = ("cpu", "wasm")
PACKAGES = ("@tensorflow/tfjs-core", "@tensorflow/tfjs-converter", "@tensorflow/tfjs-backend-cpu",
            "@tensorflow/tfjs-backend-wasm")
TFJS_VERSION = "4.22.0"  # the version package.json pins (a test keeps them equal)
SETUP_HINT = ("install Node.js 18 or newer, then run `edgekit setup-tfjs` (or `npm ci` in a checkout of edgekit; "
              "or set EDGEKIT_NODE_MODULES)")


def default_install_dir() -> Path:
    """Where `edgekit setup-tfjs` puts the npm packages, and edgekit looks for them."""
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "edgekit" / "tfjs"


def setup(prefix: Path | None = None) -> Path:
    """Install the pinned TF.js npm packages under `prefix` (npm install --prefix); returns
    the node_modules folder."""
    prefix = Path(prefix or default_install_dir())
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise MissingDependency("setting up TF.js needs Node.js 18 or newer with npm", "install Node.js (with npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--save-exact",
               *(f"{package}@{TFJS_VERSION}" for package in PACKAGES)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise EdgekitError(f"npm could not install TF.js: {result.stderr.strip()[-500:]}",
                           "check that the npm registry is reachable, then run `edgekit setup-tfjs` again")
    return prefix / "node_modules"
_FROM_TFJS = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


def tfjs_dtype(dtype: str) -> str:
    """The TF.js dtype a tensor of numpy dtype `dtype` has: TF.js has float32, int32 and
    bool only, so a SavedModel's int64 tokens or uint8 pixels are int32 there."""
    kind = np.dtype(dtype).kind
    return "bool" if kind == "b" else "float32" if kind == "f" else "int32" if kind in "iu" else dtype


def node_modules() -> Path | None:
    """The node_modules folder with TF.js in it: EDGEKIT_NODE_MODULES, else the checkout's
    (`npm ci`), else the one `edgekit setup-tfjs` made, else the current folder's."""
    candidates = [os.environ.get("EDGEKIT_NODE_MODULES"), Path(__file__).resolve().parents[2] / "node_modules",
                  default_install_dir() / "node_modules", Path.cwd() / "node_modules"]
    for candidate in candidates:
        if candidate and all((Path(candidate) / package / "package.json").is_file() for package in PACKAGES):
            return Path(candidate)
    return None


def unavailable_reason() -> str | None:
    """Why TF.js cannot run here (None when it can)."""
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if node_modules() is None:
        return "the TF.js npm packages are not installed"
    return None


def require_tfjs() -> Path:
    reason = unavailable_reason()
    if reason:
        raise MissingDependency(f"running TF.js artifacts needs Node.js and TF.js: {reason}", SETUP_HINT)
    return node_modules()


def tfjs_version() -> str | None:
    modules = node_modules()
    if modules is None:
        return None
    return json.loads((modules / "@tensorflow/tfjs-core/package.json").read_text())["version"]


class TfjsModel:
    """A loaded TF.js graph model on one backend ("cpu" or "wasm"), in its own Node process."""

    def __init__(self, folder: str | Path, backend: str = "wasm"):
        if backend not in BACKENDS:
            raise BadInput(f"unknown TF.js backend {backend!r}", "use cpu or wasm")
        if not (Path(folder) / "model.json").is_file():
            raise BadInput(f"no model.json in {folder}", "pass a tfjs_<variant> folder that `edgekit convert` wrote")
        modules = require_tfjs()
        self.folder, self.backend = Path(folder), backend
        env = dict(os.environ, NODE_PATH=str(modules))
        self._process = subprocess.Popen(["node", str(RUNNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, cwd=str(modules.parent))
        self._stderr: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        self._lock = threading.Lock()
        try:
            info, _ = self._call({"cmd": "load", "dir": str(self.folder.resolve()), "backend": backend})
        except BaseException:
            self.close()
            raise
        self.inputs, self.outputs = info["inputs"], info["outputs"]
        self.threads, self.load_ms = info["threads"], info["load_ms"]
        self.runtime = f"tfjs {info['tfjs']} ({info['backend']}, node {info['node']})"

    def _read_stderr(self) -> None:
        for line in self._process.stderr:  # TF.js's notes; kept for error messages
            self._stderr.append(line.decode(errors="replace").rstrip())
            del self._stderr[:-50]

    def _call(self, header: dict, arrays: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
        tensors, payload = [], []
        for name, value in (arrays or {}).items():
            value = np.asarray(value)
            target = tfjs_dtype(value.dtype.name)
            stored = np.ascontiguousarray(value, dtype=np.dtype(_FROM_TFJS[target]).newbyteorder("<"))
            tensors.append({"name": name, "dtype": target, "shape": list(value.shape), "bytes": stored.nbytes})
            payload.append(stored.tobytes())
        header = dict(header, tensors=tensors, payload_bytes=sum(len(p) for p in payload))
        raw = json.dumps(header).encode()
        with self._lock:
            try:
                self._process.stdin.write(struct.pack("<I", len(raw)) + raw + b"".join(payload))
                self._process.stdin.flush()
                reply = self._read_frame()
            except (BrokenPipeError, EOFError) as exc:
                detail = "; ".join(self._stderr[-3:]) or str(exc)
                raise EdgekitError(f"the TF.js runner stopped: {detail}", SETUP_HINT) from None
        header, body = reply
        if not header.get("ok"):
            raise EdgekitError(f"TF.js ({self.backend}): {header.get('error')}")
        outputs, offset = {}, 0
        for tensor in header.get("tensors", []):
            dtype = np.dtype(_FROM_TFJS[tensor["dtype"]]).newbyteorder("<")
            chunk = body[offset : offset + tensor["bytes"]]
            offset += tensor["bytes"]
            outputs[tensor["name"]] = np.frombuffer(chunk, dtype).reshape(tensor["shape"]).astype(dtype.newbyteorder("="))
        return header, outputs

    def _read_frame(self) -> tuple[dict, bytes]:
        size = struct.unpack("<I", self._read_exactly(4))[0]
        header = json.loads(self._read_exactly(size))
        return header, self._read_exactly(header.get("payload_bytes", 0))

    def _read_exactly(self, count: int) -> bytes:
        chunks, left = [], count
        while left:
            chunk = self._process.stdout.read(left)
            if not chunk:
                raise EOFError("the Node process exited")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def run(self, inputs: dict[str, np.ndarray], signature: str | None = None) -> dict[str, np.ndarray]:
        """Real values in by signature key, the signature's outputs out (a TF.js artifact
        holds one signature; `signature` is there for the other runtimes' call shape)."""
        return self._call({"cmd": "run"}, inputs)[1]

    def time(self, inputs: dict[str, np.ndarray], warmup: int, runs: int) -> tuple[float, list[float]]:
        """The first call's ms and `runs` timed calls' ms after `warmup`, measured in Node."""
        header, _ = self._call({"cmd": "time", "warmup": warmup, "runs": runs}, inputs)
        return header["cold_ms"], header["samples_ms"]

    def throughput(self, inputs: dict[str, np.ndarray], min_seconds: float, min_calls: int) -> tuple[int, float]:
        header, _ = self._call({"cmd": "throughput", "min_seconds": min_seconds, "min_calls": min_calls}, inputs)
        return header["calls"], header["seconds"]

    def memory(self) -> dict[str, float]:
        """Peak RSS of the Node process (VmHWM), and its RSS before any model was loaded."""
        header, _ = self._call({"cmd": "memory"})
        return {"peak_rss_mb": round(header["peak_rss_mb"], 1), "baseline_rss_mb": round(header["baseline_rss_mb"], 1)}

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._process.stdin.close()
                self._process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> TfjsModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.kill()

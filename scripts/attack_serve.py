"""`edgekit serve` under the hostile and careless traffic of issue #13, measured: for each
attack, what the server answered and its peak resident memory.

    python scripts/attack_serve.py [--json results/serve_attacks.json] [--mobilenet]
    python scripts/attack_serve.py --external PORT GRPC_PORT [--pid PID] [--models DIR]

Each attack runs against a fresh `edgekit serve` with its default limits (digits CNN int8
and a float32 half_plus_two, from --models or built here with TensorFlow), so the peak
RSS (VmHWM from /proc) is that attack's. --external sends the same attacks to a server
already running (the emulated Pi: its memory is qemu's, so only the answers count there).
--mobilenet adds the idle RSS of a server with MobileNetV2-int8 loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from attacks import (  # noqa: E402
    Holders,
    attack_models,
    error_of,
    long_number_json,
    nested_json,
    npy_bytes,
    npy_header_only,
    npz_bomb,
    npz_of,
    post,
    raw_exchange,
    served_ok,
    status_of,
)
from serving import free_port, memory_mb  # noqa: E402

DIGITS = ROOT / "sample_models" / "digits_cnn"
PREDICT, HALF = "/v1/models/digits:predict", "/v1/models/half:predict"


def build_models(root: Path) -> Path:
    """digits (int8 OUT_DIR) and half_plus_two (float32), and a model config naming both."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return attack_models(root)


class Target:
    """A server to attack: started here (fresh per attack) or already running."""

    def __init__(self, config: Path, external: tuple[int, int, int | None] | None = None, extra=()):
        self.config, self.process = config, None
        if external:
            self.port, self.grpc_port, self.pid = external
            return
        self.port, self.grpc_port = free_port(), free_port()
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgekit.cli", "serve", "--model-config", str(config), "--port", str(self.port),
             "--grpc-port", str(self.grpc_port), "--poll-seconds", "0.5", "--log-level", "warning", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if raw_exchange(self.port, b"GET /readyz HTTP/1.1\r\n\r\n", timeout=2,
                                wait_for_close=False).startswith(b"HTTP/1.1 200"):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("the server did not become ready in 60 s")

    def memory(self) -> dict | None:
        try:
            return memory_mb(self.pid) if self.pid else None
        except OSError:
            return None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=40)


def grpc_stub(target: Target):
    import grpc

    from edgekit.serve.protos import serving_pb2_grpc

    return serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{target.grpc_port}"))


def grpc_call(target: Target, model: str, name: str, tensor) -> str:
    import grpc

    from edgekit.serve.protos import serving_pb2

    request = serving_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[name].CopyFrom(tensor)
    try:
        grpc_stub(target).Predict(request, timeout=60)
        return f"OK ({request.ByteSize()}-byte request)"
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()[:160]}"


def tensor(dtype: int, dims: list[int], **values):
    from edgekit.serve.protos import tensorflow_pb2

    proto = tensorflow_pb2.TensorProto(dtype=dtype, **values)
    proto.tensor_shape.dim.extend(tensorflow_pb2.TensorShapeProto.Dim(size=d) for d in dims)
    return proto


def answer(reply: bytes) -> str:
    status = status_of(reply)
    return "no reply" if status is None else f"{status} {error_of(reply)[:160]}".strip()


def legit_latencies(target: Target, seconds: float) -> dict:
    """A well-behaved client's predicts while an attack runs."""
    body = json.dumps({"instances": [[[[0.5]] * 8] * 8]}).encode()
    statuses, times = [], []
    deadline = time.time() + seconds
    while time.time() < deadline:
        status, elapsed = served_ok(target.port, PREDICT, body, timeout=15)
        statuses.append(status)
        times.append(elapsed * 1000)
    return {"requests": len(statuses), "ok": statuses.count(200), "max_ms": round(max(times), 1),
            "p50_ms": round(float(np.median(times)), 1)}


# --- the attacks of the table, each returning what the server answered -----------------

def npz_bomb_attack(target):
    body = npz_bomb("pixels", (8, 8, 1), 1 << 30)
    return {"sent": f"{len(body)}-byte .npz holding 1 GiB of zeros",
            "answer": answer(raw_exchange(target.port, post(PREDICT, body, "application/x-npz"), timeout=120))}


def grpc_broadcast_attack(target):
    from edgekit.serve.protos import tensorflow_pb2

    return {"sent": "50-byte PredictRequests: [1000000, 8, 8, 1] and [100000000] from one float_val",
            "answer": [grpc_call(target, "digits", "pixels", tensor(tensorflow_pb2.DT_FLOAT, [1000000, 8, 8, 1],
                                                                    float_val=[0.5])),
                       grpc_call(target, "half", "x", tensor(tensorflow_pb2.DT_FLOAT, [100000000], float_val=[0.5]))]}


def large_batch_attack(target):
    rows = np.random.default_rng(0).random((60000, 8, 8, 1)).astype(np.float32)  # 15.4 MB: under the 16 MB body limit
    body = npy_bytes(rows)
    before = target.memory()
    replies = [answer(raw_exchange(target.port, post(PREDICT, body, "application/x-npy"), timeout=120))[:3]
               for _ in range(3)]
    time.sleep(0.5)
    return {"sent": f"a legal {len(body) / 1e6:.1f} MB .npy batch ({len(rows):,} rows), three times", "answer": replies,
            "rss_before_mb": before and before["rss_mb"], "rss_after_mb": (target.memory() or {}).get("rss_mb")}


def slow_body_attack(target):
    holders = Holders()
    try:
        head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".encode()
        for _ in range(8):
            holders.open(target.port, head + b'{"instances": [')
        others = legit_latencies(target, 3.0)
        return {"sent": "8 connections: headers and part of a body, then silence",
                "answer": f"the silent ones: {sorted(set(holders.replies(timeout=15)))}", "others_meanwhile": others}
    finally:
        holders.close()


def endless_header_attack(target):
    holders = Holders()
    try:
        for _ in range(10):
            holders.flood(holders.open(target.port, b"GET /healthz HTTP/1.1\r\nX-Endless: "), b"a" * 65536)
        others = legit_latencies(target, 2.0)
        return {"sent": "10 connections sending one never-ending header line",
                "answer": f"{sorted(set(holders.replies()))}", "others_meanwhile": others}
    finally:
        holders.close()


def idle_connections_attack(target):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    holders = Holders()
    try:
        for _ in range(1100):
            holders.open(target.port)
        others = legit_latencies(target, 2.0)
        return {"sent": "1,100 idle connections", "answer": "new clients served (longest-idle connections closed)"
                if others["ok"] == others["requests"] else "new clients refused", "others_meanwhile": others}
    finally:
        holders.close()


def broken_manifest_attack(target, models: Path):
    base = models / "half"
    (base / "7").mkdir()
    (base / "7" / "manifest.json").write_text("[]")
    try:
        time.sleep(1.5)
        status = json.loads(raw_exchange(target.port, b"GET /v1/models/half HTTP/1.1\r\n\r\n", timeout=5,
                                         wait_for_close=False).partition(b"\r\n\r\n")[2])["model_version_status"]
        shutil.copytree(base / "1", base / "8")
        time.sleep(1.5)
        after = json.loads(raw_exchange(target.port, b"GET /v1/models/half HTTP/1.1\r\n\r\n", timeout=5,
                                        wait_for_close=False).partition(b"\r\n\r\n")[2])["model_version_status"]
        shutil.rmtree(base / "8")
        time.sleep(1.5)
        removed = json.loads(raw_exchange(target.port, b"GET /v1/models/half/versions/8 HTTP/1.1\r\n\r\n",
                                          timeout=5, wait_for_close=False).partition(b"\r\n\r\n")[2])
        return {"sent": "a version folder whose manifest.json is []",
                "answer": {"broken": status[0], "a later version": after[0]["state"] + " v" + after[0]["version"],
                           "that version deleted": removed["model_version_status"][0]["state"]}}
    finally:
        shutil.rmtree(base / "7", ignore_errors=True)
        shutil.rmtree(base / "8", ignore_errors=True)


def malformed_rest_attack(target):
    cases = {
        "JSON nested 100k deep": post(PREDICT, nested_json(100_000)),
        "a 5000-digit number": post(PREDICT, long_number_json(5000)),
        "a 5000-digit version in the URL": b"GET /v1/models/digits/versions/" + b"9" * 5000 + b" HTTP/1.1\r\n\r\n",
        "an .npy declaring 10^12 rows": post(PREDICT, npy_header_only((10**12, 8, 8, 1), data=b"\0" * 256),
                                             "application/x-npy"),
        "an .npz member that is not .npy": post(PREDICT, npz_of(**{"pixels.txt": b"hi"}), "application/x-npz"),
        "an .npy body sent as x-npz": post(PREDICT, npy_bytes(np.zeros((1, 8, 8, 1), np.float32)), "application/x-npz"),
        "a 0-row batch after another size": post(PREDICT, npy_bytes(np.zeros((0, 8, 8, 1), np.float32)),
                                                 "application/x-npy"),
        "Content-Length: abc": b"POST /v1/models/digits:predict HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "a garbage request line": b"GARBAGE\r\n\r\n",
        "method BREW": b"BREW /v1/models/digits HTTP/1.1\r\n\r\n",
    }
    raw_exchange(target.port, post(PREDICT, npy_bytes(np.zeros((3, 8, 8, 1), np.float32)), "application/x-npy"))
    return {"sent": "malformed bodies, URLs and HTTP",
            "answer": {name: answer(raw_exchange(target.port, data, timeout=30)) for name, data in cases.items()}}


def malformed_grpc_attack(target):
    from edgekit.serve.protos import tensorflow_pb2 as tp

    cases = {
        "dtype enum 999": ("half", "x", tensor(999, [1], float_val=[1])),
        "tensor_content of 255 bytes for one float": ("half", "x", tensor(tp.DT_FLOAT, [1], tensor_content=b"\0" * 255)),
        "dims [2^40, 2^40]": ("half", "x", tensor(tp.DT_FLOAT, [2**40, 2**40], float_val=[1])),
        "a 10^12-element broadcast": ("half", "x", tensor(tp.DT_FLOAT, [10**12], float_val=[0.5])),
        "a 0-row batch": ("digits", "pixels", tensor(tp.DT_FLOAT, [0, 8, 8, 1])),
    }
    answers = {name: grpc_call(target, *case) for name, case in cases.items()}
    metrics = raw_exchange(target.port, b"GET /metrics HTTP/1.1\r\n\r\n", timeout=5, wait_for_close=False).decode()
    counted = [line for line in metrics.splitlines() if line.startswith("edgekit_request_errors_total{")]
    return {"sent": "malformed gRPC tensors", "answer": answers, "metrics": counted}


def port_attack(target, config: Path):
    results = {}
    for label, args in (("a second server on the taken gRPC port",
                         ["--port", str(free_port()), "--grpc-port", str(target.grpc_port)]),
                        ("a second server on the taken REST port",
                         ["--port", str(target.port), "--grpc-port", str(free_port())])):
        run = subprocess.run([sys.executable, "-m", "edgekit.cli", "serve", "--model-config", str(config), *args],
                             capture_output=True, text=True, timeout=60)
        results[label] = f"exit {run.returncode}: " + " | ".join(run.stderr.strip().splitlines()[-2:])
    return {"sent": "second servers on taken ports", "answer": results}


def concurrent_budget_attack(target):
    body = json.dumps({"instances": np.random.default_rng(0).random((4000, 8, 8, 1)).round(4).tolist()}).encode()
    statuses = []

    def client():
        statuses.append(served_ok(target.port, PREDICT, body, timeout=120)[0])

    threads = [threading.Thread(target=client) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"sent": f"32 clients at once, each a {len(body) / 1e6:.1f} MB JSON body",
            "answer": {str(s): statuses.count(s) for s in sorted(set(statuses), key=str)}}


def json_memory_attack(target):
    """What large JSON bodies really take, against what the memory budget reserves for them: one
    fresh server per body, with room enough (--max-memory-mb 4096, --max-body-mb 32) to let each
    through. Numbers-only bodies take the fast path (reserved at its own cost); one written with
    'E+' exponents is declined by it, and takes the general path's 32x of the body then."""
    rows = np.random.default_rng(0).random((10_000, 8, 8, 1))
    bodies = {f"{label} to half_plus_two": (HALF, b'{"instances": [' + b",".join(
        [token] * (14_000_000 // (len(token) + 1))) + b"]}")
        for label, token in (("[N] of 300 (int objects)", b"300"), ("[N] of 1e0 (float objects)", b"1e0"),
                             ("[N] of 0 (cached ints)", b"0"),
                             ("[N] of 0.5488135218620300 (long floats)", b"0.5488135218620300"))}
    bodies["[N,8,8,1] full floats to digits"] = (PREDICT, json.dumps({"instances": rows.tolist()}).encode())
    bodies["[N,8,8,1] 'E+' floats to digits (general path)"] = (PREDICT, json.dumps(
        {"instances": (rows * 1e20).tolist()}).replace("e+", "E+").encode())
    measured = {}
    for label, (path, body) in bodies.items():
        fresh = Target(target.config, extra=("--max-memory-mb", "4096", "--max-body-mb", "32"))
        try:
            idle = fresh.memory()["peak_rss_mb"]
            status = status_of(raw_exchange(fresh.port, post(path, body), timeout=120))
            peak = fresh.memory()["peak_rss_mb"]
            metrics = raw_exchange(fresh.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reserved = next(float(line.split()[1]) for line in metrics.decode().splitlines()
                            if line.startswith("edgekit_request_memory_peak_bytes "))
            measured[label] = {"body_mb": round(len(body) / 1e6, 1), "status": status,
                               "peak_over_body": round((peak - idle) * (1 << 20) / len(body), 1),
                               "reserved_over_body": round(reserved / len(body), 1)}
        finally:
            fresh.stop()
    return {"sent": "13-26 MB JSON bodies of one tensor, one kind of number each",
            "answer": measured}


ATTACKS = {
    "npz_bomb": npz_bomb_attack, "grpc_broadcast": grpc_broadcast_attack, "large_batch": large_batch_attack,
    "slow_bodies": slow_body_attack, "endless_headers": endless_header_attack,
    "idle_connections": idle_connections_attack, "broken_manifest": broken_manifest_attack,
    "malformed_rest": malformed_rest_attack, "malformed_grpc": malformed_grpc_attack, "ports": port_attack,
    "concurrent_json": concurrent_budget_attack, "json_memory": json_memory_attack,
}


def mobilenet_idle(work: Path) -> dict:
    from mobilenet import export_mobilenet_v2, smooth_images

    from edgekit import convert

    images = smooth_images(101)
    saved_model = export_mobilenet_v2(work / "mobilenet_sm", images[:32])
    np.save(work / "calibration.npy", images[:100])
    convert(saved_model, work / "mobilenet_out", variants=("int8",), tfjs=(), calibration=work / "calibration.npy",
            calibration_samples=100)
    (work / "mobilenet_v2" / "1").mkdir(parents=True)
    shutil.copy(work / "mobilenet_out" / "model_int8.tflite", work / "mobilenet_v2" / "1" / "model.tflite")
    config = work / "mobilenet.json"
    config.write_text(json.dumps({"model_config_list": [{"name": "mobilenet_v2", "base_path": "mobilenet_v2"}]}))
    target = Target(config)
    try:
        ready = target.memory()
        image = npy_bytes(images[100:101])
        replies = [status_of(raw_exchange(target.port, post("/v1/models/mobilenet_v2:predict", image,
                                                            "application/x-npy"), timeout=60)) for _ in range(20)]
        return {"idle_when_ready": ready, "after_20_predicts": target.memory(), "statuses": sorted(set(replies))}
    finally:
        target.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "serve_attacks.json")
    parser.add_argument("--models", type=Path, help="a folder built by this script before (models.json inside)")
    parser.add_argument("--external", nargs=2, type=int, metavar=("PORT", "GRPC_PORT"))
    parser.add_argument("--pid", type=int)
    parser.add_argument("--only", help="comma-separated attack names")
    parser.add_argument("--mobilenet", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgekit-attacks-"))
    models = args.models or build_models(work / "models")
    config = models / "models.json"
    results = {"machine": {"cpus": os.cpu_count(), "uname": os.uname().machine},
               "server": "external" if args.external else "fresh edgekit serve per attack, default limits",
               "attacks": {}}
    names = args.only.split(",") if args.only else list(ATTACKS)
    for name in names:
        target = Target(config, (*args.external, args.pid) if args.external else None)
        try:
            idle = target.memory()
            attack = ATTACKS[name]
            if name == "broken_manifest":
                entry = attack(target, models)
            elif name == "ports":
                entry = attack(target, config)
            else:
                entry = attack(target)
            entry["server_alive_after"] = served_ok(target.port, PREDICT,
                                                    json.dumps({"instances": [[[[0.5]] * 8] * 8]}).encode())[0] == 200
            memory = target.memory()
            if memory:
                entry["rss_idle_mb"], entry["peak_rss_mb"] = idle and idle["rss_mb"], memory["peak_rss_mb"]
        finally:
            target.stop()
        results["attacks"][name] = entry
        print(f"{name}: {json.dumps(entry)[:600]}", flush=True)
    if args.mobilenet:
        results["mobilenet_v2_int8"] = mobilenet_idle(work)
        print(f"mobilenet_v2_int8: {results['mobilenet_v2_int8']}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

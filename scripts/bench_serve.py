"""`edgekit serve` under load, beside a bare in-process interpreter loop.

    python scripts/bench_serve.py [--seconds 4] [--clients 1,4,16] [--json results/serve.json]

For the sample digits CNN and MobileNetV2(weights=None) (both int8, as serve picks by
default): starts `edgekit serve` (2 interpreters x 1 thread, request logs off), records
the time from start to ready and the server's resident memory (and, from a second start
with --grpc-port 0, its memory with REST alone), then drives it from a second process
(`--client` mode of this script: N threads, one keep-alive HTTP/1.1 connection or gRPC
channel each) with JSON bodies, binary (.npy) bodies and gRPC PredictRequests, batch 1. The bare loop is the
best of one interpreter with all cores and one interpreter per core in threads, calling
invoke() on inputs set once: what the server could reach with no HTTP at all.
All of it shares this machine's 2 cores, load generator included.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_cnn"


def client_main(port: int, model: str, body_path: str, content_type: str, clients: int, seconds: float) -> None:
    """Load generator: `clients` threads, each with one persistent HTTP connection, or
    (content_type "grpc") one gRPC channel sending a PredictRequest of the .npy body."""
    body = Path(body_path).read_bytes()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    deadline = time.perf_counter() + seconds

    def http_worker(slot: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": content_type}
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            connection.request("POST", f"/v1/models/{model}:predict", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                errors[slot] += 1
            latencies[slot].append(time.perf_counter() - start)
        connection.close()

    def grpc_worker(slot: int) -> None:
        import grpc

        from edgekit.serve.grpc import to_tensor
        from edgekit.serve.protos import serving_pb2, serving_pb2_grpc

        request = serving_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs[input_name].CopyFrom(to_tensor(np.load(io.BytesIO(body))))
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        stub = serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}", options=options))
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                stub.Predict(request, timeout=60)
            except grpc.RpcError:
                errors[slot] += 1
            latencies[slot].append(time.perf_counter() - start)

    worker = http_worker
    if content_type == "grpc":
        worker = grpc_worker
        input_name = json.loads(os.environ["EDGEKIT_BENCH_INPUT"])

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    merged = np.array([v for per in latencies for v in per]) * 1000
    print(json.dumps({"requests": int(merged.size), "errors": int(sum(errors)),
                      "throughput_rps": round(merged.size / elapsed, 1),
                      "p50_ms": round(float(np.percentile(merged, 50)), 3),
                      "p99_ms": round(float(np.percentile(merged, 99)), 3)}))


def bare_loop(path: Path, row: np.ndarray, seconds: float) -> dict:
    from edgekit.runtime import TFLiteModel

    results = {}
    cores = os.cpu_count() or 1
    for label, interpreters, threads in (("1 interpreter x all cores", 1, cores),
                                         (f"{cores} interpreters x 1 thread", cores, 1)):
        models = [TFLiteModel(path, num_threads=threads) for _ in range(interpreters)]
        name = models[0].inputs()[0].name
        counts = [0] * interpreters
        deadline = time.perf_counter() + seconds

        def loop(slot: int) -> None:
            invoke = models[slot].prepare({name: row})
            while time.perf_counter() < deadline:
                invoke()
                counts[slot] += 1

        started = time.perf_counter()
        workers = [threading.Thread(target=loop, args=(i,)) for i in range(interpreters)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        results[label] = round(sum(counts) / (time.perf_counter() - started), 1)
    return {"throughput_rps": max(results.values()), "by_layout": results}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_mb(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                fields[key] = round(int(line.split()[1]) / 1024, 1)
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"]}


def measure_model(name: str, base: Path, row: np.ndarray, clients: list[int], seconds: float, work: Path,
                  encodings: list[str]) -> dict:
    rest_only = rest_only_memory(name, base)
    port, grpc_port = free_port(), free_port()
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", str(base), "--model-name", name,
                               "--port", str(port), "--grpc-port", str(grpc_port),
                               "--interpreters", str(os.cpu_count() or 1), "--threads", "1",
                               "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.perf_counter() + 120
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                break
        except OSError:
            pass
        if time.perf_counter() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit(f"{name}: the server did not become ready in 120 s")
        time.sleep(0.02)
    ready_seconds = time.perf_counter() - started
    memory_ready = memory_mb(server.pid)
    json_body = work / f"{name}.json"
    json_body.write_text(json.dumps({"instances": row.tolist()}))
    buffer = io.BytesIO()
    np.save(buffer, row)
    npy_body = work / f"{name}.npy"
    npy_body.write_bytes(buffer.getvalue())
    cells = {}
    try:
        input_name = json.dumps(input_name_of(base))
        for encoding, body, content_type in (("json", json_body, "application/json"),
                                             ("binary", npy_body, "application/x-npy"), ("grpc", npy_body, "grpc")):
            if encoding not in encodings:
                continue
            target = grpc_port if encoding == "grpc" else port
            for count in clients:
                out = subprocess.run([sys.executable, __file__, "--client", str(target), name, str(body), content_type,
                                      str(count), str(seconds)], capture_output=True, text=True, check=True,
                                     env=dict(os.environ, EDGEKIT_BENCH_INPUT=input_name))
                cells[f"{encoding}_{count}"] = json.loads(out.stdout)
                print(f"  {name} {encoding:6} {count:2} clients: {cells[f'{encoding}_{count}']}", flush=True)
        memory_after = memory_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return {"start_to_ready_s": round(ready_seconds, 3), "memory_when_ready": memory_ready,
            "memory_when_ready_rest_only": rest_only,
            "memory_after_load": memory_after, "request_bytes": {"json": json_body.stat().st_size,
                                                                 "binary": npy_body.stat().st_size}, "served": cells}


def input_name_of(base: Path) -> str:
    from edgekit.runtime import TFLiteModel

    return TFLiteModel(next((base / "1").glob("*.tflite"))).inputs()[0].name


def rest_only_memory(name: str, base: Path) -> dict:
    """The server's memory when ready with gRPC off (--grpc-port 0), for comparison."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", str(base), "--model-name", name,
                               "--port", str(port), "--grpc-port", "0", "--interpreters", str(os.cpu_count() or 1),
                               "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    return memory_mb(server.pid)
            except OSError:
                pass
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def prepare_models(work: Path, names: list[str]) -> dict[str, tuple[Path, np.ndarray]]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).parent))
    from mobilenet import export_mobilenet_v2, smooth_images

    from edgekit import convert

    models = {}
    if "digits" in names:
        convert(DIGITS / "saved_model", work / "digits" / "1", variants=("int8",), tfjs=(),
                calibration=DIGITS / "calibration.npz")
        models["digits"] = (work / "digits", np.load(DIGITS / "eval.npz")["pixels"][:1])
    if "mobilenet_v2" not in names:
        return models
    images = smooth_images(101)
    saved_model = export_mobilenet_v2(work / "mobilenet_saved_model", images[:32])
    np.save(work / "calibration.npy", images[:100])
    convert(saved_model, work / "mobilenet_out", variants=("int8",), int8_io="int8", tfjs=(),
            calibration=work / "calibration.npy", calibration_samples=100)
    # A random-weight MobileNetV2's int8 artifact fails convert's check (its near-uniform
    # softmax is below int8's output step), so serve would not pick it from an OUT_DIR.
    # Its speed is what is measured here: serve the file as TF Serving's layout, 1/model.tflite.
    (work / "mobilenet_v2" / "1").mkdir(parents=True)
    shutil.copy(work / "mobilenet_out" / "model_int8.tflite", work / "mobilenet_v2" / "1" / "model.tflite")
    models["mobilenet_v2"] = (work / "mobilenet_v2", images[100:101])
    return models


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, model, body, content_type, clients, seconds = sys.argv[2:8]
        client_main(int(port), model, body, content_type, int(clients), float(seconds))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--models", default="digits,mobilenet_v2")
    parser.add_argument("--encodings", default="json,binary,grpc")
    parser.add_argument("--json", type=Path, default=Path("results/serve.json"))
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="edgekit-serve-bench-"))
    results = {"machine": {"cpus": os.cpu_count()}, "seconds_per_cell": args.seconds, "models": {}}
    for name, (base, row) in prepare_models(work, args.models.split(",")).items():
        artifact = next((base / "1").glob("*.tflite"))
        print(f"{name}: bare loop", flush=True)
        bare = bare_loop(artifact, row, args.seconds)
        print(f"  {bare}", flush=True)
        entry = measure_model(name, base, row, clients, args.seconds, work, args.encodings.split(","))
        entry["bare_loop"] = bare
        for key, cell in entry["served"].items():
            cell["ratio_to_bare"] = round(cell["throughput_rps"] / bare["throughput_rps"], 3)
        results["models"][name] = entry
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

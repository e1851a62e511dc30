"""What `edgekit serve` costs per request, measured fairly, beside a bare interpreter loop and
the plain Flask + LiteRT app a user would otherwise write.

    python scripts/bench_serve.py [--seconds 5] [--repeat 3] [--clients 4] [--trees now=.,before=PATH]
                                  [--models digits,mobilenet_v2,image_floor] [--json results/serve.json]

On a machine with two or more cores, the server under test (or the bare loop) is pinned to
core 0 with one interpreter and one thread, and the load generator to core 1 (`taskset`),
so the client's own cost never mixes into the server's. Measured per cell (4 keep-alive
clients, batch 1, request logs off):
- throughput, p50/p99 latency, and the ratio to the pinned bare loop (`invoke()` on inputs
  set once, as TFLite's benchmark_model does);
- the server's CPU time per request, from /proc/PID/stat, and the overhead per request:
  that CPU time less the bare loop's CPU per inference.
Each cell (and the bare loop) runs `--repeat` times, the cells of every tree in turn, and the
median of each figure is reported (this machine's throughput drifts by 5-10% between runs; the
runs are kept in the JSON). Models: the sample digits CNN and MobileNetV2(weights=None), both full-integer int8 with float
inputs and outputs (the interpreter quantizes), and image_floor: MobileNetV2's 602 KB input into a
float32 model that only averages it, the floor of what such a request costs the server. `--trees` runs the same cells against other
checkouts of edgekit (PYTHONPATH), so before and after come from one run on one machine.
The Flask baseline needs `pip install flask waitress` (edgekit[bench]). `--floors` (on by default)
adds what any Python server spends on the same requests: a bare uvloop HTTP server that reads each
body into a buffer and answers a fixed .npy, and grpcio's server with an empty handler.
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
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_cnn"
TICKS = os.sysconf("SC_CLK_TCK")


def pinning() -> tuple[list[str], list[str], bool]:
    """taskset prefixes for the server and the load generator: disjoint cores where there are two."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cores[0])], ["taskset", "-c", str(cores[1])], True
    return [], [], False


# --- load generator (this script with --client, on its own core) -------------------------------

def client_main(port: int, model: str, input_name: str, body_path: str, kind: str, clients: int,
                seconds: float) -> None:
    """`clients` threads, each with one keep-alive HTTP connection or gRPC channel, batch 1."""
    body = Path(body_path).read_bytes()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    deadline = time.perf_counter() + seconds

    def http_worker(slot: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/x-npy" if kind == "npy" else "application/json"}
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            connection.request("POST", f"/v1/models/{model}:predict", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            errors[slot] += response.status != 200
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

    worker = grpc_worker if kind == "grpc" else http_worker
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


# --- the things measured -------------------------------------------------------------------------

BARE = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    from edgekit.runtime import TFLiteModel
    model = TFLiteModel(sys.argv[1], num_threads=1)
    row = np.load(sys.argv[2])
    invoke = model.prepare({model.inputs()[0].name: row})
    for _ in range(20):
        invoke()
    count, deadline = 0, time.perf_counter() + float(sys.argv[3])
    cpu, wall = time.process_time(), time.perf_counter()
    while time.perf_counter() < deadline:
        invoke()
        count += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"throughput_rps": round(count / wall, 1), "cpu_ms_per_inference": round(cpu * 1000 / count, 4)}))
""")

FLASK_APP = textwrap.dedent("""
    # The app a user writes without edgekit: Flask, one LiteRT interpreter behind a lock, JSON
    # in and out, served by waitress (4 threads).
    import sys, threading
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from flask import Flask, jsonify, request
    from waitress import serve

    interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
    interpreter.allocate_tensors()
    lock = threading.Lock()
    app = Flask(__name__)

    @app.post("/v1/models/<name>:predict")
    def predict(name):
        batch = np.array(request.get_json()["instances"], dtype=np.float32)
        with lock:
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, batch.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(index, batch)
            interpreter.invoke()
            output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        return jsonify({"predictions": output.tolist()})

    serve(app, host="127.0.0.1", port=int(sys.argv[2]), threads=4, _quiet=True)
""")


# What any Python server must spend on a request, with nothing of edgekit's: the same client and
# pinning against (a) a bare uvloop server that reads a Content-Length body straight into a buffer
# and answers a fixed 4 KB .npy (no routing, limits, metrics or inference), and (b) grpcio's
# server with a handler that returns a fixed PredictResponse without reading the request.
FLOOR_HTTP = textwrap.dedent("""
    import asyncio, io, sys
    import numpy as np, uvloop
    from edgekit.serve import malloc
    malloc.tune()  # as edgekit's server (0.060 instead of 0.067 ms per 602 KB request)
    reply = io.BytesIO(); np.save(reply, np.zeros((1, 1000), np.float32))
    REPLY = (b"HTTP/1.1 200 OK\\r\\ncontent-type: application/x-npy\\r\\ncontent-length: %d\\r\\n\\r\\n"
             % len(reply.getvalue())) + reply.getvalue()
    HEAD = memoryview(bytearray(1 << 18))

    class Minimal(asyncio.BufferedProtocol):
        def connection_made(self, transport):
            self.transport, self.body, self.pending = transport, None, b""
        def get_buffer(self, hint):
            return self.view[self.filled:] if self.body is not None else HEAD
        def buffer_updated(self, size):
            if self.body is not None:
                self.filled += size
            else:
                data = self.pending + bytes(HEAD[:size])
                end = data.find(b"\\r\\n\\r\\n")
                if end < 0:
                    self.pending = data
                    return
                head, rest, self.pending = data[:end].lower(), data[end + 4:], b""
                length = int(head.split(b"content-length:")[1].split(b"\\r\\n")[0])
                self.body = np.empty(length, np.uint8)
                self.view = memoryview(self.body)
                self.view[:len(rest)] = rest
                self.filled = len(rest)
            if self.filled == len(self.body):
                self.body = None
                self.transport.write(REPLY)

    async def main():
        server = await asyncio.get_running_loop().create_server(Minimal, "127.0.0.1", int(sys.argv[1]))
        await server.serve_forever()
    uvloop.run(main())
""")

FLOOR_GRPC = textwrap.dedent("""
    import sys
    from concurrent import futures
    import grpc, numpy as np
    from edgekit.serve import malloc
    from edgekit.serve.grpc import to_tensor
    from edgekit.serve.protos import serving_pb2
    malloc.tune()  # as edgekit's server: 0.21 instead of 0.30-0.38 ms per 602 KB call
    reply = serving_pb2.PredictResponse()
    reply.outputs["y"].CopyFrom(to_tensor(np.zeros((1, 1000), np.float32)))
    REPLY = reply.SerializeToString()
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.http2.bdp_probe", 0),
               ("grpc.http2.lookahead_bytes", 1 << 20)]  # as edgekit's server
    server = grpc.server(futures.ThreadPoolExecutor(2), options=options)
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: REPLY)  # bytes in, bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {"Predict": handler}),))
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    server.wait_for_termination()
""")


def measure_floor(program: str, kind: str, model: str, input_name: str, body: Path, clients: int, seconds: float,
                  server_pin: list[str], client_pin: list[str], repeat: int) -> dict:
    port = free_port()
    server = subprocess.Popen([*server_pin, sys.executable, "-c", program, str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        runs = [run_cell(server.pid, port, model, input_name, body, kind, clients, seconds, client_pin)
                for _ in range(repeat)]
        for cell in runs:
            print(f"  floor {model} {kind}: {cell}", flush=True)
        return median_cell(runs)
    finally:
        server.kill()
        server.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def wait_ready(port: int, process: subprocess.Popen, path: str = "/readyz") -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path)
            if connection.getresponse().status in (200, 405):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("the server did not become ready in 120 s")


def median_cell(runs: list[dict]) -> dict:
    """Each figure's median over the runs, with the runs themselves."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    cell = {k: round(float(np.median([run[k] for run in runs])), 4) for k in keys}
    return {**cell, "runs": runs} if len(runs) > 1 else cell


def run_cell(server_pid: int, port: int, model: str, input_name: str, body: Path, kind: str, clients: int,
             seconds: float, client_pin: list[str]) -> dict:
    before = cpu_seconds(server_pid)
    out = subprocess.run([*client_pin, sys.executable, __file__, "--client", str(port), model, input_name, str(body),
                          kind, str(clients), str(seconds)], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    cell = json.loads(out.stdout)
    cell["server_cpu_ms_per_request"] = round((cpu_seconds(server_pid) - before) * 1000 / max(1, cell["requests"]), 4)
    return cell


def measure_edgekit(tree: Path, base: Path, model: str, input_name: str, bodies: dict, clients: int,
                    seconds: float, server_pin: list[str], client_pin: list[str], repeat: int = 1) -> dict:
    port, grpc_port = free_port(), free_port()
    server = subprocess.Popen([*server_pin, sys.executable, "-m", "edgekit.cli", "serve", str(base), "--model-name",
                               model, "--port", str(port), "--grpc-port", str(grpc_port), "--interpreters", "1",
                               "--threads", "1", "--log-level", "warning"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree,  # -m puts the cwd first
                              env=dict(os.environ, PYTHONPATH=str(tree)))
    try:
        wait_ready(port, server)
        runs: dict[str, list[dict]] = {"npy": [], "grpc": [], "json": []}
        for _ in range(repeat):
            for kind in runs:
                cell = run_cell(server.pid, grpc_port if kind == "grpc" else port, model, input_name, bodies[kind],
                                "json" if kind == "json" else kind, clients, seconds, client_pin)
                runs[kind].append(cell)
                print(f"  {tree} {model} {kind}: {cell}", flush=True)
        return {kind: median_cell(cells) for kind, cells in runs.items()}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def measure_flask(tflite: Path, model: str, body: Path, clients: int, seconds: float, server_pin: list[str],
                  client_pin: list[str], repeat: int = 1) -> dict | None:
    try:
        import flask  # noqa: F401
        import waitress  # noqa: F401
    except ImportError:
        return None
    port = free_port()
    server = subprocess.Popen([*server_pin, sys.executable, "-c", FLASK_APP, str(tflite), str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, server, f"/v1/models/{model}:predict")
        runs = []
        for _ in range(repeat):
            runs.append(run_cell(server.pid, port, model, "", body, "json", clients, seconds, client_pin))
            print(f"  flask {model} json: {runs[-1]}", flush=True)
        return median_cell(runs)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _image_mean(path: Path) -> Path:
    """A SavedModel that only averages a 224x224x3 image: served, it shows what moving MobileNetV2's
    602 KB input through TCP, HTTP or gRPC and Python costs, with almost no inference."""
    import tensorflow as tf

    class ImageMean(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="image")])
        def serve(self, image):
            return {"mean": tf.reduce_mean(image, axis=[1, 2])}

    module = ImageMean()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def prepare_models(work: Path, names: list[str]) -> dict[str, tuple[Path, str, np.ndarray]]:
    """name -> (base path with 1/model.tflite, input name, one row)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).parent))
    from edgekit import convert

    models = {}
    if "digits" in names:
        convert(DIGITS / "saved_model", work / "digits_out", variants=("int8",), int8_io="float", tfjs=(),
                calibration=DIGITS / "calibration.npz")
        with np.load(DIGITS / "eval.npz") as archive:
            row = archive["pixels"][:1]
        models["digits"] = (work / "digits_out" / "model_int8.tflite", "pixels", row)
    if "mobilenet_v2" in names:
        from mobilenet import export_mobilenet_v2, smooth_images

        images = smooth_images(101)
        saved_model = export_mobilenet_v2(work / "mobilenet_saved_model", images[:32])
        np.save(work / "calibration.npy", images[:100])
        convert(saved_model, work / "mobilenet_out", variants=("int8",), int8_io="float", tfjs=(),
                calibration=work / "calibration.npy", calibration_samples=100)
        models["mobilenet_v2"] = (work / "mobilenet_out" / "model_int8.tflite", None, images[100:101])
    if "image_floor" in names:
        from mobilenet import smooth_images

        convert(_image_mean(work / "image_mean_saved_model"), work / "image_floor_out", variants=("float32",),
                tfjs=())
        models["image_floor"] = (work / "image_floor_out" / "model_float32.tflite", "image", smooth_images(1))
    laid_out = {}
    for name, (tflite, input_name, row) in models.items():
        # served as TF Serving's layout (1/model.tflite): a random-weight MobileNetV2's int8 artifact
        # fails convert's accuracy check, and its speed is what is measured here
        (work / name / "1").mkdir(parents=True)
        shutil.copy(tflite, work / name / "1" / "model.tflite")
        if input_name is None:
            from edgekit.runtime import TFLiteModel

            input_name = TFLiteModel(work / name / "1" / "model.tflite").inputs()[0].name
        laid_out[name] = (work / name, input_name, row)
    return laid_out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, model, input_name, body, kind, clients, seconds = sys.argv[2:9]
        client_main(int(port), model, input_name, body, kind, int(clients), float(seconds))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; medians are reported")
    parser.add_argument("--models", default="digits,mobilenet_v2,image_floor")
    parser.add_argument("--trees", default="now=.", help="label=path of edgekit checkouts to compare")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "serve.json")
    parser.add_argument("--floors", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure a minimal Python HTTP server and an empty grpcio handler")
    args = parser.parse_args()
    server_pin, client_pin, pinned = pinning()
    trees = {label: Path(path).resolve() for label, path in (item.split("=", 1) for item in args.trees.split(","))}
    work = Path(tempfile.mkdtemp(prefix="edgekit-serve-bench-"))
    results = {"machine": {"cpus": os.cpu_count(), "pinned": pinned,
                           "layout": "server (or bare loop) on core 0, load generator on core 1" if pinned
                           else "no pinning: fewer than 2 cores"},
               "setup": {"clients": args.clients, "seconds_per_cell": args.seconds, "repeat": args.repeat, "batch": 1,
                         "server": "1 interpreter x 1 thread, request logs off"},
               "trees": {label: str(path) for label, path in trees.items()}, "models": {}}
    for name, (base, input_name, row) in prepare_models(work, args.models.split(",")).items():
        tflite = base / "1" / "model.tflite"
        np.save(work / f"{name}.npy", row)
        bodies = {"npy": work / f"{name}.npy", "grpc": work / f"{name}.npy", "json": work / f"{name}.json"}
        bodies["json"].write_text(json.dumps({"instances": row.tolist()}))
        bare = median_cell([json.loads(subprocess.run(
            [*server_pin, sys.executable, "-c", BARE, str(tflite), str(bodies["npy"]), str(args.seconds)],
            capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout)
            for _ in range(args.repeat)])
        print(f"{name}: bare loop {bare}", flush=True)
        entry = {"request_bytes": {"npy": bodies["npy"].stat().st_size, "json": bodies["json"].stat().st_size},
                 "bare_loop": bare, "edgekit": {}}
        for label, tree in trees.items():
            cells = measure_edgekit(tree, base, name, input_name, bodies, args.clients, args.seconds, server_pin,
                                    client_pin, args.repeat)
            for cell in cells.values():
                cell["ratio_to_bare"] = round(cell["throughput_rps"] / bare["throughput_rps"], 3)
                cell["overhead_ms_per_request"] = round(cell["server_cpu_ms_per_request"]
                                                        - bare["cpu_ms_per_inference"], 4)
            entry["edgekit"][label] = cells
        flask = measure_flask(tflite, name, bodies["json"], args.clients, args.seconds, server_pin, client_pin,
                              args.repeat)
        if flask:
            flask["ratio_to_bare"] = round(flask["throughput_rps"] / bare["throughput_rps"], 3)
        entry["flask_waitress_json"] = flask
        if args.floors:
            entry["floors"] = {
                "python_http_minimal": measure_floor(FLOOR_HTTP, "npy", name, input_name, bodies["npy"],
                                                     args.clients, args.seconds, server_pin, client_pin, args.repeat),
                "grpcio_empty_handler": measure_floor(FLOOR_GRPC, "grpc", name, input_name, bodies["grpc"],
                                                      args.clients, args.seconds, server_pin, client_pin,
                                                      args.repeat)}
        results["models"][name] = entry
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Does `edgekit serve --workers N` pay? Throughput on N cores with N worker processes, against
one process with N interpreters on the same N cores (what a single server does with more cores).

    python scripts/bench_serve_workers.py [--models digits,mobilenet_v2] [--workers 1,2,4]
                                          [--seconds 4] [--repeat 2] [--clients 4] [--kinds npy,grpc,json]
                                          [--prepare DIR | --prepared DIR] [--json results/serve_workers.json]

The machine's cores are split: the server gets the first max(--workers) cores and each
N-core cell is pinned (`taskset`) to the first N of them; the load generators (this script's
--client from bench_serve.py, one process per remaining core, `--clients` keep-alive
connections each, batch 1) get the rest, one core each. Reported per cell, as medians of
--repeat runs: requests/s, the server's CPU time per request (the parent and every worker,
from /proc), how many cores the server kept busy, and how busy the load cores were (near
1.0 means the load generators, not the server, set the pace). Models: the sample digits CNN
and MobileNetV2(weights=None), int8 with float inputs, as in bench_serve.py.

`--prepare DIR` converts the models (needs TensorFlow) and stops; `--prepared DIR` measures
with models prepared so, on a machine without TensorFlow.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import BARE, ROOT, cpu_seconds, free_port, median_cell, prepare_models, wait_ready  # noqa: E402


# this checkout first, then whatever the caller had (wheels unpacked aside, say)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))


def descendants(pid: int) -> list[int]:
    """pid and every process under it (the worker processes of --workers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


def load(port: int, model: str, input_name: str, body: Path, kind: str, clients: int, seconds: float,
         cores: list[int]) -> dict:
    """One load generator per core in `cores`, all at once; their figures summed."""
    generators = []
    for core in cores:
        generators.append(subprocess.Popen(
            ["taskset", "-c", str(core), sys.executable, str(Path(__file__).parent / "bench_serve.py"), "--client",
             str(port), model, input_name, str(body), kind, str(clients), str(seconds)],
            stdout=subprocess.PIPE, text=True, env=ENV))
    results, client_cpu = [], 0.0
    for generator in generators:
        out = generator.stdout.read()
        _, status, usage = os.wait4(generator.pid, 0)
        generator.returncode = os.waitstatus_to_exitcode(status)
        if generator.returncode != 0:
            raise SystemExit(f"a load generator failed ({generator.returncode})")
        results.append(json.loads(out))
        client_cpu += usage.ru_utime + usage.ru_stime
    requests = sum(r["requests"] for r in results)
    return {"requests": requests, "errors": sum(r["errors"] for r in results),
            "throughput_rps": round(sum(r["throughput_rps"] for r in results), 1),
            "p50_ms": round(float(np.median([r["p50_ms"] for r in results])), 3),
            "p99_ms": round(float(max(r["p99_ms"] for r in results)), 3),
            "load_cores_busy": round(client_cpu / seconds / len(cores), 3)}


def measure(base: Path, model: str, input_name: str, bodies: dict, workers: int, interpreters: int,
            server_cores: list[int], load_cores: list[int], args) -> dict:
    port, grpc_port = free_port(), free_port()
    server = subprocess.Popen(
        ["taskset", "-c", ",".join(map(str, server_cores)), sys.executable, "-m", "edgekit.cli", "serve", str(base),
         "--model-name", model, "--port", str(port), "--grpc-port", str(grpc_port), "--workers", str(workers),
         "--interpreters", str(interpreters), "--threads", "1", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=ENV)
    try:
        wait_ready(port, server)
        cells: dict[str, list[dict]] = {kind: [] for kind in args.kinds.split(",")}
        for _ in range(args.repeat):
            for kind in cells:
                pids = descendants(server.pid)
                before = tree_cpu(pids)
                cell = load(grpc_port if kind == "grpc" else port, model, input_name, bodies[kind], kind,
                            args.clients, args.seconds, load_cores)
                busy = tree_cpu(pids) - before
                cell["server_cpu_ms_per_request"] = round(busy * 1000 / max(1, cell["requests"]), 4)
                cell["server_cores_busy"] = round(busy / args.seconds, 2)
                cells[kind].append(cell)
                print(f"  {model} workers={workers} interpreters={interpreters} {kind}: {cell}", flush=True)
        return {kind: median_cell(runs) for kind, runs in cells.items()}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=90)


def save_inputs(work: Path, models: dict) -> None:
    for name, (_, input_name, row) in models.items():
        np.save(work / f"{name}.npy", row)
        (work / f"{name}.json").write_text(json.dumps({"input_name": input_name}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,mobilenet_v2")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4, help="keep-alive connections per load generator")
    parser.add_argument("--kinds", default="npy,grpc", help="request kinds: npy, grpc, json")
    parser.add_argument("--prepare", type=Path, help="convert the models into this folder and stop")
    parser.add_argument("--prepared", type=Path, help="models from an earlier --prepare")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "serve_workers.json")
    args = parser.parse_args()
    names = args.models.split(",")
    if args.prepare:
        args.prepare.mkdir(parents=True, exist_ok=True)
        save_inputs(args.prepare, prepare_models(args.prepare, names))
        for path in args.prepare.iterdir():  # only what --prepared reads: NAME/1/model.tflite, NAME.npy, NAME.json
            if path.is_dir() and path.name not in names:
                shutil.rmtree(path)
        print(f"prepared {names} in {args.prepare}")
        return
    counts = [int(n) for n in args.workers.split(",")]
    cores = sorted(os.sched_getaffinity(0))
    if not shutil.which("taskset") or len(cores) < max(counts) + 1:
        raise SystemExit(f"needs taskset and more than {max(counts)} cores (this machine: {len(cores)})")
    server_cores, load_cores = cores[:max(counts)], cores[max(counts):]
    work = args.prepared or Path(tempfile.mkdtemp(prefix="edgekit-workers-bench-"))
    if not args.prepared:
        save_inputs(work, prepare_models(work, names))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    results = {"machine": {"cpu": cpu, "python": platform.python_version(), "cpus": len(cores),
                           "server_cores": server_cores, "load_cores": load_cores},
               "setup": {"clients_per_generator": args.clients, "generators": len(load_cores),
                         "seconds_per_cell": args.seconds, "repeat": args.repeat, "batch": 1,
                         "threads_per_interpreter": 1, "request_logs": "off"},
               "models": {}}
    for name in names:
        base, body = work / name, work / f"{name}.npy"
        input_name = json.loads((work / f"{name}.json").read_text())["input_name"]
        bodies = {"npy": body, "grpc": body, "json": work / f"{name}.body.json"}
        bodies["json"].write_text(json.dumps({"instances": np.load(body).tolist()}))
        bare = median_cell([json.loads(subprocess.run(
            ["taskset", "-c", str(server_cores[0]), sys.executable, "-c", BARE, str(base / "1" / "model.tflite"),
             str(body), str(args.seconds)], capture_output=True, text=True, check=True,
            env=ENV).stdout) for _ in range(args.repeat)])
        print(f"{name}: bare loop on one core {bare}", flush=True)
        entry = {"bare_loop_one_core": bare, "cells": []}
        for n in counts:
            setups = [(n, 1)] if n == 1 else [(n, 1), (1, n)]
            for workers, interpreters in setups:
                cells = measure(base, name, input_name, bodies, workers, interpreters, server_cores[:n], load_cores,
                                args)
                entry["cells"].append({"cores": n, "workers": workers, "interpreters_per_worker": interpreters,
                                       **cells})
        for cell in entry["cells"]:
            one = entry["cells"][0]
            for kind in args.kinds.split(","):
                cell[kind]["x_one_core"] = round(cell[kind]["throughput_rps"] / one[kind]["throughput_rps"], 2)
        results["models"][name] = entry
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    for name, entry in results["models"].items():
        print(f"\n{name} (bare loop, one core: {entry['bare_loop_one_core']['throughput_rps']}/s)")
        print("cores  workers x interpreters   " + "   ".join(f"{kind} req/s (x1 core, CPU ms/req)"
                                                          for kind in args.kinds.split(",")))
        for cell in entry["cells"]:
            print(f"{cell['cores']:>5}  {cell['workers']:>7} x {cell['interpreters_per_worker']:<12}  " + "   ".join(
                f"{cell[kind]['throughput_rps']:>9,.0f} ({cell[kind]['x_one_core']}x, "
                f"{cell[kind]['server_cpu_ms_per_request']})" for kind in args.kinds.split(",")))


if __name__ == "__main__":
    main()

"""Measure one .tflite on this machine, in a process of its own: what `edgekit serve
--allow-bench` runs for a client's `edgekit bench --device URL`.

    python -m edgekit.serve.bench_worker FOLDER [--signature S] [--threads 1,4] [--runs 50] [--warmup 5]

FOLDER holds model.tflite and, optionally, inputs.npz (the rows to run, keyed by input
name). The worker runs the rows and writes the outputs to FOLDER/outputs.npz, then times
a one-row call at each thread count (the first call apart, then warm-up, then the timed
runs, as bench does on the workstation), and prints one JSON line: this machine, the
runtime, load time, peak memory and the latency figures. It runs at a lower priority
(nice 10), so the models being served keep the CPU first. Device world: no TensorFlow.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np


def device_info() -> dict[str, object]:
    """What the machine is: enough to tell a Pi 4 from a Pi 5 or a workstation."""
    from edgekit._version import __version__
    from edgekit.runtime.tflite import interpreter_class

    info: dict[str, object] = {"machine": platform.machine(), "cpus": os.cpu_count(), "system": platform.platform(),
                               "python": platform.python_version(), "numpy": np.__version__, "edgekit": __version__}
    try:
        info["runtime"] = interpreter_class()[1]
    except Exception as exc:  # no runtime: say so rather than fail the info
        info["runtime"] = f"none ({exc})"
    model = _read("/proc/device-tree/model").rstrip("\x00").strip()
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.lower().startswith(("model name", "hardware", "cpu model"))), "")
    memory = next((line.split()[1] for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), "")
    info["model"] = model or None
    info["cpu"] = cpu or None
    info["memory_mb"] = round(int(memory) / 1024) if memory.isdigit() else None
    return info


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _status_mb(field: str) -> float | None:
    for line in _read("/proc/self/status").splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        os.nice(10)
    except OSError:
        pass
    from edgekit.benchmark.timing import measure_latency
    from edgekit.errors import EdgekitError
    from edgekit.runtime import TFLiteModel
    from edgekit.runtime.tflite import interpreter_class, zeros

    interpreter_class()
    baseline = _status_mb("VmRSS")
    try:
        started = time.perf_counter()
        model = TFLiteModel(args.folder / "model.tflite", num_threads=1)
        load_ms = (time.perf_counter() - started) * 1000
        specs = model.inputs(args.signature)
        inputs_path = args.folder / "inputs.npz"
        if inputs_path.is_file():
            with np.load(inputs_path, allow_pickle=False) as archive:
                inputs = {name: archive[name] for name in archive.files}
        else:
            inputs = {i.name: zeros(i.shape, np.float32) for i in specs}
        rows = len(next(iter(inputs.values()))) if inputs else 1
        batch_free = all(i.shape and i.shape[0] == -1 for i in specs)
        step = rows if batch_free else 1
        parts = [model.run({k: v[i : i + step] for k, v in inputs.items()}, args.signature)
                 for i in range(0, rows, step)]
        outputs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        np.savez(args.folder / "outputs.npz", **outputs)
        peak = _status_mb("VmHWM")
        one_row = {k: v[:1] for k, v in inputs.items()}
        latency = {}
        for threads in sorted({int(t) for t in args.threads.split(",")}):
            timed = TFLiteModel(args.folder / "model.tflite", num_threads=threads)
            latency[str(threads)] = asdict(measure_latency(timed.prepare(one_row, args.signature), args.warmup,
                                                           args.runs))
    except EdgekitError as exc:
        print(json.dumps({"error": exc.message, "hint": exc.hint}))
        sys.exit(2)
    print(json.dumps({"device": device_info(), "rows": rows, "load_ms": round(load_ms, 3),
                      "memory": {"peak_rss_mb": peak, "baseline_rss_mb": baseline}, "latency_ms": latency}))


if __name__ == "__main__":
    main()

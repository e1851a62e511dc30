"""What `edgekit bench`'s timing loop costs on top of the model: its p50 for a tiny model
against a bare `interpreter.invoke()` loop on a fresh LiteRT interpreter.

    python scripts/bench_harness_cost.py [--runs 2000] [--rounds 5] [--json results/bench_harness_cost.json]

The tiny model is the sample digits CNN's int8 artifact (a few microseconds per call), so
any per-call overhead of the harness shows. Both loops run batch 1, one thread, the same
input; rounds alternate the two, and the median of the rounds' p50s is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_cnn"


def bare_loop_p50(path: Path, row: np.ndarray, runs: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    scale, zero_point = detail["quantization"]
    interpreter.set_tensor(detail["index"], np.clip(np.round(row / scale) + zero_point, -128, 127).astype(np.int8))
    for _ in range(50):
        interpreter.invoke()
    samples = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        interpreter.invoke()
        samples[i] = time.perf_counter_ns() - start
    return float(np.percentile(samples, 50) / 1e3)


def harness_p50(path: Path, row: np.ndarray, runs: int) -> float:
    from edgekit.benchmark.runners import LiteRTRunner
    from edgekit.benchmark.timing import measure_latency

    runner = LiteRTRunner(path, "serving_default", 1)
    return measure_latency(runner.prepare({"pixels": row}), warmup=50, runs=runs).p50_ms * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("results/bench_harness_cost.json"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgekit import convert

    out = Path(tempfile.mkdtemp(prefix="edgekit-harness-")) / "out"
    convert(DIGITS / "saved_model", out, variants=("int8",), calibration=DIGITS / "calibration.npz", tfjs=())
    path = out / "model_int8.tflite"
    row = np.load(DIGITS / "eval.npz")["pixels"][:1]
    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop_p50(path, row, args.runs))
        ours.append(harness_p50(path, row, args.runs))
    result = {
        "model": "sample digits CNN, int8 artifact, batch 1, 1 thread",
        "runs_per_round": args.runs, "rounds": args.rounds,
        "bare_invoke_p50_us": [round(v, 3) for v in bare],
        "edgekit_bench_p50_us": [round(v, 3) for v in ours],
        "ratio_of_medians": round(float(np.median(ours) / np.median(bare)), 3),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""How far a SavedModel's outputs on the GPU are from the CPU's, with TF32 on (TensorFlow's default on
Ampere-and-newer GPUs) and off (what edgekit's reference uses), on the sample models' eval rows.

    python scripts/check_gpu_reference.py [--json results/gpu_reference.json] [--rows 64]

Needs TensorFlow that sees a GPU (`pip install 'tensorflow[and-cuda]==2.21.0'` on a CUDA 12 machine);
without one it says so and exits 2. Per output: relative L2, the largest error over the output's spread,
and top-1 agreement for classifier-shaped outputs, each against the CPU's outputs; and one batch's time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("digits_cnn", "mtcnn_onet")


def compare(got: dict, want: dict) -> dict:
    figures = {}
    for name, expected in want.items():
        a, b = got[name].astype(np.float64), expected.astype(np.float64)
        spread = max(float(b.std(axis=0).mean()), 1e-30)
        row = {"rel_l2": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)),
               "max_abs_over_spread": float(np.abs(a - b).max() / spread)}
        if b.ndim == 2 and b.shape[1] > 1:
            row["top1_agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
        figures[name] = row
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "gpu_reference.json")
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args()

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("TensorFlow sees no GPU here: nothing to compare", file=sys.stderr)
        return 2
    build = tf.sysconfig.get_build_info()
    report = {"gpu": tf.config.experimental.get_device_details(gpus[0]).get("device_name"),
              "tensorflow": tf.__version__, "cuda_build": build.get("cuda_version"),
              "tf32_default": tf.config.experimental.tensor_float_32_execution_enabled(), "models": {}}
    for model in MODELS:
        function = tf.saved_model.load(str(ROOT / "sample_models" / model / "saved_model")).signatures["serving_default"]
        specs = function.structured_input_signature[1]
        with np.load(ROOT / "sample_models" / model / "eval.npz") as archive:  # O-Net's pixels are uint8
            rows = {n: archive[n][: args.rows].astype(s.dtype.as_numpy_dtype) for n, s in specs.items()}

        def run(device: str) -> tuple[dict, float]:
            with tf.device(device):
                feed = {n: tf.constant(v) for n, v in rows.items()}
                function(**feed)  # warm: cuDNN picks its algorithms on the first call
                start = time.perf_counter()
                outputs = {k: v.numpy() for k, v in function(**feed).items()}
                return outputs, (time.perf_counter() - start) * 1e3

        cpu, cpu_ms = run("/CPU:0")
        entry = {"rows": len(next(iter(rows.values()))), "cpu_batch_ms": round(cpu_ms, 3)}
        for label, tf32 in (("gpu_tf32", True), ("gpu_float32", False)):
            tf.config.experimental.enable_tensor_float_32_execution(tf32)
            outputs, ms = run("/GPU:0")
            entry[label] = {"batch_ms": round(ms, 3), "against_cpu": compare(outputs, cpu)}
        report["models"][model] = entry
        print(model, json.dumps(entry))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ONNX beside TFLite float32 for the digits CNN and MobileNetV2(weights=None).

    python scripts/bench_onnx.py [--json results/onnx.json]

Converts each with `--variants float32 --onnx`, then benches both artifacts (batch 1,
1 and 2 threads): bytes, relative L2 error against the SavedModel, median latency.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_cnn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("results/onnx.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import tensorflow as tf
    from mobilenet import export_mobilenet_v2, smooth_images

    from edgekit import bench, convert

    work = Path(tempfile.mkdtemp(prefix="edgekit-onnx-"))
    images = smooth_images(96)
    mobilenet = export_mobilenet_v2(work / "mobilenet_v2", images[:32])
    _, specs = tf.saved_model.load(str(mobilenet)).signatures["serving_default"].structured_input_signature
    np.savez(work / "mobilenet_eval.npz", **{next(iter(specs)): images[32:]})
    models = {"digits_cnn": (DIGITS / "saved_model", DIGITS / "eval.npz", 100),
              "mobilenet_v2": (mobilenet, work / "mobilenet_eval.npz", 30)}
    results = {}
    for name, (saved_model, eval_data, runs) in models.items():
        out = work / f"{name}_out"
        manifest = convert(saved_model, out, variants=("float32",), tfjs=(), onnx=True)
        report = bench(out, eval_data=eval_data, runs=runs, warmup=3, threads=(1, 2), batch=8, memory=False)
        results[name] = {
            row.name: {"bytes": row.bytes, "engine": row.engine,
                       "rel_l2": max(a["rel_l2_error"] for a in row.agreement.values()),
                       "p50_ms": {t: round(lat.p50_ms, 4) for t, lat in row.latency_ms.items()},
                       "opset": manifest.artifact(row.name).opset}
            for row in report.artifacts}
        print(name, json.dumps(results[name], indent=1), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

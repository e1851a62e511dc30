"""`edgekit bench` on MobileNetV2(weights=None), every TFLite variant, at 1 and 2 threads.

    python scripts/bench_mobilenet.py [--runs 30] [--out results/mobilenet_v2]

Builds the model as scripts/mobilenet.py describes (BatchNorm statistics from a batch),
converts it with 100 calibration images, benches on 64 other images (no labels exist for
synthetic images, so quality is agreement with the SavedModel), and writes
OUT/bench.json, OUT/bench.html and OUT/table.txt.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from mobilenet import export_mobilenet_v2, smooth_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("results/mobilenet_v2"))
    args = parser.parse_args()
    from edgekit import bench, convert
    from edgekit.benchmark.report import render_html, render_table

    work = Path(tempfile.mkdtemp(prefix="edgekit-mnv2-"))
    images = smooth_images(164)
    saved_model = export_mobilenet_v2(work / "saved_model", images[:32])
    name = "keras_tensor"
    import tensorflow as tf

    _, specs = tf.saved_model.load(str(saved_model)).signatures["serving_default"].structured_input_signature
    name = next(iter(specs))
    np.savez(work / "calibration.npz", **{name: images[:100]})
    np.savez(work / "eval.npz", **{name: images[100:]})
    convert(saved_model, work / "out", calibration=work / "calibration.npz", calibration_samples=100, tfjs=(),
            progress=lambda step: step.stage == "done" and print(f"converted {step.variant}: {step.artifact.status}"))
    report = bench(work / "out", eval_data=work / "eval.npz", runs=args.runs, warmup=3, threads=(1, 2), batch=8,
                   progress=print)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(report.to_json())
    (args.out / "bench.html").write_text(render_html(report))
    table = render_table(report)
    (args.out / "table.txt").write_text(table + "\n")
    print(table)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

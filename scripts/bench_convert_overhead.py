"""edgekit convert's cost against plain TFLiteConverter calls for the same five variants.

    python scripts/bench_convert_overhead.py [--calibration-samples 100] [--repeats 2]
                                             [--json results/convert_overhead.json]

Both sides convert MobileNetV2(weights=None) (see scripts/mobilenet.py) to float32,
dynamic, float16, int8 (int8 I/O) and int16x8 with the same calibration rows, in this
one process after TensorFlow is imported. edgekit also loads the SavedModel, runs the
reference, checks every artifact in LiteRT and writes the manifest: that is its overhead.
The best of `--repeats` runs of each is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from mobilenet import export_mobilenet_v2, smooth_images  # noqa: E402


def plain_converter(saved_model: Path, rows: np.ndarray) -> float:
    import tensorflow as tf

    from edgekit.native_logs import captured_native_output

    def representative():
        for row in rows:
            yield [row[None]]

    def convert(**settings):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        for key, value in settings.items():
            if key == "supported_types":
                converter.target_spec.supported_types = value
            elif key == "supported_ops":
                converter.target_spec.supported_ops = value
            else:
                setattr(converter, key, value)
        with captured_native_output():
            return converter.convert()

    default = [tf.lite.Optimize.DEFAULT]
    started = time.perf_counter()
    convert()
    convert(optimizations=default)
    convert(optimizations=default, supported_types=[tf.float16])
    convert(optimizations=default, representative_dataset=representative, inference_input_type=tf.int8,
            inference_output_type=tf.int8, supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8])
    convert(optimizations=default, representative_dataset=representative,
            supported_ops=[tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8])
    return time.perf_counter() - started


def edgekit_convert(saved_model: Path, calibration: Path, samples: int, out: Path, progress) -> tuple[float, dict]:
    from edgekit import convert

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    manifest = convert(saved_model, out, calibration=calibration, calibration_samples=samples, tfjs=(),
                       progress=progress)  # the five TFLite variants, as the baseline converts
    return time.perf_counter() - started, manifest.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-samples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("results/convert_overhead.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgekit-overhead-"))
    images = smooth_images(args.calibration_samples)
    saved_model = export_mobilenet_v2(work / "mobilenet_v2", images[:32])
    np.save(work / "calibration.npy", images)
    seconds_per_step = {}

    def progress(step):
        if step.stage == "done":
            seconds_per_step[step.variant] = round(step.seconds, 2)
            print(f"  edgekit {step.variant}: {step.artifact.status} in {step.seconds:.1f} s", flush=True)

    plain, ours, manifest = [], [], None
    for attempt in range(args.repeats):
        plain.append(plain_converter(saved_model, images))
        print(f"run {attempt + 1}: plain TFLiteConverter {plain[-1]:.1f} s", flush=True)
        seconds, manifest = edgekit_convert(saved_model, work / "calibration.npy", args.calibration_samples,
                                            work / "out", progress)
        ours.append(seconds)
        print(f"run {attempt + 1}: edgekit convert {ours[-1]:.1f} s", flush=True)
    result = {
        "model": "keras.applications.MobileNetV2(weights=None), BatchNorm statistics from a synthetic batch",
        "variants": ["float32", "dynamic", "float16", "int8", "int16x8"],
        "calibration_samples": args.calibration_samples,
        "calibration_data": "synthetic smooth images (scripts/mobilenet.py); timing only",
        "check_samples": manifest["check_inputs"]["samples"],
        "plain_converter_seconds": [round(s, 2) for s in plain],
        "edgekit_seconds": [round(s, 2) for s in ours],
        "edgekit_seconds_per_variant_last_run": seconds_per_step,
        "overhead_ratio_best": round(min(ours) / min(plain), 3),
        "artifacts": {a["variant"]: {"status": a["status"], "bytes": a["bytes"],
                                     "rel_l2": a["check"] and max(o["rel_l2_error"] for o in a["check"]["outputs"].values())}
                      for a in manifest["artifacts"]},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("plain_converter_seconds", "edgekit_seconds", "overhead_ratio_best")}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Peak resident memory of a fresh process that loads a model and runs it once.

    python -m edgekit.benchmark.memory tflite MODEL.tflite [--signature S] [--threads N]
    python -m edgekit.benchmark.memory onnx MODEL.onnx [--threads N]
    python -m edgekit.benchmark.memory savedmodel DIR [--signature S]

Prints one JSON line: peak_rss_mb (VmHWM, the high-water mark of this process's own
address space) and baseline_rss_mb (VmRSS after imports, before the model is loaded).
Not ru_maxrss: Linux carries that across execve, so a child spawned by a process holding
TensorFlow would report the parent's peak. Each artifact gets its own process, so they do
not pollute each other's figures.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _status_mb(field: str) -> float:
    """A /proc/self/status memory field (kB) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}: peak memory needs Linux")


def _zeros(specs) -> dict[str, np.ndarray]:
    from edgekit.runtime.tflite import zeros

    return {name: zeros(shape, dtype) for name, dtype, shape in specs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["tflite", "onnx", "savedmodel"])
    parser.add_argument("path")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.kind == "tflite":
        from edgekit.runtime import TFLiteModel
        from edgekit.runtime.tflite import interpreter_class

        interpreter_class()  # load the runtime library before the baseline reading
        baseline = _status_mb("VmRSS")
        model = TFLiteModel(args.path, num_threads=args.threads)
        inputs = model.inputs(args.signature)
        model.run(_zeros([(i.name, i.dtype, i.shape) for i in inputs]), args.signature, real=False)
    elif args.kind == "onnx":
        import onnxruntime  # noqa: F401  (the library, before the baseline reading)

        from edgekit.engines.onnx import _ONNX_DTYPES, OnnxModel

        baseline = _status_mb("VmRSS")
        model = OnnxModel(args.path, num_threads=args.threads)
        inputs = model.session.get_inputs()
        shapes = [[d if isinstance(d, int) else None for d in i.shape] for i in inputs]
        model.run(_zeros([(i.name, _ONNX_DTYPES.get(i.type, np.float32), s) for i, s in zip(inputs, shapes)]))
    else:
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The model's own footprint, comparable with the artifacts' (which run on the CPU): a CUDA
        # context alone took digits' reference from 836 to 1,510 MB of host memory on an H200 machine.
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        import tensorflow as tf

        baseline = _status_mb("VmRSS")
        function = tf.saved_model.load(args.path).signatures[args.signature]
        _, specs = function.structured_input_signature
        feeds = _zeros([(n, s.dtype.as_numpy_dtype, s.shape.as_list()) for n, s in specs.items()])
        function(**{k: tf.constant(v) for k, v in feeds.items()})
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(baseline, 1)}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""TF.js artifacts of the digits CNN and MobileNetV2(weights=None): bytes, error, latency.

    python scripts/bench_tfjs.py [--json results/tfjs.json] [--tensorflowjs-converter PATH]

Converts each model with `--tfjs float32,float16,uint8`, then for every TF.js variant:
bytes (model.json + shards), relative L2 error and top-1 agreement against the SavedModel
as measured in TF.js (wasm backend, on the eval rows), and the median latency of one
inference (batch 1) in Node for the wasm and cpu backends, timed inside Node.

MobileNetV2 gets its BatchNorm statistics from a batch of smooth synthetic images
(scripts/mobilenet.py: nothing can be downloaded here), and is scored on 32 others.

--tensorflowjs-converter names a `tensorflowjs_converter` installed elsewhere (it cannot
share edgekit's environment: see README); its graph models of the same SavedModels are
then measured the same way, for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_cnn"


def measure(folder: Path, inputs: dict, reference: np.ndarray, output: str, runs: dict[str, int]) -> dict:
    from edgekit.agreement import compare_output
    from edgekit.engines.tfjs import TfjsModel

    row = {"bytes": sum(p.stat().st_size for p in folder.iterdir()),
           "shard_bytes": sum(p.stat().st_size for p in folder.glob("*.bin"))}
    one = {k: v[:1] for k, v in inputs.items()}
    for backend, count in runs.items():
        with TfjsModel(folder, backend) as model:
            if backend == "wasm":
                outputs = np.concatenate([model.run({k: v[i : i + 8] for k, v in inputs.items()})[output]
                                          for i in range(0, len(reference), 8)])
                check = compare_output(outputs, reference)
                row.update(rel_l2=check.rel_l2_error, max_abs=check.max_abs_error, top1_agreement=check.top1_agreement)
            cold, samples = model.time(one, warmup=3 if count > 10 else 1, runs=count)
            row[f"p50_ms_{backend}"] = round(float(np.median(samples)), 3)
            row[f"cold_ms_{backend}"] = round(cold, 3)
            row["runtime"] = model.runtime.split(" (")[0]
    print(f"  {folder.name}: {json.dumps(row)}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("results/tfjs.json"))
    parser.add_argument("--tensorflowjs-converter", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import tensorflow as tf
    from mobilenet import export_mobilenet_v2, smooth_images

    from edgekit import convert
    from edgekit.build.targets.tfjs import VARIANTS
    from edgekit.engines.tfjs import tfjs_version

    work = Path(tempfile.mkdtemp(prefix="edgekit-tfjs-"))
    images = smooth_images(96)
    mobilenet = export_mobilenet_v2(work / "mobilenet_v2", images[:64])
    with np.load(DIGITS / "eval.npz") as archive:
        digits_rows = archive["pixels"]
    models = {"digits_cnn": (DIGITS / "saved_model", digits_rows, {"wasm": 200, "cpu": 200}),
              "mobilenet_v2": (mobilenet, images[64:], {"wasm": 50, "cpu": 5})}
    results = {"machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "node": _node_version(),
                           "tfjs": tfjs_version()},
               "mobilenet_v2_data": "BatchNorm statistics from 64 smooth synthetic images, scored on 32 others"}
    for name, (saved_model, rows, runs) in models.items():
        print(name, flush=True)
        function = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
        input_name = next(iter(function.structured_input_signature[1]))
        reference = function(**{input_name: tf.constant(rows)})
        output = next(iter(reference))
        reference = reference[output].numpy()
        out = work / f"{name}_out"
        manifest = convert(saved_model, out, variants=("float32",), tfjs=VARIANTS)
        entry = {"tflite_float32_bytes": manifest.artifact("float32").bytes, "edgekit": {}}
        for variant in VARIANTS:
            entry["edgekit"][variant] = measure(out / f"tfjs_{variant}", {input_name: rows}, reference, output, runs)
            entry["edgekit"][variant]["convert_check_rel_l2"] = manifest.artifact(f"tfjs_{variant}").check.worst_rel_l2
        if args.tensorflowjs_converter:
            entry["tensorflowjs_converter"] = {}
            for variant, flags in (("float32", []), ("float16", ["--quantize_float16=*"]),
                                   ("uint8", ["--quantize_uint8=*"])):
                folder = work / f"{name}_tfjsconv_{variant}"
                subprocess.run([str(args.tensorflowjs_converter), "--input_format=tf_saved_model",
                                "--signature_name=serving_default", *flags, str(saved_model), str(folder)],
                               check=True, capture_output=True)
                entry["tensorflowjs_converter"][variant] = measure(folder, {input_name: rows}, reference, output, runs)
        results[name] = entry
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    shutil.rmtree(work, ignore_errors=True)


def _node_version() -> str | None:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None


if __name__ == "__main__":
    main()

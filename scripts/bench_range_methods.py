"""int8 under each range method and weight rounding, against min/max, int16x8 and dynamic range, held out.

    python scripts/bench_range_methods.py [--json results/range_methods.json] [--models onet,mobilenet_v2,digits]

It prints the markdown table docs/convert.md shows.

For each model, `edgekit convert --variants int8 --range-method M --weight-rounding nearest` for M
in minmax, percentile, mse and auto (which tries the three, and the best with its biases
corrected, and keeps the best on the calibration rows); auto with `--weight-rounding auto` (the
default: the best also with its weights rounded by error feedback, GPTQ); auto with some ops kept
float (--float-layers, O-Net only); plus the int16x8 and dynamic-range variants and TF.js uint8,
with nearest and with auto weight rounding, for comparison; then `edgekit bench` on held-out rows that calibration
never saw: per output, error against the output's spread (rms_over_std) or, for probabilities,
top-1 agreement over all rows and over confident ones; bytes; p50 latency at 1 thread; and the
seconds convert took (for auto, the extra over minmax is the range search).

Models: sample_models/mtcnn_onet (trained; 200 calibration rows, 300 held out),
MobileNetV2(weights=None) as scripts/mobilenet.py builds it, with a logits head (synthetic
images: 100 calibration, 100 held out), and sample_models/digits_cnn.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
METHODS = ("minmax", "percentile", "mse", "auto")
NEAREST = " nearest"  # a run's name ending in this: --weight-rounding nearest
# Mixed precision, the last resort: auto ranges with these ops kept float (--float-layers).
FLOAT_LAYERS = {"onet": {"float box head": "StatefulPartitionedCall:0", "float fully-connected": "FULLY_CONNECTED"}}
# The other quantized variants, for comparison: int16 activations, float activations, and TF.js's
# uint8 weights (affine per tensor; checked in Node.js, its p50 on TF.js's wasm backend).
OTHER_VARIANTS = ("int16x8", "dynamic", "tfjs_uint8")


def models(work: Path, names: list[str]) -> dict[str, tuple[Path, Path, Path]]:
    """name -> (saved_model, calibration.npz, held-out eval.npz)."""
    chosen = {}
    if "onet" in names:
        onet = ROOT / "sample_models" / "mtcnn_onet"
        chosen["onet"] = (onet / "saved_model", onet / "calibration.npz", onet / "eval.npz")
    if "mobilenet_v2" in names:
        from mobilenet import export_mobilenet_v2, smooth_images

        images = smooth_images(232, seed=1)
        # Logits, not softmax: a random-weight head's 1000-way softmax is near uniform, finer than
        # int8's 1/256 output step, so only the logits say how far the int8 network drifts.
        saved_model = export_mobilenet_v2(work / "mobilenet_v2", images[:32], classifier_activation=None)
        np.savez(work / "mobilenet_calibration.npz", keras_tensor=images[32:132])
        np.savez(work / "mobilenet_eval.npz", keras_tensor=images[132:])
        chosen["mobilenet_v2"] = (saved_model, work / "mobilenet_calibration.npz", work / "mobilenet_eval.npz")
    if "digits" in names:
        digits = ROOT / "sample_models" / "digits_cnn"
        chosen["digits"] = (digits / "saved_model", digits / "calibration.npz", digits / "eval.npz")
    return chosen


def figures(row) -> dict:
    outputs = {}
    for name, a in row.agreement.items():
        if a["confident_rows"] is not None:
            outputs[name] = {"top1_agreement": a["top1_agreement"], "confident_rows": a["confident_rows"],
                             "confident_top1_agreement": a["confident_top1_agreement"]}
        else:
            outputs[name] = {"rms_over_std": round(a["rms_over_std"], 4)}
    latency = row.latency_ms.get("1") or next(iter(row.latency_ms.values()))  # TF.js: keyed by backend
    return {"bytes": row.bytes, "p50_ms_1_thread": round(latency.p50_ms, 3), "outputs": outputs}


def measure(name: str, saved_model: Path, calibration: Path, eval_data: Path, work: Path) -> dict:
    from edgekit import bench, convert

    result = {}
    kept_float = FLOAT_LAYERS.get(name, {})
    runs = [*(m + NEAREST for m in METHODS), "auto", *kept_float,
            *(v + rounding for v in OTHER_VARIANTS for rounding in (NEAREST, ""))]
    for run in runs:
        method = run.removesuffix(NEAREST)
        out = work / f"{name}_{run.replace(' ', '_')}"
        started = time.perf_counter()
        variant = method if method in OTHER_VARIANTS else "int8"
        tfjs = method == "tfjs_uint8"
        manifest = convert(saved_model, out, variants=("float32",) if tfjs else (variant,),
                           tfjs=("uint8",) if tfjs else (), calibration=calibration,
                           range_method=method if method in METHODS else "auto",
                           weight_rounding="nearest" if run.endswith(NEAREST) else "auto",
                           float_layers=kept_float.get(method, ()),
                           # an output op kept float stays float only with float outputs
                           int8_io="float" if method in kept_float else "int8")
        seconds = time.perf_counter() - started
        artifact = manifest.artifact(variant)
        report = bench(out, eval_data=eval_data, runs=50, warmup=5, threads=(1,), memory=False,
                       artifact=artifact.name, tfjs_backends=("wasm",))
        row = next(r for r in report.artifacts if r.name == artifact.name)
        entry = {"convert_seconds": round(seconds, 1), "check": artifact.status, **figures(row)}
        if method == "int16x8":
            entry["float_ops"] = artifact.quantization.get("float_ops", {})
        if method in OTHER_VARIANTS:
            entry["weight_rounding"] = artifact.quantization.get("weight_rounding", {}).get("method", "nearest")
        else:
            ranges = artifact.quantization["ranges"]
            entry["method_kept"] = ranges["method"]
            if "float_layers" in ranges:
                entry["float_layers"] = {key: ranges["float_layers"][key] for key in ("asked", "byte_cost")}
        result[run] = entry
        print(f"{name:13s} {run:18s} {json.dumps(entry)}", flush=True)
    return result


LABELS = {"onet": "mtcnn_onet (300 rows)", "mobilenet_v2": "MobileNetV2 random weights, logits (100 rows)",
          "digits": "digits_cnn (539 rows)"}


def markdown(results: dict) -> str:
    """The table docs/convert.md shows, from the JSON."""
    lines = ["| model | artifact | held-out error (against spread; probabilities: top-1 agreement) | bytes "
             "| p50 1 thread | convert |", "| --- | --- | --- | --- | --- | --- |"]
    for model, runs in results["models"].items():
        for i, (name, run) in enumerate(runs.items()):
            errors = [f"{output} top-1 {o['top1_agreement']:.1%} (confident {o['confident_top1_agreement']:.0%} of "
                      f"{o['confident_rows']})" if "top1_agreement" in o else f"{output} {o['rms_over_std']:.1%}"
                      for output, o in run["outputs"].items()]
            method, rounding = name.removesuffix(NEAREST), "nearest" if name.endswith(NEAREST) else "auto"
            if method in ("dynamic", "tfjs_uint8"):
                label = f"{method}, rounding {rounding} (kept {run['weight_rounding']})"
            elif method == "int16x8":
                floating = ", ".join(f"{op} x{count}" for op, count in run["float_ops"].items())
                label = (f"int16x8 ({floating} float)" if floating else "int16x8") + \
                    f", rounding {rounding} (kept {run['weight_rounding']})"
            elif method == "auto":
                label = f"int8 auto, rounding {rounding} (kept {run['method_kept']})"
            elif method in METHODS:
                label = f"int8 {method}"
            else:
                kept = run["float_layers"]
                label = (f"int8 auto, {method} (`{','.join(kept['asked'])}`, {kept['byte_cost']:.2f}x bytes, "
                         "float outputs)")
            lines.append(f"| {LABELS.get(model, model) if i == 0 else ''} | {label} | {', '.join(errors)} "
                         f"| {run['bytes']:,} | {run['p50_ms_1_thread']:g} ms | {run['convert_seconds']} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("results/range_methods.json"))
    parser.add_argument("--models", default="onet,mobilenet_v2,digits")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgekit-ranges-"))
    results = {"machine": {"cpus": os.cpu_count()}, "held_out": "rows calibration never saw", "models": {}}
    for name, (saved_model, calibration, eval_data) in models(work, args.models.split(",")).items():
        results["models"][name] = measure(name, saved_model, calibration, eval_data, work)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

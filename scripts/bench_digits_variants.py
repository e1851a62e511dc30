"""Size and held-out accuracy of every TFLite variant of the sample digits CNN.

    python scripts/bench_digits_variants.py [--json results/digits_variants.json]

Converts sample_models/digits_cnn with its calibration set (edgekit's defaults: 200
calibration samples), then scores the SavedModel (TensorFlow) and each artifact (LiteRT)
on the labelled eval.npz, which calibration never saw.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_cnn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("results/digits_variants.json"))
    args = parser.parse_args()

    import tensorflow as tf

    from edgekit import convert
    from edgekit.runtime import TFLiteModel

    with np.load(DIGITS / "eval.npz") as archive:
        pixels, labels = archive["pixels"], archive["y"]
    out = Path(tempfile.mkdtemp(prefix="edgekit-digits-")) / "out"
    manifest = convert(DIGITS / "saved_model", out, calibration=DIGITS / "calibration.npz", tfjs=())

    serving = tf.saved_model.load(str(DIGITS / "saved_model")).signatures["serving_default"]
    reference = float(np.mean(np.argmax(serving(pixels=tf.constant(pixels))["probs"].numpy(), 1) == labels))
    float32_bytes = manifest.artifact("float32").bytes
    rows = {}
    for artifact in manifest.artifacts:
        probs = TFLiteModel(out / artifact.file).run({"pixels": pixels})["probs"]
        accuracy = float(np.mean(np.argmax(probs, 1) == labels))
        rows[artifact.variant] = {
            "bytes": artifact.bytes,
            "ratio_to_float32": round(artifact.bytes / float32_bytes, 3),
            "accuracy": round(accuracy, 4),
            "accuracy_drop_vs_savedmodel_points": round(100 * (reference - accuracy), 2),
            "check_rel_l2": artifact.check.worst_rel_l2,
        }
    result = {"eval_rows": int(len(labels)), "calibration_samples": manifest.calibration["samples"],
              "savedmodel_accuracy": round(reference, 4), "variants": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"SavedModel accuracy {reference:.4f} on {len(labels)} held-out rows")
    print(f"{'variant':<9}{'bytes':>8}{'ratio':>8}{'accuracy':>10}{'drop (pts)':>12}")
    for variant, row in rows.items():
        print(f"{variant:<9}{row['bytes']:>8}{row['ratio_to_float32']:>8.2f}{row['accuracy']:>10.4f}"
              f"{row['accuracy_drop_vs_savedmodel_points']:>12.2f}")


if __name__ == "__main__":
    main()

"""How far an artifact's outputs are from the original model's: pure numpy, device-safe."""
from __future__ import annotations

import numpy as np

from edgekit.manifest import OutputCheck


def is_classifier_output(array: np.ndarray) -> bool:
    """[batch, classes] with several classes: top-1 agreement means something there."""
    return array.ndim == 2 and array.shape[1] > 1


def compare_output(actual: np.ndarray, reference: np.ndarray) -> OutputCheck:
    """Errors of `actual` against `reference`. When `actual` holds NaN or Inf where the
    reference is finite, the errors are None: no number would be honest (and JSON has none)."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        raise ValueError(f"shape {actual.shape} differs from the reference's {reference.shape}")
    if not np.all(np.isfinite(actual[np.isfinite(reference)])):
        return OutputCheck(max_abs_error=None, rel_l2_error=None, top1_agreement=None)
    diff = actual - reference
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    ref_norm = float(np.linalg.norm(reference))
    diff_norm = float(np.linalg.norm(diff))
    if ref_norm > 0:
        rel_l2 = diff_norm / ref_norm
    else:
        rel_l2 = 0.0 if diff_norm == 0 else float("inf")
    top1 = None
    if is_classifier_output(reference):
        top1 = float(np.mean(np.argmax(actual, axis=1) == np.argmax(reference, axis=1)))
    return OutputCheck(max_abs_error=max_abs, rel_l2_error=rel_l2, top1_agreement=top1)


def spread_errors(actual: np.ndarray, reference: np.ndarray) -> dict[str, float | None]:
    """Errors measured against the reference's spread (its standard deviation), so a
    near-constant output such as a random-weight softmax cannot look perfect.

    rms_over_std = rms(actual - reference) / std(reference)
    sqnr_db      = 10 log10(sum((reference - mean)^2) / sum((actual - reference)^2))
    Both are None when they are undefined (identical outputs, or a constant reference).
    """
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((actual - reference) ** 2))
    signal = float(np.sum((reference - reference.mean()) ** 2))
    rms_over_std = None if signal == 0 else float(np.sqrt(noise / signal))
    sqnr_db = None if noise == 0 or signal == 0 else float(10 * np.log10(signal / noise))
    return {"rms_over_std": rms_over_std, "sqnr_db": sqnr_db}


def classification_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(labels).reshape(-1)))


def regression_errors(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    diff = np.asarray(predictions, np.float64).reshape(len(targets), -1) - np.asarray(
        targets, np.float64
    ).reshape(len(targets), -1)
    return {"mae": float(np.mean(np.abs(diff))), "rmse": float(np.sqrt(np.mean(diff**2)))}

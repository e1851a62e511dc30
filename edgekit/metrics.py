"""How far an artifact's outputs are from the original model's: pure numpy, device-safe."""
from __future__ import annotations

import numpy as np

from edgekit.manifest import OutputCheck


def is_classifier_output(array: np.ndarray) -> bool:
    """[batch, classes] with several classes: top-1 agreement means something there."""
    return array.ndim == 2 and array.shape[1] > 1


def compare_output(actual: np.ndarray, reference: np.ndarray) -> OutputCheck:
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        raise ValueError(f"shape {actual.shape} differs from the reference's {reference.shape}")
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

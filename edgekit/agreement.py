"""How far an artifact's outputs are from the original model's, and whether that is close
enough to ship: pure numpy, device-safe."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.manifest import OutputCheck

# A decision is confident when the reference's top class leads the runner-up by at least this
# much probability (0.7 against 0.2, say). Quantization noise flips close calls; flipping one of
# these means the artifact decides differently, so it fails its check.
CONFIDENT_MARGIN = 0.5
# An rms error within this many float32 steps of the reference's values is float32's own
# rounding (an output near 1e6 moves in steps of 0.0625), never a failure against the spread.
FLOAT32_NOISE_ULPS = 8.0


@dataclass(frozen=True)
class Tolerance:
    """What a variant's check accepts on every output (relative L2 error) and, on outputs that
    are not probabilities, error relative to the output's spread: relative L2 alone lets a large
    offset (box coordinates, say) hide an error that is large against how much the output varies."""

    rel_l2: float
    spread: float


def is_classifier_output(array: np.ndarray) -> bool:
    """[batch, classes] with several classes: top-1 agreement means something there."""
    return array.ndim == 2 and array.shape[1] > 1


def is_probability_output(array: np.ndarray) -> bool:
    """[batch, classes] rows that are non-negative and sum to 1: a softmax head, whose top
    class is a decision. Logits and embeddings cannot be told apart, so they are judged by spread."""
    return bool(is_classifier_output(array) and array.shape[0] and np.all(array >= -1e-6)
                and np.allclose(array.sum(axis=1), 1.0, atol=1e-3))


def compare_output(actual: np.ndarray, reference: np.ndarray) -> OutputCheck:
    """Errors of `actual` against `reference`. When `actual` holds NaN or Inf where the
    reference is finite, the errors are None: no number would be honest (and JSON has none).
    An integer or bool output is compared value by value (`exact_match`), not by its spread."""
    given, expected = np.asarray(actual), np.asarray(reference)
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
    if expected.dtype.kind in "biu":
        exact = float(np.mean(given == expected)) if given.size else 1.0
        return OutputCheck(max_abs_error=max_abs, rel_l2_error=rel_l2, top1_agreement=None, exact_match=exact)
    top1 = confident_rows = confident_top1 = None
    if is_classifier_output(reference):
        agrees = np.argmax(actual, axis=1) == np.argmax(reference, axis=1)
        top1 = float(np.mean(agrees))
        if is_probability_output(reference):
            ranked = np.sort(reference, axis=1)
            confident = ranked[:, -1] - ranked[:, -2] >= CONFIDENT_MARGIN
            confident_rows = int(np.sum(confident))
            confident_top1 = float(np.mean(agrees[confident])) if confident_rows else None
    steps = np.spacing(np.abs(reference).astype(np.float32)).astype(np.float64)
    step_rms = float(np.sqrt(np.mean(steps**2))) if steps.size else 0.0
    ulps = round(float(np.sqrt(np.mean(diff**2))) / step_rms, 2) if step_rms > 0 else None
    return OutputCheck(max_abs_error=max_abs, rel_l2_error=rel_l2, top1_agreement=top1,
                       rms_over_std=spread_errors(actual, reference)["rms_over_std"],
                       confident_rows=confident_rows, confident_top1_agreement=confident_top1, float32_ulps=ulps)


def judge(per_output: dict[str, OutputCheck], tolerance: Tolerance, label: str) -> str | None:
    """Why the outputs fail `tolerance`, or None when the artifact is safe to ship."""
    broken = sorted(name for name, o in per_output.items() if o.rel_l2_error is None)
    if broken:
        return f"output {', '.join(broken)} holds NaN or infinite values where the SavedModel's does not"
    reasons = []
    for name, o in sorted(per_output.items()):
        where = f"output {name}: " if len(per_output) > 1 else ""
        if o.exact_match is not None:  # decisions: as many may flip as the variant's spread tolerance
            if 1 - o.exact_match > tolerance.spread:
                reasons.append(f"{where}{1 - o.exact_match:.1%} of its integer values differ from the SavedModel's, "
                               f"over the {label} tolerance {tolerance.spread:.0%}")
            continue
        if o.rel_l2_error > tolerance.rel_l2:
            reasons.append(f"{where}relative L2 error {o.rel_l2_error:.4g} exceeds the {label} tolerance "
                           f"{tolerance.rel_l2:g}")
        if o.confident_rows is not None:
            if o.confident_rows and o.confident_top1_agreement < 1:
                flipped = round((1 - o.confident_top1_agreement) * o.confident_rows)
                reasons.append(f"{where}{flipped} of {o.confident_rows} confident decisions flipped (rows where "
                               f"the SavedModel's top class led by at least {CONFIDENT_MARGIN:g})")
        elif o.rms_over_std is not None and o.rms_over_std > tolerance.spread and not (
                o.float32_ulps is not None and o.float32_ulps <= FLOAT32_NOISE_ULPS):
            reasons.append(f"{where}error is {o.rms_over_std:.1%} of the output's spread (rms error / std), "
                           f"over the {label} tolerance {tolerance.spread:.0%}")
    return "; ".join(reasons) or None


# A figure between these fractions of its limit is a close call: a few rows more or fewer could turn it.
CLOSE_CALL = (2 / 3, 3 / 2)


def close_call(per_output: dict[str, OutputCheck], tolerance: Tolerance) -> bool:
    """Whether the verdict on these outputs rests on a figure near its limit, so that more rows
    should decide it. Not when one is clearly over (or holds NaN, or a confident decision flipped:
    no row count undoes those), nor when every figure is clearly within."""
    low, high = CLOSE_CALL
    ratios = []
    for o in per_output.values():
        if o.rel_l2_error is None or (o.confident_rows and o.confident_top1_agreement < 1):
            return False
        if o.exact_match is not None:
            ratios.append((1 - o.exact_match) / tolerance.spread)
            continue
        ratios.append(o.rel_l2_error / tolerance.rel_l2)
        if o.confident_rows is None and o.rms_over_std is not None and not (
                o.float32_ulps is not None and o.float32_ulps <= FLOAT32_NOISE_ULPS):
            ratios.append(o.rms_over_std / tolerance.spread)
    return max(ratios, default=0.0) <= high and any(ratio >= low for ratio in ratios)


def spread_errors(actual: np.ndarray, reference: np.ndarray) -> dict[str, float | None]:
    """Errors measured against the reference's spread, so a near-constant output such as a
    random-weight softmax cannot look perfect, and an offset cannot hide an error.

    The spread is how much each output value varies over the rows (its deviation from its
    mean over the batch axis), so the columns of a box [x, y, w, h] are each measured on
    their own scale:
    rms_over_std = sqrt(sum((actual - reference)^2) / sum((reference - row mean)^2))
    sqnr_db      = 10 log10(sum((reference - row mean)^2) / sum((actual - reference)^2))
    Both are None when they are undefined (identical outputs, or a reference that does not vary).
    """
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((actual - reference) ** 2))
    centre = reference.mean(axis=0, keepdims=True) if reference.ndim else reference.mean()
    signal = float(np.sum((reference - centre) ** 2))
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

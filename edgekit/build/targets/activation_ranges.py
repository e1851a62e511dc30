"""Per-tensor int8 ranges chosen from the calibration data, not only its min and max.

TFLiteConverter calibrates with plain min/max: one outlier activation widens a tensor's range
and coarsens its int8 step for every other value. Here the calibrated (still float) model runs
once over the calibration rows to histogram every activation it recorded a range for, and each
method proposes a range per tensor:

- `minmax`: TFLite's own;
- `percentile`: the 0.01th and 99.99th percentiles, so rare outliers clip;
- `mse`: the range that minimises the expected squared error of clipping plus rounding over
  the histogram, searched per tensor (what TensorRT and ONNX Runtime offer beside min/max).

The signature's inputs keep their min/max range: clipping them would clip real data.
The int8 target quantizes under each method and keeps the candidate closest to the float
model on all the calibration rows (tflite.py); under `auto`, the best one with its biases
corrected (bias_correction.py) is one more candidate, and (unless --weight-rounding nearest)
the best one with its weights rounded by error feedback (weight_rounding.py), corrected too
under `auto`, another. convert's check then judges the one kept.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from edgekit.agreement import Tolerance, compare_output, judge
from edgekit.build.data import spread_rows
from edgekit.build.targets import bias_correction
from edgekit.build.targets.int8_layers import (
    DIAGNOSIS_ROWS,
    float_layer_names,
    keeping_all_tensors,
    layer_errors,
    model_object,
    op_precision,
    unknown_layers_error,
)
from edgekit.errors import EdgekitError

METHODS = ("minmax", "percentile", "mse")
CHOICES = ("auto", *METHODS)  # auto: try every method, keep the best on the check
BINS = 2048
TAIL = 1e-4  # percentile: the share of values clipped at each end (99.99th percentile)
SCALES = np.linspace(0.25, 1.0, 31)  # mse: the fractions of each end of the min/max range tried
BIAS_MIN_ROWS = 32  # fewer calibration rows: a channel's mean error is mostly those rows' own
BIAS_MARGIN = 0.01  # how much better (relative worst error) a bias-corrected candidate must score
BIAS_MAX_ROWS = 128  # rows each corrected op's means are taken on (one model run per op: it adds up)


@dataclass
class Histogram:
    low: float  # the min/max range widened to hold 0, as int8 ranges must
    high: float
    counts: np.ndarray  # BINS counts over [low, high]

    def centres(self) -> np.ndarray:
        edges = np.linspace(self.low, self.high, BINS + 1)
        return (edges[:-1] + edges[1:]) / 2


def recorded_ranges(calibrated: bytes) -> dict[int, tuple[float, float]]:
    """The min/max range the calibrator recorded for each tensor of the model's first subgraph
    (the signature's, for the models convert takes; tensors in other subgraphs keep min/max)."""
    model = model_object(calibrated)
    ranges = {}
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        quantization = tensor.quantization
        if quantization is not None and quantization.min is not None and len(quantization.min) == 1:
            ranges[index] = (float(quantization.min[0]), float(quantization.max[0]))
    return ranges


def chunks(rows: dict[str, np.ndarray], batch: int):
    """`rows` in parts of `batch` rows, the way convert's check feeds a model."""
    count = len(next(iter(rows.values())))
    for start in range(0, count, batch):
        yield {name: array[start:start + batch] for name, array in rows.items()}


def join(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Outputs per part, joined: rows concatenated, or one value per part stacked (a model
    whose output is a scalar, a sum over its batch)."""
    return {name: np.concatenate(values) if all(np.ndim(v) for v in values) else np.stack(values)
            for name, values in parts.items()}


def profile(calibrated: bytes, rows: dict[str, np.ndarray], signature: str, batch: int,
            histogram_batch: int | None = None) -> tuple[dict[int, Histogram], dict[str, np.ndarray]]:
    """Run the calibrated (float) model over `rows`: a histogram of each activation that has a
    recorded range (`histogram_batch` rows at a time, since every intermediate tensor is kept),
    and the model's outputs, `batch` rows at a time (the candidates are scored the same way, so
    a graph that mixes rows compares like with like). Tensors the interpreter cannot hand back
    are left out (they keep min/max)."""
    ranges = recorded_ranges(calibrated)
    interpreter = keeping_all_tensors(calibrated)
    runner = interpreter.get_signature_runner(signature)
    details = runner.get_input_details()
    inputs = {detail["index"] for detail in details.values()}
    histograms = {index: Histogram(min(low, 0.0), max(high, 0.0), np.zeros(BINS, np.int64))
                  for index, (low, high) in ranges.items() if index not in inputs and high > low}
    histogram_batch = histogram_batch or batch
    outputs: dict[str, list[np.ndarray]] = {}
    for part in chunks(rows, histogram_batch):
        results = runner(**{name: np.asarray(part[name], detail["dtype"]) for name, detail in details.items()})
        for name, value in results.items():
            outputs.setdefault(name, []).append(np.array(value))
        for index, histogram in list(histograms.items()):
            try:
                values = np.asarray(interpreter.get_tensor(index), np.float64).ravel()
            except ValueError:
                del histograms[index]
                continue
            scaled = (values - histogram.low) * (BINS / (histogram.high - histogram.low))
            bins = np.clip(scaled.astype(np.int64), 0, BINS - 1)
            histogram.counts += np.bincount(bins, minlength=BINS)
    if histogram_batch != batch:
        return histograms, run_in_chunks(calibrated, rows, signature, batch)
    return histograms, join(outputs)


def run_in_chunks(model: bytes, rows: dict[str, np.ndarray], signature: str, batch: int) -> dict[str, np.ndarray]:
    """The model's outputs over `rows`, fed `batch` rows at a time as convert's check does."""
    from edgekit.runtime.tflite import TFLiteModel

    runtime = TFLiteModel(model)
    parts: dict[str, list[np.ndarray]] = {}
    for part in chunks(rows, batch):
        for name, value in runtime.run(part, signature).items():
            parts.setdefault(name, []).append(np.array(value))
    return join(parts)


def choose_ranges(histograms: dict[int, Histogram], method: str) -> dict[int, tuple[float, float]]:
    """Each tensor's range under `method` (minmax: none changed)."""
    if method == "minmax":
        return {}
    choose = {"percentile": _percentile_range, "mse": _mse_range}[method]
    return {index: choose(histogram) for index, histogram in histograms.items() if histogram.counts.sum()}


def _percentile_range(histogram: Histogram) -> tuple[float, float]:
    edges = np.linspace(histogram.low, histogram.high, BINS + 1)  # outer edges: values in a bin stay inside
    cumulative = np.cumsum(histogram.counts) / histogram.counts.sum()
    low = edges[np.searchsorted(cumulative, TAIL)] if histogram.low < 0 else 0.0
    high = edges[min(np.searchsorted(cumulative, 1 - TAIL), BINS - 1) + 1] if histogram.high > 0 else 0.0
    return float(min(low, 0.0)), float(max(high, 0.0))


def _mse_range(histogram: Histogram) -> tuple[float, float]:
    """The (low, high) among fractions of the min/max ends that minimises the expected squared
    error of int8 quantization (255 steps, clipping outside) over the histogram."""
    centres, counts = histogram.centres(), histogram.counts.astype(np.float64)
    lows = histogram.low * SCALES if histogram.low < 0 else np.zeros(1)
    highs = histogram.high * SCALES if histogram.high > 0 else np.zeros(1)
    low, high = (grid[..., None] for grid in np.meshgrid(lows, highs, indexing="ij"))
    step = (high - low) / 255
    clipped = np.clip(centres, low, high)
    error = ((centres - (np.round((clipped - low) / step) * step + low)) ** 2) @ counts
    best = np.unravel_index(np.argmin(error), error.shape)
    return float(lows[best[0]]), float(highs[best[1]])


def with_ranges(calibrated: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """The calibrated model with `ranges` written over the ranges it recorded."""
    if not ranges:
        return calibrated
    from tensorflow.lite.tools import flatbuffer_utils

    model = model_object(calibrated)
    tensors = model.subgraphs[0].tensors
    for index, (low, high) in ranges.items():
        tensors[index].quantization.min = [low]
        tensors[index].quantization.max = [high]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


class RangePicker:
    """Handed the calibrated model and the converter's own quantize step (see
    tflite.quantizing_with): quantizes under each method, runs each candidate in LiteRT on
    every calibration row against the float model's outputs (more rows than convert's check,
    so the choice is steadier), and returns the best. `record` says what it did, for the
    manifest; it stays None if the converter never called it. With `diagnose`, or when even
    the best candidate breaks a check rule, the record also holds its per-layer errors. Ops
    named in `float_layers` stay float in every candidate; the record then says what that
    costs in bytes and buys in error against the same ranges all in int8."""

    def __init__(self, methods: tuple[str, ...], rows: dict[str, np.ndarray], signature: str, batch: int,
                 tolerance: Tolerance, diagnose: bool = False, histogram_batch: int | None = None,
                 float_layers: tuple[str, ...] = (), rounding: bool = False):
        self.methods, self.rows, self.signature, self.batch, self.tolerance = methods, rows, signature, batch, tolerance
        self.histogram_batch = histogram_batch or batch
        self.diagnose, self.float_layers, self.rounding = diagnose, float_layers, rounding
        self.record: dict | None = None
        self.reason: str | None = None  # why the kept candidate breaks a check rule on the calibration rows
        self.refusal: EdgekitError | None = None  # --float-layers named what the model lacks
        self.expected: dict[str, np.ndarray] | None = None  # the float model's outputs, once profiled
        # The calibrated float model and the int8 model kept: what a diagnosis after the check compares
        self.calibrated: bytes | None = None
        self.kept: bytes | None = None

    def __call__(self, calibrated: bytes, quantize: Callable[..., bytes]) -> bytes:
        """`quantize(model, **denylists)` is the converter's own quantize step."""
        if not self.float_layers:
            return self._pick(calibrated, quantize)[0]
        nodes, ops, unknown = float_layer_names(calibrated, self.float_layers)
        if unknown:
            self.refusal = unknown_layers_error(unknown, calibrated)
            return quantize(calibrated)
        model, ranged = self._pick(calibrated, partial(quantize, denylisted_nodes=nodes, denylisted_ops=ops))
        all_int8 = quantize(ranged)
        kept = self.record["method"].split("+")  # compared like with like: all-int8 rounded and corrected too
        if "gptq" in kept:
            all_int8 = self._rounded(ranged, all_int8)[0].model
        if "bias" in kept:
            all_int8 = self._bias_corrected(ranged, all_int8)[0]
        self._add_float_cost(calibrated, model, all_int8, nodes, ops)
        return model

    def _pick(self, calibrated: bytes, quantize: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
        """The kept int8 model, and the calibrated model with the ranges it was quantized under."""
        model, ranged = self._candidates(calibrated, quantize)
        self.calibrated, self.kept = calibrated, model
        return model, ranged

    def diagnose_missed_check(self) -> None:
        """Convert's check failed the model kept: add its per-layer errors to the record, unless
        they are there already (asked for, or it already failed on the calibration rows)."""
        if self.record is not None and self.kept is not None and not {"layers", "layers_error"} & set(self.record):
            self._add_layers(self.calibrated, self.kept)

    def _candidates(self, calibrated: bytes, quantize: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
        if self.methods == ("minmax",) and not self.rounding:
            self.record = {"method": "minmax"}
            model = quantize(calibrated)
            if self.diagnose:
                self._add_layers(calibrated, model)
            return model, calibrated
        try:
            histograms, expected = profile(calibrated, self.rows, self.signature, self.batch, self.histogram_batch)
            self.expected = expected
        except (RuntimeError, ValueError, KeyError, EdgekitError) as exc:  # LiteRT cannot run the calibrated model
            self.record = {"method": "minmax", "note": f"TFLite's own: the calibrated model could not be profiled "
                                                       f"({first_line(exc)})"}
            return quantize(calibrated), calibrated
        candidates, ranged = [], []
        for method in self.methods:
            ranged.append(with_ranges(calibrated, choose_ranges(histograms, method)))
            model = quantize(ranged[-1])
            candidates.append((method, model, self._score(model, expected)))
        best = plain = min(range(len(candidates)), key=lambda i: (candidates[i][2]["loss"], i))
        notes = []
        if self.methods == METHODS:  # auto: the best ranges, with their biases corrected, as one more candidate
            best = self._try(candidates, ranged, best, plain, expected, notes, rounding=False)
        if self.rounding:  # and with weights rounded by error feedback (then corrected, under auto)
            best = self._try(candidates, ranged, best, plain, expected, notes, rounding=True)
        self.record = {
            "method": candidates[best][0],
            "tensors": len(histograms),
            "scored_on_rows": len(next(iter(self.rows.values()))),
            "candidates": [{"method": method, "bytes": len(model), **{k: v for k, v in score.items() if k != "loss"}}
                           for method, model, score in candidates],
        }
        if notes:
            self.record["note"] = "; ".join(notes)
        self.reason = candidates[best][2].get("reason")
        if self.diagnose or not candidates[best][2].get("passes"):
            self._add_layers(calibrated, candidates[best][1])
        return candidates[best][1], ranged[best]

    def _try(self, candidates: list, ranged: list, best: int, plain: int, expected: dict[str, np.ndarray],
             notes: list[str], rounding: bool) -> int:
        """Add the best plain candidate (`plain`) with its biases corrected, or with its weights
        rounded by error feedback, as one more candidate; the index of the best one after it.
        Corrected biases must be clearly better on all the rows (_clearly_better). Rounded weights,
        fitted on most of the rows, must beat `plain` on the rows held out of their fit, before any
        bias is fitted (on all rows, it would see those rows too); when the best so far corrects
        `plain`'s biases, the kept rounding then gets its biases corrected the same way."""
        method, model, _ = candidates[plain]
        if not rounding:
            model, count, note = self._bias_corrected(ranged[plain], model)
            if not count:
                notes.append(note)
                return best
            candidates.append((f"{method}+bias", model, {**self._score(model, expected), "ops_corrected": count}))
            ranged.append(ranged[plain])
            return len(candidates) - 1 if _clearly_better(candidates[-1][2], candidates[best][2]) else best
        found, note = self._rounded(ranged[plain], model)
        if note:
            notes.append(note)
        if not found.changed:
            return best
        candidates.append((f"{method}+gptq", found.model, {**self._score(found.model, expected), **found.record()}))
        ranged.append(ranged[plain])
        if not self._better_held_out(candidates, ranged[plain], len(candidates) - 1, plain):
            return best
        if best == plain:
            return len(candidates) - 1
        model, count, _ = self._bias_corrected(ranged[plain], found.model)  # as the best so far was
        if not count:
            return len(candidates) - 1
        candidates.append((f"{method}+gptq+bias", model,
                           {**self._score(model, expected), **found.record(), "ops_corrected": count}))
        ranged.append(ranged[plain])
        return len(candidates) - 1

    def _better_held_out(self, candidates: list, floating: bytes, rounded: int, plain: int) -> bool:
        """Whether candidate `rounded` (`plain` with its weights rounded by error feedback) is
        clearly closer to the float model than `plain` on the calibration rows held out of its fit
        (weight_rounding.split_rows), and breaks no check rule `plain` keeps; its entry records both."""
        from edgekit.build.targets import weight_rounding

        held = weight_rounding.split_rows(self.rows)[1]
        entry = candidates[rounded][2]
        try:
            expected = run_in_chunks(floating, held, self.signature, self.batch)
            errors = [worst_error(run_in_chunks(candidates[i][1], held, self.signature, self.batch), expected)
                      for i in (rounded, plain)]
        except (RuntimeError, ValueError, KeyError, EdgekitError):
            return False
        entry["held_out"] = {"rows": len(next(iter(held.values()))), "worst_error": figure(errors[0]),
                             "against": candidates[plain][0], "its_worst_error": figure(errors[1])}
        passes = entry.get("passes") or not candidates[plain][2].get("passes")
        return bool(passes) and errors[0] < errors[1] * (1 - BIAS_MARGIN)

    def _rounded(self, ranged: bytes, model: bytes):
        """weight_rounding.Fit: `model` with its weights rounded by error feedback against the
        calibrated float model on the rows not held out; and a note when it changed nothing."""
        from edgekit.build.targets import weight_rounding

        reason = weight_rounding.too_few_rows(self.rows)
        if reason:
            return weight_rounding.Fit(model, 0, {}), reason
        try:
            fit = weight_rounding.split_rows(self.rows)[0]
            found = weight_rounding.rounded(model, ranged, chunks(fit, self.histogram_batch), self.signature)
        except Exception as exc:  # noqa: BLE001 - an optional refinement: whatever it meets, never costs the artifact
            return weight_rounding.Fit(model, 0, {}), f"error-feedback rounding skipped: {first_line(exc)}"
        return found, None if found.changed else found.nothing_changed()

    def _bias_corrected(self, ranged: bytes, model: bytes) -> tuple[bytes, int, str | None]:
        """`model` with its biases corrected (bias_correction.py), how many ops were, and why
        none were when that is so."""
        rows = len(next(iter(self.rows.values())))
        if rows < BIAS_MIN_ROWS:
            return model, 0, (f"bias correction skipped: {rows} calibration rows, and a channel's mean error "
                              f"needs at least {BIAS_MIN_ROWS} to be more than those rows' own")
        try:
            model, count = bias_correction.corrected(
                ranged, model, list(chunks(spread_rows(self.rows, BIAS_MAX_ROWS), self.histogram_batch)),
                self.signature)
        except (RuntimeError, ValueError, KeyError, IndexError, EdgekitError) as exc:  # never costs the artifact
            return model, 0, f"bias correction skipped: {first_line(exc)}"
        if not count:
            return model, 0, ("bias correction found nothing to correct: no convolution or fully-connected op "
                              "without a fused activation has an int32 bias of its own")
        return model, count, None

    def _add_float_cost(self, calibrated: bytes, model: bytes, all_int8: bytes, nodes: set[str],
                        ops: set[str]) -> None:
        """What keeping --float-layers in float costs and buys: bytes, ops left in int8, and
        the worst output's error on the calibration rows, against the same ranges with every
        op in int8."""
        record = {"asked": list(self.float_layers), "ops_kept_float": sorted(ops), "tensors_kept_float": sorted(nodes),
                  **op_precision(model),
                  "bytes_added": len(model) - len(all_int8)}  # the target adds the artifact's own bytes
        if model == all_int8:
            record["note"] = "changed nothing: TFLite runs these ops in float anyway"
        try:  # the float model's outputs, unless profiling already ran it (minmax alone does not)
            expected = self.expected or run_in_chunks(calibrated, self.rows, self.signature, self.batch)
        except (RuntimeError, ValueError, KeyError, EdgekitError) as exc:
            record["error"] = first_line(exc)
        else:
            for key, candidate in (("worst_error", model), ("worst_error_all_int8", all_int8)):
                record[key] = self._score(candidate, expected).get("worst_error")
        self.record["float_layers"] = record

    def _add_layers(self, calibrated: bytes, quantized: bytes) -> None:
        add_layer_errors(self.record, calibrated, quantized, self.rows, self.signature, self.histogram_batch)

    def _score(self, model: bytes, expected: dict[str, np.ndarray]) -> dict:
        """How a candidate does against the float model: failing the check's rules ranks after
        passing, then the worst output's error (against its spread, or relative L2 for
        probabilities)."""
        try:
            found = run_in_chunks(model, self.rows, self.signature, self.batch)
            per_output = {name: compare_output(value, expected[name]) for name, value in found.items()}
        except (RuntimeError, ValueError, KeyError, EdgekitError) as exc:  # a candidate LiteRT cannot run loses
            return {"error": str(exc), "loss": (True, float("inf"))}
        worst = _worst(per_output)
        reason = judge(per_output, self.tolerance, "int8")
        score = {"passes": reason is None, "worst_error": worst, "loss": (reason is not None, worst)}
        return score if reason is None else {**score, "reason": reason}


def add_layer_errors(record: dict, calibrated: bytes, quantized: bytes, rows: dict[str, np.ndarray], signature: str,
                     batch: int) -> None:
    """The integer model's per-layer errors against the calibrated float model (int8_layers.layer_errors)
    on the first DIAGNOSIS_ROWS rows, into `record`; a diagnosis that cannot run says why there, and
    never costs the artifact."""
    try:
        first = {name: array[:DIAGNOSIS_ROWS] for name, array in rows.items()}
        found = layer_errors(calibrated, quantized, chunks(first, batch), signature)
    except (RuntimeError, ValueError, KeyError) as exc:
        record["layers_error"] = first_line(exc)
        return
    record["layers"] = found["layers"]
    if found["unmatched"]:
        record["layers_unmatched"] = found["unmatched"]


def first_line(exc: Exception) -> str:
    """What a failed step says, short enough for the manifest (LiteRT's messages run long)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def worst_error(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """The worst output's error of `found` against the float model's `expected` outputs (see _error)."""
    return _worst({name: compare_output(value, expected[name]) for name, value in found.items()})


def figure(value: float) -> float:
    """An error for the manifest: four significant digits (2.1e-05 stays 2.1e-05)."""
    return float(f"{value:.4g}")


def _worst(per_output: dict) -> float:
    return float(max((_error(check) for check in per_output.values()), default=0.0))


def _clearly_better(candidate: dict, than: dict) -> bool:
    """A derived candidate (biases corrected, weights rounded by error feedback) replaces the
    best so far only when it passes where that fails, or has a smaller worst error by more than
    BIAS_MARGIN (not a tie on the rows it was fitted to)."""
    if candidate.get("passes") != than.get("passes"):
        return bool(candidate.get("passes"))
    return candidate.get("worst_error", np.inf) < than.get("worst_error", np.inf) * (1 - BIAS_MARGIN)


def _error(check) -> float:
    """One output's error: against its spread, or relative L2 for probabilities (whose
    decisions the check judges apart)."""
    value = check.rel_l2_error if check.confident_rows is not None or check.rms_over_std is None else check.rms_over_std
    return float("inf") if value is None else value

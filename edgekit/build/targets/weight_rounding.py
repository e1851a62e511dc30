"""int8 weights rounded with error feedback (GPTQ: Frantar et al., 2022) instead of each to its
nearest step.

Rounding every weight to its nearest int8 step is best weight by weight, not for the layer: a
channel's rounding errors add up over the inputs they multiply. Here each convolution's and
fully-connected op's weights are rounded one input at a time, and the error each rounding made
is pushed onto the weights not yet rounded, in proportion to how the layer's inputs on the
calibration rows correlate (their second moments, X^T X). The converter's int8 steps
(per-channel scales) stay as they are, so only the stored integers change: same bytes, same
kernels, same speed. It serves every variant with int8 weights (int8, int16x8, dynamic-range),
and, on its own affine grid, TF.js's uint8 (tfjs/rounding.py); where activations stay near
float (int16x8, dynamic, TF.js) the weights are most of the error.

It is fitted on three quarters of the calibration rows and kept only where it does better than
nearest rounding on the quarter held out (split_rows): `choose` for dynamic and int16x8, the
int8 range picker among its candidates (activation_ranges.RangePicker).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from edgekit.build.data import distinct_rows
from edgekit.build.targets.activation_ranges import (
    chunks,
    figure,
    first_line,
    run_in_chunks,
    worst_error,
)
from edgekit.build.targets.int8_layers import kept_tensor_runs, model_object, op_type

ROUNDED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
MIN_ROWS = 32  # fewer rows to fit on: the inputs' correlations are mostly those rows' own
MIN_CALIBRATION_ROWS = 42  # calibration rows that leave MIN_ROWS to fit on once a quarter is held out
FIT_ROWS = 256  # rows the correlations are taken on (one run of the float model each)
SCORE_ROWS = 64  # rows held out of the fit to compare nearest and error-feedback rounding on (a quarter, at most)
MAX_INPUTS = 4608  # a layer's inputs (3x3x512); wider ones keep nearest: their moments take d^2 memory, d^3 time
MARGIN = 0.01  # how much better (worst output error) error feedback must score to be kept
DAMPING = 0.01  # added to the correlations' diagonal, as a share of its mean (GPTQ's own)
INT8_LIMIT = 127  # TFLite's int8 weights are symmetric: -127..127
MAX_COLUMN_VALUES = 1 << 23  # a convolution's patches per run: beyond (32 MB), every k-th output row only
BLOCK = 128  # inputs rounded between two updates of the rest (GPTQ's lazy batches: the same result, faster)


@dataclass
class Layer:
    """One op whose weights can be rounded again: what they stand for, their grid, where they are.
    A stored integer q stands for offset + scale * q, q within `grid`."""

    kind: str  # CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED
    weights: np.ndarray  # the float weights, in TFLite's layout
    scales: np.ndarray  # one step per output channel
    options: object  # strideH, strideW, dilationHFactor, dilationWFactor, padding (0: SAME), as TFLite's options
    grid: tuple[int, int] = (-INT8_LIMIT, INT8_LIMIT)  # TFLite's symmetric int8; TF.js's uint8 is 0..255
    offset: float = 0.0  # TF.js's uint8 min
    buffer: int = -1  # TFLite: the weights' buffer in the quantized model
    twin_input: int = -1  # TFLite: the op's input tensor in the float model

    @property
    def inputs(self) -> int:
        """How many inputs each output channel's weights multiply (a depthwise one: its taps)."""
        shape = self.weights.shape
        return int(np.prod(shape[1:3] if self.kind == "DEPTHWISE_CONV_2D" else shape[1:]))


def leave(left: dict[str, int], kind: str, why: str) -> None:
    """Count one op of `kind` left at nearest rounding, by why (the record's ops_left_at_nearest)."""
    left[f"{kind}: {why}"] = left.get(f"{kind}: {why}", 0) + 1


@dataclass
class Fit:
    """What `rounded` did: the model, how many ops it changed, and the ops it left at nearest
    by why ("TRANSPOSE_CONV: op not rounded")."""

    model: bytes
    changed: int
    left: dict[str, int]

    def record(self) -> dict:
        return {"ops_rounded": self.changed, **({"ops_left_at_nearest": self.left} if self.left else {})}

    def nothing_changed(self) -> str:
        left = f" ({', '.join(f'{why} x{count}' for why, count in self.left.items())})" if self.left else ""
        return (f"error-feedback rounding changed no weight: no {'/'.join(ROUNDED_OPS)} op whose int8 weights it "
                f"could round{left}")


def split_rows(rows: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The calibration rows to fit the rounding on (up to FIT_ROWS) and the ones held out to
    score it (a quarter, up to SCORE_ROWS, spread over the data): scored on the rows it was
    fitted to, a layer with more inputs than rows looks better than it is."""
    count = len(next(iter(rows.values())))
    held = np.linspace(0, count - 1, min(SCORE_ROWS, count // 4)).round().astype(int) if count >= 4 else \
        np.zeros(0, int)
    fit = np.setdiff1d(np.arange(count), held)
    fit = fit[np.linspace(0, len(fit) - 1, min(FIT_ROWS, len(fit))).round().astype(int)] if len(fit) else fit
    return ({name: array[fit] for name, array in rows.items()}, {name: array[held] for name, array in rows.items()})


def too_few_rows(rows: dict[str, np.ndarray]) -> str | None:
    """Why `rows` are too few to fit the rounding on, or None. Repeated rows count once: held out,
    a copy of a row it was fitted on would score the fit on itself."""
    count = len(next(iter(rows.values())))
    fit = len(next(iter(split_rows(rows)[0].values())))
    if fit < MIN_ROWS:
        return (f"error-feedback rounding skipped: {count} calibration rows, {fit} to fit on once a quarter is held "
                f"out to score it, and the inputs' correlations need at least {MIN_ROWS}")
    distinct = distinct_rows(rows)
    if distinct < MIN_CALIBRATION_ROWS:
        return (f"error-feedback rounding skipped: {distinct} distinct calibration rows of {count}, and it needs "
                f"{MIN_CALIBRATION_ROWS} (rows held out to score it must differ from the ones it is fitted on)")
    return None


def choose(model: bytes, twin: bytes, rows: dict[str, np.ndarray], signature: str, batch: int,
           fit_batch: int, cache: dict | None = None) -> tuple[bytes, dict]:
    """`model` (dynamic-range or int16x8) with its weights rounded by error feedback when that
    brings its outputs closer to `twin`'s (the float model) on held-out calibration rows by more
    than MARGIN, else as it is; and the manifest's record of what was tried. The model runs
    `batch` rows at a time as convert's check feeds it, the float model `fit_batch` at a time
    with every tensor kept. `cache`: the layers' input moments, shared by calls with one twin."""
    reason = too_few_rows(rows)
    if reason:
        return model, {"method": "nearest", "note": reason}
    fit, scored = split_rows(rows)
    try:
        found = rounded(model, twin, chunks(fit, fit_batch), signature, cache)
        if not found.changed:
            return model, {"method": "nearest", "note": found.nothing_changed()}
        expected = run_in_chunks(twin, scored, signature, batch)
        try:
            plain = run_in_chunks(model, scored, signature, batch)
        except Exception:  # noqa: BLE001 - its own check says why, in LiteRT's words
            return model, {"method": "nearest", "note": "error-feedback rounding skipped: LiteRT cannot run this "
                                                        "model on the calibration rows (its check says why)"}
        errors = {"nearest": worst_error(plain, expected),
                  "gptq": worst_error(run_in_chunks(found.model, scored, signature, batch), expected)}
    except Exception as exc:  # noqa: BLE001 - an optional refinement: whatever it meets, never costs the artifact
        return model, {"method": "nearest", "note": f"error-feedback rounding skipped: {first_line(exc)}"}
    kept = "gptq" if errors["gptq"] < errors["nearest"] * (1 - MARGIN) else "nearest"
    record = {"method": kept, **found.record(), "fitted_on_rows": len(next(iter(fit.values()))),
              "scored_on_held_out_rows": len(next(iter(scored.values()))),
              "worst_error": {name: figure(value) for name, value in errors.items()}}
    return (found.model if kept == "gptq" else model), record


def rounded(model: bytes, twin: bytes, parts: Iterable[dict[str, np.ndarray]], signature: str,
            cache: dict | None = None) -> Fit:
    """`model` with the int8 weights of its convolutions and fully-connected ops rounded by error
    feedback, against `twin` (the same graph in float: the calibrated model, or the float32
    conversion) run over `parts`. Ops are matched by their output tensor's name; one that `twin`
    lacks, whose weights another op shares, or with more than MAX_INPUTS inputs keeps its rounding."""
    layers, left = _layers(model, twin)
    if not layers:
        return Fit(model, 0, left)
    moments = _input_moments(layers, twin, parts, signature, cache)
    edited = bytearray(model)
    views = _weight_views(edited, layers)
    changed = 0
    for layer, view, moment in zip(layers, views, moments):
        if view is None or moment is None:
            leave(left, layer.kind, "input not readable as its weights see it" if moment is None else
                  "weights not inline")
            continue
        integers = rounded_layer(layer, moment)
        if integers is None:
            continue
        integers = integers.astype(np.int8)
        if np.any(integers.ravel() != view):
            changed += 1
            view[:] = integers.ravel()
    return Fit(bytes(edited), changed, left) if changed else Fit(model, 0, left)


def _layers(model: bytes, twin: bytes) -> tuple[list[Layer], dict[str, int]]:
    """The ops of `model` with int8 weights of their own, each with its float twin in `twin`; and
    the ops with int8 weights left out, counted by why."""
    quantized, floating = model_object(model), model_object(twin)
    graph, twin_graph = quantized.subgraphs[0], floating.subgraphs[0]
    twin_producer = {index: op for op in twin_graph.operators for index in op.outputs}
    twin_index = {tensor.name: i for i, tensor in enumerate(twin_graph.tensors)}
    # An int16x8 or float-I/O output's integer tensor is renamed: the DEQUANTIZE after it has the float name
    dequantized = {op.inputs[0]: graph.tensors[op.outputs[0]].name for op in graph.operators
                   if op_type(quantized, op) == "DEQUANTIZE"}
    readers: dict[int, int] = {}  # tensor -> how many op inputs read it (a Dense called twice: 2)
    for op in graph.operators:
        for index in op.inputs:
            readers[int(index)] = readers.get(int(index), 0) + 1
    users: dict[int, int] = {}
    for tensor in graph.tensors:
        users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    layers, left = [], {}
    for op in graph.operators:
        kind = op_type(quantized, op)
        if kind not in ROUNDED_OPS or len(op.inputs) < 2:
            if any(_int8_matrix(quantized, graph.tensors[i]) for i in op.inputs if i >= 0):
                leave(left, kind, "op not rounded")  # TRANSPOSE_CONV, BATCH_MATMUL, an embedding's GATHER
            continue
        weights = graph.tensors[op.inputs[1]]
        quantization = weights.quantization
        if weights.type != 9 or quantization is None or quantization.scale is None:
            continue  # not int8 weights
        if users.get(weights.buffer) != 1 or readers.get(int(op.inputs[1])) != 1:
            leave(left, kind, "weights shared with another op")
            continue
        if quantization.zeroPoint is not None and np.any(np.asarray(quantization.zeroPoint) != 0):
            continue
        output = op.outputs[0]
        name = next((n for n in (graph.tensors[output].name, dequantized.get(output)) if n in twin_index), None)
        twin_op = twin_producer.get(twin_index.get(name))
        if twin_op is None or op_type(floating, twin_op) != kind or len(twin_op.inputs) < 2:
            leave(left, kind, "no float twin")
            continue
        twin_weights = twin_graph.tensors[twin_op.inputs[1]]
        data = floating.buffers[twin_weights.buffer].data
        shape = tuple(int(d) for d in weights.shape)
        if twin_weights.type != 0 or data is None or tuple(int(d) for d in twin_weights.shape) != shape:
            leave(left, kind, "no float twin")  # FLOAT32 weights of the same shape, held in the flatbuffer
            continue
        channels = shape[-1] if kind == "DEPTHWISE_CONV_2D" else shape[0]
        scales = np.asarray(quantization.scale, np.float64)
        if scales.size not in (1, channels) or (kind == "FULLY_CONNECTED" and len(shape) != 2):
            continue
        float_weights = np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32).reshape(shape)
        layer = Layer(kind, float_weights, np.broadcast_to(scales, (channels,)).copy(), op.builtinOptions,
                      buffer=weights.buffer, twin_input=int(twin_op.inputs[0]))
        if layer.inputs > MAX_INPUTS:
            leave(left, kind, f"more than {MAX_INPUTS} inputs")
            continue
        layers.append(layer)
    return layers, left


def _int8_matrix(model, tensor) -> bool:
    """A constant int8 tensor with two axes or more longer than 1: weights whose rounding errors
    add up (not a PReLU's per-channel slope)."""
    return (tensor.type == 9 and model.buffers[tensor.buffer].data is not None and tensor.shape is not None
            and sum(int(d) > 1 for d in tensor.shape) >= 2)


def _weight_views(model: bytearray, layers: list[Layer]) -> list[np.ndarray | None]:
    """Writable int8 views of each layer's weights inside the serialized model (None where the
    data is not inline in the flatbuffer)."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    views = []
    for layer in layers:
        data = root.Buffers(layer.buffer).DataAsNumpy()  # a view into `model`
        ok = isinstance(data, np.ndarray) and data.size == layer.weights.size
        views.append(data.view(np.int8) if ok else None)
    return views


def _input_moments(layers: list[Layer], twin: bytes, parts: Iterable[dict[str, np.ndarray]],
                   signature: str, cache: dict | None = None) -> list[np.ndarray | None]:
    """Each layer's input second moments (X^T X over every position its weights see) on `parts`:
    [inputs, inputs] for a convolution or fully-connected op, [channels, taps, taps] for a
    depthwise convolution. None for a layer whose input the interpreter cannot hand back.
    `cache` (by the twin's input tensor) saves a second pass for a second model of one twin."""
    cache = {} if cache is None else cache
    keys = [_moment_key(layer) for layer in layers]
    todo = [i for i, key in enumerate(keys) if key not in cache]
    if todo:
        moments: dict[int, np.ndarray | None] = {}
        failed: set[int] = set()
        for interpreter in kept_tensor_runs(twin, signature, parts):
            for i in todo:
                if i in failed:
                    continue
                try:
                    value = np.asarray(interpreter.get_tensor(layers[i].twin_input))
                    moments[i] = add_moments(layers[i], value, moments.get(i))
                except (ValueError, IndexError):
                    failed.add(i)
                    moments[i] = None
        for i in todo:
            cache[keys[i]] = moments.get(i)
    return [cache[key] for key in keys]


def _moment_key(layer: Layer) -> tuple:
    """What a layer's input moments depend on: its input, and how its weights see it."""
    options = layer.options
    geometry = None if options is None else tuple(getattr(options, name, None) for name in (
        "strideH", "strideW", "dilationHFactor", "dilationWFactor", "padding"))
    return layer.twin_input, layer.kind, layer.weights.shape, geometry


def add_moments(layer: Layer, value: np.ndarray, moments: np.ndarray | None) -> np.ndarray:
    """`moments` (None: none yet) plus the second moments of one run's input `value` to
    `layer`, as its weights see it; ValueError where they cannot (a grouped convolution)."""
    columns = _columns(layer, value)
    if layer.kind == "DEPTHWISE_CONV_2D":  # per channel: [taps, positions] @ its transpose
        moment = columns @ columns.transpose(0, 2, 1)
    else:
        moment = columns.T @ columns
    # float32 products (half float64's time), summed per run in float64
    return moment.astype(np.float64) if moments is None else moments + moment


def _columns(layer: Layer, value: np.ndarray) -> np.ndarray:
    """The layer's input as its weights multiply it: [positions, inputs] (a convolution's
    patches in TFLite's filter order: rows, columns, channels), or [channels, taps, positions]
    for a depthwise convolution."""
    if value.dtype != np.float32:
        raise ValueError("not a float input")
    if layer.kind == "FULLY_CONNECTED":
        return value.reshape(-1, layer.weights.shape[1])
    if value.ndim != 4:
        raise ValueError("not an image batch")
    options = layer.options
    rows, cols = layer.weights.shape[1:3]
    values = value.size * rows * cols // max(1, options.strideH * options.strideW)  # about the patches' size
    row_step = max(1, -(-values // MAX_COLUMN_VALUES))
    geometry = (rows, cols, options.strideH, options.strideW, max(1, options.dilationHFactor),
                max(1, options.dilationWFactor), options.padding == 0, row_step)
    if layer.kind == "CONV_2D":
        if value.shape[-1] * rows * cols != layer.weights[0].size:
            raise ValueError("grouped convolution")
        return _patches(value, *geometry).reshape(-1, rows * cols * value.shape[-1])
    # channels first, so each channel's [taps, positions] is one contiguous matrix
    patches = _patches(np.ascontiguousarray(value.transpose(3, 1, 2, 0)), *geometry)  # [C, out_h, out_w, r, c, N]
    return patches.transpose(0, 3, 4, 5, 1, 2).reshape(value.shape[-1], rows * cols, -1)  # positions: N, h, w


def _patches(x: np.ndarray, rows: int, cols: int, stride_h: int, stride_w: int, dilation_h: int, dilation_w: int,
             same: bool, row_step: int = 1) -> np.ndarray:
    """[a, out_h, out_w, rows, cols, b] for `x` [a, height, width, b]: what each output position
    of a convolution sees (a and b: batch and channels, either way round); with `row_step`,
    every row_step-th output row only (a large image's correlations, sampled)."""
    _, height, width, _ = x.shape
    span_h, span_w = (rows - 1) * dilation_h + 1, (cols - 1) * dilation_w + 1
    if same:
        out_h, out_w = -(-height // stride_h), -(-width // stride_w)
        pad_h = max((out_h - 1) * stride_h + span_h - height, 0)
        pad_w = max((out_w - 1) * stride_w + span_w - width, 0)
        x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    else:
        out_h, out_w = (height - span_h) // stride_h + 1, (width - span_w) // stride_w + 1
    out_h, stride_h = -(-out_h // row_step), stride_h * row_step
    patches = np.empty((x.shape[0], out_h, out_w, rows, cols, x.shape[3]), x.dtype)
    for i in range(rows):
        for j in range(cols):
            top, left = i * dilation_h, j * dilation_w
            patches[:, :, :, i, j, :] = x[:, top:top + (out_h - 1) * stride_h + 1:stride_h,
                                          left:left + (out_w - 1) * stride_w + 1:stride_w, :]
    return patches


def rounded_layer(layer: Layer, moment: np.ndarray) -> np.ndarray | None:
    """The layer's stored integers, rounded by error feedback, in its TFLite layout (as floats;
    None if its input moments are unusable)."""
    integers = _gptq(_group(layer, layer.weights) - layer.offset, _group_moments(layer, moment), _group_scales(layer),
                     layer.grid)
    return None if integers is None else _ungroup(layer, integers)


def nearest(layer: Layer) -> np.ndarray:
    """The layer's stored integers rounded to nearest, as the converters store them (as floats)."""
    steps = np.where(_group_scales(layer) > 0, _group_scales(layer), 1.0)[..., None]
    return _ungroup(layer, np.clip(np.rint((_group(layer, layer.weights) - layer.offset) / steps), *layer.grid))


def output_error(layer: Layer, integers: np.ndarray, moment: np.ndarray) -> float:
    """How far `integers` move the layer's outputs on the rows `moment` was taken on (the sum of
    squared output errors, tr(dW H dW^T)): what error feedback makes smaller than nearest rounding."""
    error = _group(layer, integers) * _group_scales(layer)[..., None] + layer.offset - _group(layer, layer.weights)
    return float(np.einsum("gri,gij,grj->", error, _group_moments(layer, moment), error))


def _group(layer: Layer, array: np.ndarray) -> np.ndarray:
    """An array shaped as the layer's weights, as [groups, rows, inputs] (float64): one group for a
    convolution or fully-connected op, one per output channel ([channels, 1, taps]) for a depthwise one."""
    array = np.asarray(array, np.float64)
    if layer.kind == "DEPTHWISE_CONV_2D":
        return array.reshape(-1, array.shape[-1]).T[:, None, :]
    return array.reshape(1, array.shape[0], -1)


def _ungroup(layer: Layer, grouped: np.ndarray) -> np.ndarray:
    if layer.kind == "DEPTHWISE_CONV_2D":
        return grouped[:, 0, :].T.reshape(layer.weights.shape)
    return grouped[0].reshape(layer.weights.shape)


def _group_moments(layer: Layer, moment: np.ndarray) -> np.ndarray:
    """[groups, inputs, inputs]: a depthwise output channel c reads input channel c // multiplier."""
    if layer.kind == "DEPTHWISE_CONV_2D":
        return np.repeat(moment, layer.weights.shape[-1] // moment.shape[0], axis=0)
    return moment[None]


def _group_scales(layer: Layer) -> np.ndarray:
    """[groups, rows]."""
    return layer.scales[:, None] if layer.kind == "DEPTHWISE_CONV_2D" else layer.scales[None, :]


def _gptq(weights: np.ndarray, moments: np.ndarray, scales: np.ndarray,
          grid: tuple[int, int] = (-INT8_LIMIT, INT8_LIMIT)) -> np.ndarray | None:
    """Integers for `weights` [groups, rows, inputs] on steps `scales` [groups, rows], each
    group's inputs correlated as `moments` [groups, inputs, inputs] says: inputs are rounded in
    order of their energy, and each one's error is spread over those still to round through
    the inverse moments' Cholesky factor, so the rows' products with the inputs move least."""
    weights = weights.copy()
    groups, _, size = weights.shape
    moments = moments.astype(np.float64).copy()
    diagonal = np.einsum("gii->gi", moments)  # a view: writing it writes the diagonal
    diagonal[diagonal <= 0] = 1.0  # inputs never seen: rounded to nearest, nothing pushed to them
    order = np.argsort(-diagonal, axis=1, kind="stable")
    take = np.arange(groups)[:, None]
    weights = np.take_along_axis(weights, order[:, None, :], axis=2)
    moments = moments[take[:, :, None], order[:, :, None], order[:, None, :]]
    steps = np.where(scales > 0, scales, 1.0)
    factor = None
    for damping in (DAMPING, DAMPING * 10, DAMPING * 100):
        damped = moments + (damping * diagonal.mean(axis=1))[:, None, None] * np.eye(size)
        try:
            factor = np.swapaxes(np.linalg.cholesky(np.linalg.inv(damped)), 1, 2)  # upper triangular
        except np.linalg.LinAlgError:
            continue
        if np.all(np.isfinite(factor)):
            break
        factor = None
    if factor is None:
        return None
    integers = np.empty_like(weights)
    for start in range(0, size, BLOCK):  # errors pushed within a block at once, onto the rest by one product
        end = min(start + BLOCK, size)
        block, errors = weights[:, :, start:end].copy(), np.empty((groups, weights.shape[1], end - start))
        for i in range(end - start):
            column = block[:, :, i]
            rounded = np.clip(np.rint(column / steps), *grid)
            integers[:, :, start + i] = rounded
            errors[:, :, i] = (column - rounded * steps) / factor[:, start + i, start + i][:, None]
            block[:, :, i + 1:] -= errors[:, :, i, None] * factor[:, None, start + i, start + i + 1:end]
        weights[:, :, end:] -= errors @ factor[:, start:end, end:]
    integers = np.where(scales[..., None] > 0, integers, 0)
    result = np.empty_like(integers)
    np.put_along_axis(result, order[:, None, :], integers, axis=2)
    return result

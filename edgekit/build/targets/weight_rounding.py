"""int8 weights rounded with error feedback (GPTQ: Frantar et al., 2022) instead of each to its
nearest step.

Rounding every weight to its nearest int8 step is best weight by weight, not for the layer: a
channel's rounding errors add up over the inputs they multiply. Here each convolution's and
fully-connected op's weights are rounded one input at a time, and the error each rounding made
is pushed onto the weights not yet rounded, in proportion to how the layer's inputs on the
calibration rows correlate (their second moments, X^T X). The converter's int8 steps
(per-channel scales) stay as they are, so only the stored integers change: same bytes, same
kernels, same speed. It serves every variant with int8 weights (int8, int16x8, dynamic-range);
where activations stay near float (int16x8, dynamic) the weights are most of the error.

`choose` fits the rounding on the calibration rows and keeps it only when it brings the outputs
closer to the float model's than nearest rounding does; the int8 range picker scores it among
its own candidates (activation_ranges.RangePicker).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from edgekit.build.data import spread_rows
from edgekit.build.targets.activation_ranges import (
    chunks,
    first_line,
    run_in_chunks,
    worst_error,
)
from edgekit.build.targets.int8_layers import kept_tensor_runs, model_object, op_type

ROUNDED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
MIN_ROWS = 32  # fewer calibration rows: the inputs' correlations are mostly those rows' own
FIT_ROWS = 256  # rows the correlations are taken on (one run of the float model each)
SCORE_ROWS = 64  # rows `choose` compares nearest and error-feedback rounding on
MARGIN = 0.01  # how much better (worst output error) error feedback must score to be kept
DAMPING = 0.01  # added to the correlations' diagonal, as a share of its mean (GPTQ's own)
INT8_LIMIT = 127  # TFLite's int8 weights are symmetric: -127..127
MAX_COLUMN_VALUES = 1 << 23  # a convolution's patches per run: beyond (32 MB), every k-th output row only
BLOCK = 128  # inputs rounded between two updates of the rest (GPTQ's lazy batches: the same result, faster)


@dataclass
class _Layer:
    """One op whose int8 weights can be rounded again: where they are and what they stand for."""

    kind: str
    buffer: int  # the weights' buffer in the quantized model
    weights: np.ndarray  # the float weights, from the float model (TFLite layout)
    scales: np.ndarray  # one int8 step per output channel
    twin_input: int  # the op's input tensor in the float model
    options: object  # the op's builtin options (strides, padding, dilation)


def choose(model: bytes, twin: bytes, rows: dict[str, np.ndarray], signature: str, batch: int,
           fit_batch: int) -> tuple[bytes, dict]:
    """`model` (dynamic-range or int16x8) with its weights rounded by error feedback when that
    brings its outputs closer to `twin`'s (the float model) on SCORE_ROWS calibration rows by
    more than MARGIN, else as it is; and the manifest's record of what was tried. The model
    runs `batch` rows at a time as convert's check feeds it, the float model `fit_batch` at a
    time with every tensor kept."""
    count = len(next(iter(rows.values())))
    if count < MIN_ROWS:
        return model, {"method": "nearest", "note": f"error-feedback rounding skipped: {count} calibration rows, "
                                                    f"and the inputs' correlations need at least {MIN_ROWS}"}
    fit = spread_rows(rows, FIT_ROWS)
    try:
        fitted, changed = rounded(model, twin, chunks(fit, fit_batch), signature)
        if not changed:
            return model, {"method": "nearest", "note": "error-feedback rounding changed no weight: no convolution "
                                                        "or fully-connected op with int8 weights of its own"}
        scored = spread_rows(rows, SCORE_ROWS)
        expected = run_in_chunks(twin, scored, signature, batch)
        errors = {name: worst_error(run_in_chunks(candidate, scored, signature, batch), expected)
                  for name, candidate in (("nearest", model), ("gptq", fitted))}
    except Exception as exc:  # noqa: BLE001 - an optional refinement: whatever it meets, never costs the artifact
        return model, {"method": "nearest", "note": f"error-feedback rounding skipped: {first_line(exc)}"}
    kept = "gptq" if errors["gptq"] < errors["nearest"] * (1 - MARGIN) else "nearest"
    record = {"method": kept, "ops_rounded": changed, "fitted_on_rows": len(next(iter(fit.values()))),
              "scored_on_rows": len(next(iter(scored.values()))),
              "worst_error": {name: round(value, 6) for name, value in errors.items()}}
    return (fitted if kept == "gptq" else model), record


def rounded(model: bytes, twin: bytes, parts: Iterable[dict[str, np.ndarray]], signature: str) -> tuple[bytes, int]:
    """`model` with the int8 weights of its convolutions and fully-connected ops rounded by error
    feedback, against `twin` (the same graph in float: the calibrated model, or the float32
    conversion) run over `parts`; and how many ops changed (0: `model` unchanged). Ops are
    matched by their output tensor's name; one that `twin` lacks keeps its rounding."""
    layers = _layers(model, twin)
    if not layers:
        return model, 0
    moments = _input_moments(layers, twin, parts, signature)
    edited = bytearray(model)
    views = _weight_views(edited, layers)
    changed = 0
    for layer, view, moment in zip(layers, views, moments):
        if view is None or moment is None:
            continue
        integers = _rounded_layer(layer, moment)
        if integers is None:
            continue
        if np.any(integers.ravel() != view):
            changed += 1
            view[:] = integers.ravel()
    return (bytes(edited), changed) if changed else (model, 0)


def _layers(model: bytes, twin: bytes) -> list[_Layer]:
    """The ops of `model` with int8 weights of their own, each with its float twin in `twin`."""
    quantized, floating = model_object(model), model_object(twin)
    graph, twin_graph = quantized.subgraphs[0], floating.subgraphs[0]
    twin_producer = {index: op for op in twin_graph.operators for index in op.outputs}
    twin_index = {tensor.name: i for i, tensor in enumerate(twin_graph.tensors)}
    # An int16x8 or float-I/O output's integer tensor is renamed: the DEQUANTIZE after it has the float name
    dequantized = {op.inputs[0]: graph.tensors[op.outputs[0]].name for op in graph.operators
                   if op_type(quantized, op) == "DEQUANTIZE"}
    users: dict[int, int] = {}
    for tensor in graph.tensors:
        users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    layers = []
    for op in graph.operators:
        kind = op_type(quantized, op)
        if kind not in ROUNDED_OPS or len(op.inputs) < 2:
            continue
        weights = graph.tensors[op.inputs[1]]
        quantization = weights.quantization
        if weights.type != 9 or users.get(weights.buffer) != 1 or quantization is None or quantization.scale is None:
            continue  # not int8, shared, or not quantized
        if quantization.zeroPoint is not None and np.any(np.asarray(quantization.zeroPoint) != 0):
            continue
        output = op.outputs[0]
        name = next((n for n in (graph.tensors[output].name, dequantized.get(output)) if n in twin_index), None)
        twin_op = twin_producer.get(twin_index.get(name))
        if twin_op is None or op_type(floating, twin_op) != kind or len(twin_op.inputs) < 2:
            continue
        twin_weights = twin_graph.tensors[twin_op.inputs[1]]
        data = floating.buffers[twin_weights.buffer].data
        shape = tuple(int(d) for d in weights.shape)
        if twin_weights.type != 0 or data is None or tuple(int(d) for d in twin_weights.shape) != shape:
            continue  # FLOAT32 weights of the same shape, held in the flatbuffer
        channels = shape[-1] if kind == "DEPTHWISE_CONV_2D" else shape[0]
        scales = np.asarray(quantization.scale, np.float64)
        if scales.size not in (1, channels) or (kind == "FULLY_CONNECTED" and len(shape) != 2):
            continue
        float_weights = np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32).reshape(shape)
        layers.append(_Layer(kind, weights.buffer, float_weights, np.broadcast_to(scales, (channels,)).copy(),
                             int(twin_op.inputs[0]), op.builtinOptions))
    return layers


def _weight_views(model: bytearray, layers: list[_Layer]) -> list[np.ndarray | None]:
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


def _input_moments(layers: list[_Layer], twin: bytes, parts: Iterable[dict[str, np.ndarray]],
                   signature: str) -> list[np.ndarray | None]:
    """Each layer's input second moments (X^T X over every position its weights see) on `parts`:
    [inputs, inputs] for a convolution or fully-connected op, [channels, taps, taps] for a
    depthwise convolution. None for a layer whose input the interpreter cannot hand back."""
    moments: list[np.ndarray | None] = [None] * len(layers)
    failed: set[int] = set()
    for interpreter in kept_tensor_runs(twin, signature, parts):
        for i, layer in enumerate(layers):
            if i in failed:
                continue
            try:
                value = np.asarray(interpreter.get_tensor(layer.twin_input))
                columns = _columns(layer, value)
            except (ValueError, IndexError):
                failed.add(i)
                moments[i] = None
                continue
            if layer.kind == "DEPTHWISE_CONV_2D":  # per channel: [taps, positions] @ its transpose
                moment = columns @ columns.transpose(0, 2, 1)
            else:
                moment = columns.T @ columns
            # float32 products (half float64's time), summed per part in float64
            moments[i] = moment.astype(np.float64) if moments[i] is None else moments[i] + moment
    return moments


def _columns(layer: _Layer, value: np.ndarray) -> np.ndarray:
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


def _rounded_layer(layer: _Layer, moment: np.ndarray) -> np.ndarray | None:
    """The layer's int8 weights, rounded by error feedback, in its TFLite layout (None if its
    input moments are unusable)."""
    weights = layer.weights.astype(np.float64)
    if layer.kind == "DEPTHWISE_CONV_2D":  # each output channel on its own: [channels, 1, taps]
        channels = weights.shape[-1]
        multiplier = channels // moment.shape[0]
        grouped = weights.reshape(-1, channels).T[:, None, :]
        moments = np.repeat(moment, multiplier, axis=0)  # output channel c reads input channel c // multiplier
        integers = _gptq(grouped, moments, layer.scales[:, None])
        return None if integers is None else integers[:, 0, :].T.reshape(weights.shape).astype(np.int8)
    grouped = weights.reshape(1, weights.shape[0], -1)  # one group: [1, output channels, inputs]
    integers = _gptq(grouped, moment[None], layer.scales[None, :])
    return None if integers is None else integers[0].reshape(weights.shape).astype(np.int8)


def _gptq(weights: np.ndarray, moments: np.ndarray, scales: np.ndarray) -> np.ndarray | None:
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
            rounded = np.clip(np.rint(column / steps), -INT8_LIMIT, INT8_LIMIT)
            integers[:, :, start + i] = rounded
            errors[:, :, i] = (column - rounded * steps) / factor[:, start + i, start + i][:, None]
            block[:, :, i + 1:] -= errors[:, :, i, None] * factor[:, None, start + i, start + i + 1:end]
        weights[:, :, end:] -= errors @ factor[:, start:end, end:]
    integers = np.where(scales[..., None] > 0, integers, 0)
    result = np.empty_like(integers)
    np.put_along_axis(result, order[:, None, :], integers, axis=2)
    return result

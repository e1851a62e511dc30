"""Empirical bias correction of an int8 model: the mean error int8 rounding leaves in each
output channel of a convolution or fully-connected op, measured on the calibration rows
against the float model, is taken out of that op's int32 bias.

Rounding weights and activations shifts a channel's mean as well as adding noise; the shift
is what a bias can undo (for ops without a fused activation, whose output is the biased sum
itself). Ops are corrected one at a time in graph order, each measured after the ones before
it were corrected (correcting all at once overshoots: an op's error includes the shift its
inputs passed on, which their own correction removes). Only ops whose output is compared
with a float twin (int8_layers) and whose bias is an int32 tensor of its own are corrected.
(A bias buffer several ops share, as TFLite gives bias-less convolutions, is first copied per
op.) The range picker offers the result as one more candidate, kept only when it scores better.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from edgekit.build.targets.int8_layers import (
    kept_tensor_runs,
    model_object,
    op_type,
    quantized_layers,
)

CORRECTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def corrected(calibrated: bytes, quantized: bytes, parts: list[dict[str, np.ndarray]],
              signature: str) -> tuple[bytes, int]:
    """`quantized` with its biases corrected, and how many ops were corrected (0: unchanged)."""
    layers = quantized_layers(calibrated, quantized)[0]  # tensor indices: splitting buffers keeps them
    quantized = _unshared_biases(quantized, layers)
    model = bytearray(quantized)
    targets = _correctable(quantized, layers)
    views = _bias_views(model, targets)  # views into `model`, valid as long as it is not resized
    targets, biases = [t for t, v in zip(targets, views) if v is not None], [v for v in views if v is not None]
    if not targets:
        return quantized, 0
    float_means = _channel_means(calibrated, parts, signature, [t["float_index"] for t in targets])
    for target, bias, reference in zip(targets, biases, float_means):  # in graph order: each sees its inputs corrected
        (mean,) = _channel_means(bytes(model), parts, signature, [target["index"]])
        error = (mean - target["zero_point"]) * target["scale"] - reference
        step = np.rint(error / target["bias_scale"]).astype(np.int64)
        bias[:] = np.clip(bias.astype(np.int64) - step, -2**31, 2**31 - 1).astype(np.int32)
    return bytes(model), len(targets)


def _unshared_biases(quantized: bytes, layers: list[dict]) -> bytes:
    """The converter gives every bias-less convolution one shared zero bias buffer: each op to
    correct gets a copy of its own (a few bytes per channel), so each can take its own shift."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = model_object(quantized)
    graph = model.subgraphs[0]
    outputs = {layer["index"] for layer in layers}
    users: dict[int, int] = {}
    for tensor in graph.tensors:
        users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    split = 0
    for op in graph.operators:
        if op.outputs[0] not in outputs or not _eligible(model, op):
            continue
        bias = graph.tensors[op.inputs[2]]
        if bias.type == 2 and users.get(bias.buffer, 0) > 1 and model.buffers[bias.buffer].data is not None:
            copy = schema.BufferT()
            copy.data = np.array(model.buffers[bias.buffer].data, copy=True)
            users[bias.buffer] -= 1
            model.buffers.append(copy)
            bias.buffer = len(model.buffers) - 1
            users[bias.buffer] = 1
            split += 1
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if split else quantized


def _eligible(model, op) -> bool:
    """A convolution or fully-connected op with a bias input and no fused activation (a clipped
    output's mean is no bias's)."""
    return (op_type(model, op) in CORRECTED_OPS and len(op.inputs) >= 3 and op.inputs[2] >= 0
            and getattr(op.builtinOptions, "fusedActivationFunction", 0) == 0)


def _correctable(quantized: bytes, layers: list[dict]) -> list[dict]:
    """Of `layers` (int8_layers.quantized_layers), the ops whose bias can be corrected, with
    their output's quantization and the bias's."""
    model = model_object(quantized)
    graph = model.subgraphs[0]
    producer = {op.outputs[0]: op for op in graph.operators}
    users: dict[int, int] = {}
    for tensor in graph.tensors:
        users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    readers: dict[int, int] = {}
    for op in graph.operators:
        for index in op.inputs:
            readers[int(index)] = readers.get(int(index), 0) + 1
    targets = []
    for layer in layers:
        op = producer.get(layer["index"])
        if op is None or not _eligible(model, op):
            continue
        bias = graph.tensors[op.inputs[2]]
        scales = bias.quantization.scale if bias.quantization is not None else None
        channels = bias.shape[-1] if bias.shape is not None and len(bias.shape) else 0
        own = users.get(bias.buffer) == 1 and readers.get(int(op.inputs[2])) == 1  # no other op reads it
        if bias.type != 2 or scales is None or not own or not channels:  # INT32
            continue
        targets.append({**layer, "buffer": bias.buffer, "channels": int(channels),
                        "bias_scale": np.broadcast_to(np.asarray(scales, np.float64), (int(channels),)).copy()})
    return [t for t in targets if graph.tensors[t["index"]].shape[-1] == t["channels"]]


def _channel_means(model: bytes, parts: Iterable[dict[str, np.ndarray]], signature: str,
                   tensors: list[int]) -> list[np.ndarray]:
    """Each tensor's mean per last-axis channel over every part, as stored (not dequantized)."""
    sums = [0.0] * len(tensors)
    counts = [0] * len(tensors)
    for interpreter in kept_tensor_runs(model, signature, parts):
        for i, index in enumerate(tensors):
            value = interpreter.get_tensor(index)
            sums[i] = sums[i] + value.reshape(-1, value.shape[-1]).sum(axis=0, dtype=np.float64)
            counts[i] += value.size // value.shape[-1]
    return [total / max(1, count) for total, count in zip(sums, counts)]


def _bias_views(model: bytearray, targets: list[dict]) -> list[np.ndarray | None]:
    """Writable int32 views of each target's bias inside the serialized model (None where the
    data is not inline in the flatbuffer)."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    views = []
    for target in targets:
        data = root.Buffers(target["buffer"]).DataAsNumpy()  # a view into `model`
        ok = isinstance(data, np.ndarray) and data.size == 4 * target["channels"]
        views.append(data.view(np.int32) if ok else None)
    return views

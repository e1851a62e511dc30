"""TF.js uint8 weights of convolutions and matmuls rounded by error feedback (GPTQ), as the
TFLite variants' are (edgekit/build/targets/weight_rounding.py).

TF.js's uint8 is one affine grid per tensor (real = min + scale * q, q in 0..255), coarser
than TFLite's per-channel int8, so rounding each weight to nearest costs more there. The
layer inputs come from running the graph before fusion (TensorFlow cannot run TF.js's fused
ops; the fused node reads the same input tensor) on the calibration rows; each weight tensor
is then rounded against them on its own grid, and kept where it moves its layer's outputs on
rows held out of the fit less than nearest rounding does. TF.js's own check in Node.js then
judges the model.
"""
from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from edgekit.build.targets import weight_rounding
from edgekit.build.targets.activation_ranges import figure
from edgekit.build.targets.weight_rounding import leave

# TF ops (as the fused graph holds them) -> the TFLite kind whose layout and columns they share
KINDS = {"Conv2D": "CONV_2D", "_FusedConv2D": "CONV_2D", "DepthwiseConv2dNative": "DEPTHWISE_CONV_2D",
         "FusedDepthwiseConv2dNative": "DEPTHWISE_CONV_2D", "MatMul": "FULLY_CONNECTED",
         "_FusedMatMul": "FULLY_CONNECTED"}
BATCH = 16  # calibration rows per run of the graph


def uint8_grid(value: np.ndarray) -> tuple[float, float]:
    """TF.js's uint8 (min, scale) for a float tensor: a range that holds 0.0, min nudged onto
    the grid so that 0.0 is exact (tensorflowjs_converter's choice)."""
    low, high = float(value.min(initial=0.0)), float(value.max(initial=0.0))
    scale = (high - low) / 255 if high > low else 1.0
    return round(low / scale) * scale, scale


def fitted_uint8(graph_def, fused_graph_def, inputs: list, rows: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Weight name -> its uint8 integers (its own shape) for each convolution or matmul filter
    of `fused_graph_def` rounded by error feedback (fitted on most of `rows`, the calibration
    rows keyed by the signature's input names) where that moves its layer less than nearest
    rounding on the rows held out of the fit; and the record for the manifest. `graph_def` is
    the same graph before fusion, which TensorFlow runs; `inputs` the signature's input endpoints."""
    reason = weight_rounding.too_few_rows(rows)
    if reason:
        return {}, {"method": "nearest", "note": reason}
    fit, held = weight_rounding.split_rows(rows)
    targets, left = _targets(fused_graph_def)
    (moments, fitted_rows), (held_moments, held_rows) = _input_moments(graph_def, inputs, (fit, held), targets)
    fitted, errors = {}, {"nearest": 0.0, "gptq": 0.0}
    for (name, layer, _, back), moment, held_moment in zip(targets, moments, held_moments):
        integers = None if moment is None or held_moment is None else weight_rounding.rounded_layer(layer, moment)
        if integers is None:
            leave(left, layer.kind, "input not readable as its weights see it")
            continue
        plain = weight_rounding.nearest(layer)  # judged on the rows held out of the fit
        before, after = (weight_rounding.output_error(layer, q, held_moment) for q in (plain, integers))
        if after < before * (1 - weight_rounding.MARGIN):
            fitted[name] = back(integers).astype(np.uint8)
            errors["nearest"] += before
            errors["gptq"] += after
        else:
            leave(left, layer.kind, "no better on the held-out rows")
    found = weight_rounding.Fit(b"", len(fitted), left)
    if not fitted:
        return {}, {"method": "nearest", "note": found.nothing_changed(), **({"ops_left_at_nearest": left} if left
                                                                            else {})}
    record = {"method": "gptq", **found.record(), "fitted_on_rows": fitted_rows, "scored_on_held_out_rows": held_rows,
              "layer_error_ratio": figure(errors["gptq"] / errors["nearest"]) if errors["nearest"] else None}
    return fitted, record


def _targets(fused_graph_def) -> tuple[list[tuple[str, weight_rounding.Layer, str, Callable]], dict[str, int]]:
    """(filter constant's name, its Layer in TFLite's layout on TF.js's uint8 grid, the op's input
    tensor, what turns an array in TFLite's layout back into the filter's) for each convolution or
    matmul whose filter is a float constant read by it alone; and the ops with float weights left
    out, counted by why (op types named as TFLite's for a convolution or matmul, else TF's)."""
    from tensorflow.python.framework import tensor_util

    nodes = {node.name: node for node in fused_graph_def.node}
    readers: dict[str, int] = {}
    for node in fused_graph_def.node:
        for name in node.input:
            key = name.lstrip("^").split(":")[0]
            readers[key] = readers.get(key, 0) + 1
    targets, left = [], {}
    for node in fused_graph_def.node:
        kind = KINDS.get(node.op)
        if kind is None:
            weights = [nodes.get(name.split(":")[0]) for name in node.input[1:]]
            if node.op not in ("Identity", "Const") and any(  # float weights with two real axes (not a slope)
                    w is not None and w.op == "Const" and w.attr["value"].tensor.dtype == 1  # DT_FLOAT
                    and sum(d.size > 1 for d in w.attr["value"].tensor.tensor_shape.dim) >= 2 for w in weights):
                leave(left, node.op, "op not rounded")
            continue
        if len(node.input) < 2:
            continue
        source = nodes.get(node.input[1].split(":")[0])
        if source is None or source.op != "Const":
            continue
        if readers.get(source.name) != 1:
            leave(left, kind, "weights shared with another op")
            continue
        value = tensor_util.MakeNdarray(source.attr["value"].tensor)
        found = _layer(kind, node, value)
        if found is None:
            leave(left, kind, "op not rounded (its layout or padding)")
            continue
        layer, back = found
        if layer.inputs > weight_rounding.MAX_INPUTS:
            leave(left, kind, f"more than {weight_rounding.MAX_INPUTS} inputs")
            continue
        input_name = node.input[0] if ":" in node.input[0] else f"{node.input[0]}:0"
        targets.append((source.name, layer, input_name, back))
    return targets, left


def _layer(kind: str, node, value: np.ndarray) -> tuple[weight_rounding.Layer, Callable] | None:
    """A filter in TF's layout as a Layer in TFLite's ([out, kh, kw, in]; depthwise [1, kh, kw,
    channels x multiplier]; matmul [out, in]) and the way back, or None where the op is not one
    edgekit reads."""
    if value.dtype != np.float32:
        return None

    def attr(key: str):  # read without adding it: indexing a proto map inserts the key
        return node.attr[key] if key in node.attr else None

    if kind == "FULLY_CONNECTED":
        if value.ndim != 2 or (attr("transpose_a") is not None and attr("transpose_a").b):
            return None
        transposed = attr("transpose_b") is not None and attr("transpose_b").b  # already [out, in]
        weights, options = (value if transposed else value.T), None

        def back(array):
            return array if transposed else array.T
    else:
        fmt = attr("data_format").s.decode() if attr("data_format") is not None else "NHWC"
        padding = attr("padding").s.decode() if attr("padding") is not None else ""
        if value.ndim != 4 or fmt not in ("NHWC", "") or padding not in ("SAME", "VALID"):
            return None
        strides = list(attr("strides").list.i) if attr("strides") is not None else [1, 1, 1, 1]
        dilations = list(attr("dilations").list.i) if attr("dilations") is not None else [1, 1, 1, 1]
        options = SimpleNamespace(strideH=strides[1], strideW=strides[2], dilationHFactor=dilations[1],
                                  dilationWFactor=dilations[2], padding=0 if padding == "SAME" else 1)
        if kind == "CONV_2D":  # HWIO -> OHWI
            weights = value.transpose(3, 0, 1, 2)

            def back(array):
                return array.transpose(1, 2, 3, 0)
        else:  # HWCM -> 1HW(C*M): output channel c * M + m
            weights = value.reshape(1, value.shape[0], value.shape[1], -1)

            def back(array):
                return array.reshape(value.shape)
    weights = np.ascontiguousarray(weights)
    low, scale = uint8_grid(value)
    channels = weights.shape[-1] if kind == "DEPTHWISE_CONV_2D" else weights.shape[0]
    return weight_rounding.Layer(kind, weights, np.full(channels, scale), options, grid=(0, 255), offset=low), back


def _input_moments(graph_def, inputs: list, row_sets: tuple[dict[str, np.ndarray], ...],
                   targets: list) -> list[tuple[list[np.ndarray | None], int]]:
    """For each set of rows, from one TensorFlow session running `graph_def`: each target's input
    second moments over those rows (None for a target whose input the graph lacks or cannot be
    read as its weights see it), and how many rows ran (a fixed batch drops the last part)."""
    import tensorflow as tf

    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        fetches, wanted = [], []
        for i, (_, _, input_name, _) in enumerate(targets):
            try:
                fetches.append(graph.get_tensor_by_name(input_name))
                wanted.append(i)
            except (KeyError, ValueError):
                continue
        if not fetches:
            return [([None] * len(targets), 0) for _ in row_sets]
        feeds = {endpoint.key: graph.get_tensor_by_name(endpoint.tensor) for endpoint in inputs}
        fixed = next((e.shape[0] for e in inputs if e.shape and e.shape[0] is not None), None)
        batch = fixed or BATCH
        results = []
        with tf.compat.v1.Session(graph=graph) as session:
            for rows in row_sets:
                moments: list[np.ndarray | None] = [None] * len(targets)
                failed: set[int] = set()
                count = len(next(iter(rows.values())))
                used = count - (count % batch if fixed else 0)
                for start in range(0, used, batch):
                    feed = {tensor: rows[key][start:start + batch].astype(tensor.dtype.as_numpy_dtype)
                            for key, tensor in feeds.items()}
                    for i, value in zip(wanted, session.run(fetches, feed_dict=feed)):
                        if i in failed:
                            continue
                        try:
                            moments[i] = weight_rounding.add_moments(targets[i][1], np.asarray(value), moments[i])
                        except (ValueError, IndexError):
                            failed.add(i)
                            moments[i] = None
                results.append((moments, used))
    return results

"""A graph model's weights: moved out of the graph, stored as float32, float16 or uint8,
and written as model.json's weights manifest over raw little-endian shards (numpy only,
but for reading the graph's constants)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgekit.build.targets.tfjs.rounding import uint8_grid
from edgekit.errors import ConversionFailed

# TF.js weight dtypes, and what other constant dtypes become (TF.js has no 64-bit types).
_WEIGHT_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.int32): "int32", np.dtype(np.bool_): "bool"}
_WIDENED = {np.dtype(np.float64): np.float32, np.dtype(np.float16): np.float32, np.dtype(np.int64): np.int32,
            np.dtype(np.int8): np.int32, np.dtype(np.uint8): np.int32, np.dtype(np.int16): np.int32,
            np.dtype(np.uint16): np.int32}


def extract_weights(graph_def) -> list[tuple[str, np.ndarray]]:
    """Move every Const's value out of the graph and its functions (a While loop's body
    and condition) into the weights; the node keeps its dtype and shape. TF.js looks
    weights up by node name in one map, so names must be unique across functions."""
    from tensorflow.python.framework import tensor_util

    weights, seen = [], set()
    nodes = list(graph_def.node) + [node for function in graph_def.library.function for node in function.node_def]
    for node in nodes:
        if node.op != "Const":
            continue
        if node.name in seen:
            raise ConversionFailed(f"tfjs: two constants are named {node.name} (in the graph or its functions), "
                                   "and TF.js keeps weights by name", "the TFLite artifacts do not depend on it")
        seen.add(node.name)
        tensor = node.attr["value"].tensor
        value = tensor_util.MakeNdarray(tensor)
        if value.dtype.kind in "SUO":
            raise ConversionFailed(f"tfjs: constant {node.name} holds strings, which edgekit's TF.js writer "
                                   "does not store", "the TFLite artifacts do not depend on it")
        if value.dtype in _WIDENED:
            value = value.astype(_WIDENED[value.dtype])
        if value.dtype not in _WEIGHT_DTYPES:
            raise ConversionFailed(f"tfjs: constant {node.name} is {value.dtype}, which TF.js cannot hold",
                                   "the TFLite artifacts do not depend on it")
        weights.append((node.name, value))
        dtype, shape = tensor.dtype, tensor.tensor_shape
        tensor.Clear()
        tensor.dtype = dtype
        tensor.tensor_shape.CopyFrom(shape)
    return weights


def quantize(value: np.ndarray, variant: str, fitted: np.ndarray | None = None) -> tuple[bytes, dict | None]:
    """The stored bytes of one weight, and its weights-manifest `quantization` entry.

    Only float32 weights are quantized. uint8 is affine per tensor, real = q * scale + min,
    over a range that always includes 0.0, with min nudged onto the grid so that 0.0 is
    exact (zero padding, pruned weights). This is what tensorflowjs_converter stores: on the
    digits CNN both give the same error to the last digit. `fitted`: uint8 integers on that
    grid rounded by error feedback (rounding.py), stored instead of the nearest ones.
    """
    if variant == "float32" or value.dtype != np.float32:
        return np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes(), None
    if variant == "float16":
        return value.astype("<f2").tobytes(), {"dtype": "float16", "original_dtype": "float32"}
    low, scale = uint8_grid(value)
    stored = fitted if fitted is not None else np.clip(np.rint((value - low) / scale), 0, 255).astype(np.uint8)
    return stored.tobytes(), {"dtype": "uint8", "min": low, "scale": scale, "original_dtype": "float32"}


def write_variant(folder: Path, topology: dict, signature: dict, weights, variant: str, shard_bytes: int,
                  tensorflow_version: str, edgekit_version: str, fitted: dict[str, np.ndarray] | None = None) -> None:
    """model.json and its shards (raw little-endian weights, cut every `shard_bytes`); `fitted`:
    uint8 integers by weight name, rounded by error feedback (uint8 only)."""
    specs, blob = [], bytearray()
    fitted = fitted if variant == "uint8" else None
    for name, value in weights:
        stored, quantization = quantize(value, variant, (fitted or {}).get(name))
        spec = {"name": name, "shape": list(value.shape), "dtype": _WEIGHT_DTYPES[value.dtype]}
        if quantization:
            spec["quantization"] = quantization
        specs.append(spec)
        blob += stored
    count = max(1, -(-len(blob) // shard_bytes))
    paths = [f"group1-shard{i}of{count}.bin" for i in range(1, count + 1)]
    folder.mkdir(parents=True)
    for i, path in enumerate(paths):
        (folder / path).write_bytes(blob[i * shard_bytes : (i + 1) * shard_bytes])
    model = {"format": "graph-model", "generatedBy": tensorflow_version, "convertedBy": f"edgekit {edgekit_version}",
             "modelTopology": topology, "signature": signature,
             "weightsManifest": [{"paths": paths, "weights": specs}]}
    # sorted keys: proto maps (a node's attrs) iterate in no fixed order, and builds cache on hashes
    (folder / "model.json").write_text(json.dumps(model, separators=(",", ":"), sort_keys=True, allow_nan=False))

"""Request and reply bodies <-> numpy, as TensorFlow Serving's REST API defines them.

Pure functions, no I/O: the HTTP layer (app.py) only routes and maps errors. Every
malformed body raises BadInput (HTTP 400) with a message naming the problem.

JSON, row format ("instances"): one entry per example.
    one input     {"instances": [[0.0, 0.1, ...], [0.2, ...]]}
    named inputs  {"instances": [{"sepal": [5.1, 3.5], "petal": [1.4, 0.2]}, ...]}
    reply         {"predictions": [[0.9, 0.1], ...]}            one output
                  {"predictions": [{"probs": [...], "embedding": [...]}, ...]}  several
  Every named input has the same number of examples (the batch).

JSON, columnar format ("inputs"): each value a whole batch.
    one input     {"inputs": [[0.0, 0.1, ...], [0.2, ...]]}
    named inputs  {"inputs": {"sepal": [[5.1, 3.5]], "petal": [[1.4, 0.2]]}}
    reply         {"outputs": [[0.9, 0.1]]}                     one output
                  {"outputs": {"probs": [[...]], "embedding": [[...]]}}         several

Both: "signature_name" is optional (default "serving_default"). A string value may be
sent as {"b64": "<base64>"}; an output whose name ends in "_bytes" is sent back that way.
Floats go out as JSON numbers, NaN and Infinity as the bare words NaN and Infinity, as TF
Serving writes them.

Binary (edgekit's own, for large tensors such as image batches; no JSON parsing):
    Content-Type: application/x-npy   the body is one .npy array: the single input
    Content-Type: application/x-npz   the body is an .npz keyed by input name
  The reply has the same type: a .npy of the single output, or an .npz keyed by output
  name. Arrays that need pickle are refused.
"""
from __future__ import annotations

import base64
import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import BadInput

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class ServingTensor:
    """A signature tensor as clients see it: real dtype (float for quantized tensors,
    which the server (de)quantizes), and shape with -1 for any size."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Request:
    signature_name: str
    inputs: dict[str, np.ndarray]
    style: str  # "row" | "columnar" | "npy" | "npz": how to shape the reply


# --- decoding -------------------------------------------------------------------------

try:
    from orjson import loads as _fast_loads  # raises JSONDecodeError, a ValueError
except ImportError:  # pragma: no cover - orjson comes with edgekit[runtime]
    _fast_loads = json.loads

def parse_json(body: bytes) -> dict[str, Any]:
    """orjson when installed (3x faster on an image's worth of numbers); the standard
    parser otherwise, and for what orjson refuses (the bare words NaN and Infinity)."""
    try:
        document = _fast_loads(body)
    except ValueError:
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInput(f"the body is not valid JSON: {exc}", 'send {"instances": [...]} or {"inputs": ...}') from None
    if not isinstance(document, dict):
        raise BadInput("the JSON body must be an object", 'send {"instances": [...]} or {"inputs": ...}')
    return document


def signature_name_of(document: dict[str, Any]) -> str:
    name = document.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(name, str) or not name:
        raise BadInput("signature_name must be a non-empty string", f'e.g. "{DEFAULT_SIGNATURE}"')
    return name


def decode_json(document: dict[str, Any], specs: list[ServingTensor]) -> Request:
    """A parsed JSON predict body -> named numpy arrays of the signature's dtypes."""
    signature = signature_name_of(document)
    has_rows, has_columns = "instances" in document, "inputs" in document
    if has_rows == has_columns:
        raise BadInput(
            'the body must have exactly one of "instances" (row format) and "inputs" (columnar format)',
            'e.g. {"instances": [[...], [...]]}',
        )
    if has_rows:
        return Request(signature, _decode_rows(document["instances"], specs), "row")
    return Request(signature, _decode_columns(document["inputs"], specs), "columnar")


def _decode_rows(instances: Any, specs: list[ServingTensor]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise BadInput('"instances" must be a non-empty list, one entry per example', 'e.g. {"instances": [[...]]}')
    named = all(isinstance(entry, dict) and "b64" not in entry for entry in instances)
    if not named:
        if any(isinstance(entry, dict) and "b64" not in entry for entry in instances):
            raise BadInput('"instances" mixes named (object) and plain entries', "use one form for every example")
        if len(specs) != 1:
            raise BadInput(
                f"the signature has {len(specs)} inputs, so each instance must be an object keyed by input name",
                "e.g. {" + ", ".join(f'"{s.name}": ...' for s in specs) + "}",
            )
        return {specs[0].name: _to_array(instances, specs[0], "instances")}
    names = {spec.name for spec in specs}
    for number, entry in enumerate(instances):
        if set(entry) != names:
            _name_mismatch(set(entry), specs, f"instance {number}")
    return {spec.name: _to_array([entry[spec.name] for entry in instances], spec, spec.name) for spec in specs}


def _decode_columns(inputs: Any, specs: list[ServingTensor]) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict) and "b64" not in inputs:
        if set(inputs) != {spec.name for spec in specs}:
            _name_mismatch(set(inputs), specs, '"inputs"')
        return {spec.name: _to_array(inputs[spec.name], spec, spec.name) for spec in specs}
    if len(specs) != 1:
        raise BadInput(
            f'the signature has {len(specs)} inputs, so "inputs" must be an object keyed by input name',
            '{"inputs": {' + ", ".join(f'"{s.name}": ...' for s in specs) + "}}",
        )
    return {specs[0].name: _to_array(inputs, specs[0], "inputs")}


def _name_mismatch(got: set[str], specs: list[ServingTensor], where: str):
    expected = {spec.name for spec in specs}
    parts = []
    if expected - got:
        parts.append("missing " + ", ".join(sorted(expected - got)))
    if got - expected:
        parts.append("unknown " + ", ".join(sorted(got - expected)))
    raise BadInput(f"{where}: input names do not fit the signature ({'; '.join(parts)})",
                   "the signature's inputs are: " + ", ".join(spec.name for spec in specs))


def _unb64(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise BadInput('a binary value must be {"b64": "<base64 string>"}', "encode bytes with base64")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise BadInput("a b64 value is not valid base64", "encode bytes with standard base64") from None
    if isinstance(value, list):
        return [_unb64(v) for v in value]
    return value


def _to_array(value: Any, spec: ServingTensor, where: str) -> np.ndarray:
    if spec.dtype.kind in "SO":
        return np.asarray(_unb64(value), dtype=object)
    try:
        array = np.asarray(value)
    except ValueError:
        raise BadInput(f"{where}: the values are ragged (lists of different lengths)",
                       f"every example of {spec.name!r} must have shape {_shape_text(spec.shape[1:])}") from None
    if array.dtype == object or array.dtype.kind in "SU":
        raise BadInput(f"{where}: expected numbers for {spec.name!r} ({spec.dtype.name}), got "
                       f"{'text' if array.dtype.kind in 'SU' else 'mixed values'}",
                       f"send {spec.dtype.name} values")
    return cast_input(array, spec, where)


def cast_input(array: np.ndarray, spec: ServingTensor, where: str) -> np.ndarray:
    """Check the dtype kind and the shape (every axis but the batch), then cast."""
    kind, want = array.dtype.kind, spec.dtype.kind
    fits = (want == "f" and kind in "fiub") or (want in "iu" and kind in "iub") or (want == "b" and kind == "b")
    if not fits:
        raise BadInput(f"{where}: {array.dtype} values cannot feed {spec.name!r}, which is {spec.dtype.name}",
                       f"send {spec.dtype.name} values")
    expected = spec.shape
    if array.ndim != len(expected) or any(e >= 0 and e != g for e, g in zip(expected[1:], array.shape[1:])):
        raise BadInput(f"{where}: shape {tuple(array.shape)} does not fit {spec.name!r}, "
                       f"which takes {_shape_text(expected)}", "the first axis is the batch of examples")
    return array.astype(spec.dtype, copy=False)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("N" if d < 0 else str(d) for d in shape) + "]"


def decode_binary(body: bytes, content_type: str, specs: list[ServingTensor]) -> Request:
    """An .npy (one input) or .npz (keyed by input name) body -> named numpy arrays."""
    if content_type == NPY:
        if len(specs) != 1:
            raise BadInput(f"an application/x-npy body holds one array; the signature has {len(specs)} inputs",
                           "send application/x-npz keyed by input name")
        return Request(DEFAULT_SIGNATURE, {specs[0].name: cast_input(_load_npy(body), specs[0], "body")}, "npy")
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise BadInput(f"the body is not a readable .npz without pickle: {exc}", "write it with np.savez") from None
    if set(arrays) != {spec.name for spec in specs}:
        _name_mismatch(set(arrays), specs, "the .npz body")
    counts = {len(a) for a in arrays.values() if a.ndim}
    if len(counts) > 1:
        raise BadInput(f"the .npz inputs have different batch sizes {sorted(counts)}", "give each input the same rows")
    return Request(DEFAULT_SIGNATURE, {s.name: cast_input(arrays[s.name], s, s.name) for s in specs}, "npz")


def _load_npy(body: bytes) -> np.ndarray:
    if not body.startswith(b"\x93NUMPY"):
        raise BadInput("the body is not a .npy file", "write it with np.save, or send JSON")
    try:
        return np.load(io.BytesIO(body), allow_pickle=False)
    except ValueError as exc:
        raise BadInput(f"the .npy body cannot be read without pickle: {exc}", "send a numeric array") from None


# --- encoding -------------------------------------------------------------------------

def _jsonable(name: str, array: np.ndarray) -> Any:
    if array.dtype.kind in "SO":
        items = array.tolist()
        if name.endswith("_bytes"):
            return _map_bytes(items, lambda b: {"b64": base64.b64encode(b).decode()})
        return _map_bytes(items, lambda b: b.decode("utf-8", errors="replace"))
    return array.tolist()


def _map_bytes(items: Any, convert) -> Any:
    if isinstance(items, list):
        return [_map_bytes(item, convert) for item in items]
    return convert(items) if isinstance(items, bytes) else items


def encode_json(outputs: dict[str, np.ndarray], style: str) -> bytes:
    """Named outputs -> {"predictions": ...} (row) or {"outputs": ...} (columnar)."""
    names = sorted(outputs)
    if style == "row":
        if len(names) == 1:
            body = {"predictions": _jsonable(names[0], outputs[names[0]])}
        else:
            columns = {name: _jsonable(name, outputs[name]) for name in names}
            count = len(next(iter(columns.values())))
            body = {"predictions": [{name: columns[name][i] for name in names} for i in range(count)]}
    else:
        if len(names) == 1:
            body = {"outputs": _jsonable(names[0], outputs[names[0]])}
        else:
            body = {"outputs": {name: _jsonable(name, outputs[name]) for name in names}}
    return json.dumps(body, separators=(",", ":")).encode()


def encode_binary(outputs: dict[str, np.ndarray], style: str) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    if style == "npy" and len(outputs) == 1:
        np.save(buffer, next(iter(outputs.values())), allow_pickle=False)
        return buffer.getvalue(), NPY
    np.savez(buffer, **outputs)
    return buffer.getvalue(), NPZ


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()

"""An integer model (int8, int16x8) op by op: where it drifts from the float model (the per-layer diagnosis), and
which ops --float-layers keeps in float (names, counts, outputs quantized again); for
int16x8, which ops LiteRT had no 16x8 kernel for.

Both read the .tflite flatbuffer (TensorFlow's flatbuffer_utils) and run LiteRT with every
intermediate tensor kept; activation_ranges.RangePicker calls them.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np

from edgekit.errors import BadInput, EdgekitError

DIAGNOSIS_ROWS = 50  # rows the per-layer diagnosis runs both models on
# What the diagnosis lists that no --float-layers can keep float: int8 I/O and its conversions.
NOT_KEPT_FLOAT = ("INPUT", "QUANTIZE", "DEQUANTIZE")


@dataclass
class _Graph:
    """A .tflite's first subgraph as --float-layers sees it: op types, op output names, inputs."""

    types: set[str]  # op types present, e.g. FULLY_CONNECTED
    outputs: list[str]  # every op's output tensor names, in full (fused names joined by ';')
    graph_inputs: set[str]

    @classmethod
    def of(cls, model_bytes: bytes) -> _Graph:
        model = model_object(model_bytes)
        graph = model.subgraphs[0]
        names = [tensor.name.decode() for tensor in graph.tensors]
        return cls({op_type(model, op) for op in graph.operators},
                   [names[index] for op in graph.operators for index in op.outputs],
                   {names[index] for index in graph.inputs})


@cache
def builtin_names() -> dict[int, str]:
    """TFLite builtin op codes -> their names (FULLY_CONNECTED)."""
    from tensorflow.lite.python import schema_py_generated as schema

    return {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


def model_object(model_bytes: bytes):
    """A .tflite flatbuffer as TensorFlow's flatbuffer_utils objects (subgraphs, tensors,
    operators, buffers), to read, or to change and write back."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))


def op_type(model, op) -> str:
    """An op's TFLite type name (FULLY_CONNECTED), from a flatbuffer_utils model object."""
    code = model.operatorCodes[op.opcodeIndex]
    return builtin_names().get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")


def float_layer_names(calibrated: bytes, wanted: tuple[str, ...]) -> tuple[set[str], set[str], list[str]]:
    """`wanted` (tensor names as the diagnosis shows them, or op types such as FULLY_CONNECTED,
    in any case) as the quantizer's denylists: op output tensor names (the converter fuses
    several names into one, joined by ';': any part matches), op types present in the model,
    and the names that match nothing."""
    graph = _Graph.of(calibrated)
    nodes, ops, unknown = set(), set(), []
    for name in wanted:
        found = {full for full in graph.outputs if name == full or name in full.split(";")}
        if found:
            nodes |= found
        elif name.upper() in graph.types:
            ops.add(name.upper())
        else:
            unknown.append(name)
    return nodes, ops, unknown


def unknown_layers_error(unknown: list[str], calibrated: bytes) -> EdgekitError:
    """--float-layers named something the model does not have: say so, with the closest
    names (its own op outputs and op types), or why an input cannot be kept float."""
    import difflib

    graph = _Graph.of(calibrated)
    inputs = [name for name in unknown if name in graph.graph_inputs or name.upper() in NOT_KEPT_FLOAT]
    if inputs:
        return BadInput(f"--float-layers: {', '.join(map(repr, inputs))} "
                        f"{'is' if len(inputs) == 1 else 'are'} the model's input or its quantization, which "
                        "every int8 model has: there is no op to keep float",
                        "keep the ops that read the input in float instead (the diagnosis lists them next), "
                        "or ship --variants dynamic (float activations)")
    names = {name.split(";")[0] for name in graph.outputs} | graph.types
    close = [match for name in unknown for match in difflib.get_close_matches(name, sorted(names), n=2)
             + difflib.get_close_matches(name.upper(), sorted(graph.types), n=1)]
    close = list(dict.fromkeys(close))
    return BadInput(
        f"--float-layers: the model has no op output or op type named {', '.join(map(repr, unknown))}",
        (f"did you mean {', '.join(close)}? " if close else "")
        + "use the tensor names that --diagnose lists (quantization.ranges.layers[].tensor in the manifest) "
        f"or op types this model has: {', '.join(sorted(graph.types))}")


def op_precision(model_bytes: bytes) -> dict:
    """How many ops of a quantized model compute in integers and how many in float."""
    found = ops_by_precision(model_bytes)
    return {"ops_int8": len(found["integer"]), "ops_float": len(found["float"])}


def ops_by_precision(model_bytes: bytes) -> dict[str, list[str]]:
    """The op types of a quantized model computing in integers (int8, or int16x8's int16) and in
    float, in graph order (QUANTIZE and DEQUANTIZE, the conversions between them, and integer
    shape arithmetic left out)."""
    model = model_object(model_bytes)
    graph = model.subgraphs[0]
    quantized, floating = {3, 7, 9}, {0, 1}  # TensorType: UINT8, INT16, INT8; FLOAT32, FLOAT16
    found: dict[str, list[str]] = {"integer": [], "float": []}
    for op in graph.operators:
        kind = op_type(model, op)
        if kind in NOT_KEPT_FLOAT:
            continue
        types = {graph.tensors[index].type for index in op.outputs}
        if types & quantized:
            found["integer"].append(kind)
        elif types & floating:
            found["float"].append(kind)
    return found


def requantized_outputs(model_bytes: bytes) -> list[str]:
    """Outputs of a finished int8 model that a float op computes and a QUANTIZE then rounds
    to int8 again (an output op kept float under --int8-io int8)."""
    model = model_object(model_bytes)
    graph = model.subgraphs[0]
    producer = {index: op for op in graph.operators for index in op.outputs}
    found = []
    for index in graph.outputs:
        op = producer.get(index)
        if op is None or op_type(model, op) != "QUANTIZE":
            continue
        before = producer.get(op.inputs[0])
        if before is not None and op_type(model, before) != "DEQUANTIZE" and graph.tensors[op.inputs[0]].type == 0:
            found.append(graph.tensors[index].name.decode().split(";")[0])
    return found


def layer_errors(calibrated: bytes, quantized: bytes, parts: Iterable[dict[str, np.ndarray]], signature: str) -> dict:
    """Where the int8 model drifts from the float one, layer by layer, over `parts` (the rows,
    as each call takes them; whole-model: each runs on its own, so a layer's figure includes
    what came before it). `layers`: for the quantized inputs and each quantized op output, in
    graph order, the op (INPUT for an int8 input tensor, QUANTIZE for a float one), the tensor,
    its scale, the float range seen, rms error over the scale (about 0.29 is plain rounding),
    rms error over the standard deviation of the tensor's float values, and how much of that
    the op added (`added`: its figure less the largest of its inputs'). `unmatched`: quantized
    outputs with no float tensor to compare."""
    layers, unmatched, graph_inputs = quantized_layers(calibrated, quantized)
    sums, low, high = _accumulate(layers, calibrated, quantized, parts, signature)
    result, by_tensor = [], {}
    for i, layer in enumerate(layers):
        noise, total, squares, size = sums[i]
        variance = squares / size - (total / size) ** 2
        rms = np.sqrt(noise / size)
        relative = _finite(rms / np.sqrt(variance)) if variance > 0 else None
        before = max((by_tensor.get(index) or 0.0 for index in layer["inputs"]), default=0.0)
        by_tensor[layer["index"]] = relative
        if layer["op"] == "QUANTIZE" and not set(layer["inputs"]) <= graph_inputs:
            added = None  # it requantizes a float op's output (--float-layers): its error came before
        else:
            added = None if relative is None else round(relative - before, 4)
        result.append({"op": layer["op"], "tensor": layer["tensor"], "scale": layer["scale"],
                       "range": [float(low[i]), float(high[i])],
                       # None where the quantizer gave a tensor no step (a constant zero state: scale 0)
                       "rms_over_scale": _round(_finite(rms / layer["scale"]) if layer["scale"] > 0 else None, 3),
                       "rms_over_tensor_std": None if relative is None else round(relative, 4), "added": added})
    return {"layers": result, "unmatched": unmatched}


def _finite(value) -> float | None:
    """A figure for the manifest (JSON has no NaN), or None where the arithmetic gave none."""
    value = float(value)
    return value if np.isfinite(value) else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def quantized_layers(calibrated: bytes, quantized: bytes) -> tuple[list[dict], list[str], set[int]]:
    """Each quantized tensor of `quantized` (graph inputs, then op outputs in graph order) with
    its float twin's index in `calibrated`; the ones without a twin; the graph's input indices."""
    model = model_object(quantized)
    graph = model.subgraphs[0]
    float_index = {t.name: i for i, t in enumerate(model_object(calibrated).subgraphs[0].tensors)}
    # With float I/O an output's int8 tensor may be renamed, a DEQUANTIZE taking the float name;
    # a QUANTIZE's int8 output stands for its float input.
    other_names = {op.inputs[0]: graph.tensors[op.outputs[0]].name for op in graph.operators
                   if op_type(model, op) == "DEQUANTIZE"}
    other_names.update({op.outputs[0]: graph.tensors[op.inputs[0]].name for op in graph.operators
                        if op_type(model, op) == "QUANTIZE"})
    produced = [("INPUT", index, []) for index in graph.inputs]
    produced += [(op_type(model, op), op.outputs[0], list(op.inputs)) for op in graph.operators]
    layers, unmatched = [], []
    for op, index, inputs in produced:
        tensor = graph.tensors[index]
        quantization = tensor.quantization
        if quantization is None or quantization.scale is None or len(quantization.scale) != 1:
            continue
        name = next((n for n in (tensor.name, other_names.get(index)) if n in float_index), None)
        if name is None:
            unmatched.append(f"{tensor.name.decode().split(';')[0]} ({op})")
            continue
        layers.append({"op": op, "tensor": name.decode().split(";")[0], "index": index,
                       "float_index": float_index[name], "scale": float(quantization.scale[0]),
                       "zero_point": int(quantization.zeroPoint[0]), "inputs": inputs})
    return layers, unmatched, {int(index) for index in graph.inputs}


def _accumulate(layers: list[dict], calibrated: bytes, quantized: bytes, parts: Iterable[dict[str, np.ndarray]],
                signature: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both models run on each part with every tensor kept; per layer, the sums the figures
    need (squared error, sum, sum of squares, count of the float values) and their range."""
    parts = list(parts)  # each model runs over them
    sums = np.zeros((len(layers), 4))
    low, high = np.full(len(layers), np.inf), np.full(len(layers), -np.inf)
    for real_run, int8_run in zip(kept_tensor_runs(calibrated, signature, parts),
                                  kept_tensor_runs(quantized, signature, parts)):
        for i, layer in enumerate(layers):
            real = real_run.get_tensor(layer["float_index"]).astype(np.float64)
            approx = (int8_run.get_tensor(layer["index"]).astype(np.float64) - layer["zero_point"]) * layer["scale"]
            sums[i] += [np.sum((approx - real) ** 2), real.sum(), np.sum(real**2), real.size]
            low[i], high[i] = min(low[i], real.min()), max(high[i], real.max())
    return sums, low, high


def keeping_all_tensors(model: bytes):
    """A LiteRT interpreter for `model` that keeps every intermediate tensor, without LiteRT's
    warning that this is for debugging (it is what edgekit uses it for)."""
    import warnings

    from edgekit.runtime.tflite import interpreter_class

    interpreter_cls, _ = interpreter_class()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        return interpreter_cls(model_content=model, experimental_preserve_all_tensors=True)


def kept_tensor_runs(model: bytes, signature: str, parts: Iterable[dict[str, np.ndarray]]) -> Iterator:
    """`model` run on each part with every intermediate tensor kept (LiteRT reuses their memory
    otherwise): yields the interpreter after each run, to read any tensor of it."""
    interpreter = keeping_all_tensors(model)
    runner = interpreter.get_signature_runner(signature)
    for part in parts:
        runner(**_feeds(runner, part))
        yield interpreter


def _feeds(runner, part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`part` as the runner's inputs take it: quantized with their scale where they are integer."""
    fed = {}
    for name, detail in runner.get_input_details().items():
        value = np.asarray(part[name], np.float64)
        scale, zero_point = detail["quantization"]
        if np.issubdtype(detail["dtype"], np.integer) and scale:
            limits = np.iinfo(detail["dtype"])
            value = np.clip(np.round(value / scale + zero_point), limits.min, limits.max)
        fed[name] = value.astype(detail["dtype"])
    return fed

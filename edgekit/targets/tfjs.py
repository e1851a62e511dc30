"""TensorFlow.js graph models from a SavedModel signature, written by edgekit itself.

Not with the `tensorflowjs` package: beside TensorFlow 2.21 and numpy 2 it pulls
tensorflow 2.19 over tensorflow-cpu, downgrades numpy and protobuf, and imports jax,
tf_keras and tensorflow_decision_forests at module level. The graph-model format is
small: a GraphDef as proto3 JSON plus a weights manifest over raw little-endian shards.

The steps, each a function below: freeze the signature (control flow kept as While/If
ops over functions); grappler (pruning, constant folding, arithmetic, dependency); fuse
convolutions and matmuls with the per-channel Mul, bias add and activation after them
(Keras 3 lowers BatchNormalization to Mul/AddV2, which neither grappler nor TF.js's
converter folds into a depthwise convolution); check every op against the ops TF.js
runs; move each Const's value (the functions' too) into the weights; write one folder
per variant. Grappler can abort the whole process (a fatal "Type not set"), so
`TfjsWriter` runs all of it in a subprocess: `python -m edgekit.targets.tfjs`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import BadInput, ConversionFailed
from edgekit.manifest import Artifact, TensorSpec
from edgekit.metrics import Tolerance
from edgekit.targets.base import BuildContext, Pending, Target

VARIANTS = ("float32", "float16", "uint8")
DEFAULT_VARIANTS = ("float32", "uint8")
DEFAULT_SHARD_MB = 4.0
# What the check in TF.js accepts against the SavedModel (see metrics.judge). uint8 stores
# each weight tensor with one affine step of (max - min) / 255, coarser than TFLite's
# per-channel int8 weights (dynamic: 0.05), so its relative L2 may be larger; against the
# spread, every quantized variant is held to the same 5%.
TOLERANCES = {"float32": Tolerance(1e-3, 0.01), "float16": Tolerance(0.01, 0.02), "uint8": Tolerance(0.1, 0.05)}
FUSABLE = {"Conv2D": "_FusedConv2D", "DepthwiseConv2dNative": "FusedDepthwiseConv2dNative", "MatMul": "_FusedMatMul"}
ACTIVATIONS = {"Relu", "Relu6", "Elu", "Sigmoid", "LeakyRelu"}  # the ones TF.js's fused kernels take
OPS_SNAPSHOT = Path(__file__).with_name("tfjs_ops.json")  # from @tensorflow/tfjs-converter, see supported_ops()
UNSUPPORTED_EXIT = 3  # the subprocess's exit status when the op check fails


def parse_variants(text: str) -> tuple[str, ...]:
    """`--tfjs float32,uint8` -> ("float32", "uint8"); "none" -> ()."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if names == ("none",):
        return ()
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise BadInput(f"unknown TF.js variant {', '.join(unknown) or repr(text)}",
                       f"use a comma-separated list of {', '.join(VARIANTS)}, or none")
    return names


def supported_ops(node_modules: Path | None) -> tuple[set[str], str]:
    """The TensorFlow op names TF.js executes, and where the list came from.

    The installed @tensorflow/tfjs-converter is the truth (its op_list/*.js files); where
    Node packages are not installed, the snapshot edgekit ships from the pinned version.
    """
    op_lists = node_modules / "@tensorflow/tfjs-converter/dist/operations/op_list" if node_modules else None
    if op_lists is not None and op_lists.is_dir():
        names = set()
        for path in sorted(op_lists.glob("*.js")):
            names.update(re.findall(r"'tfOpName':\s*'([A-Za-z0-9_]+)'", path.read_text()))
        version = json.loads((op_lists.parents[2] / "package.json").read_text())["version"]
        return names, f"@tensorflow/tfjs-converter {version}"
    snapshot = json.loads(OPS_SNAPSHOT.read_text())
    return set(snapshot["ops"]), f"@tensorflow/tfjs-converter {snapshot['version']} (edgekit's snapshot)"


# --- build world: everything below the line runs in the subprocess, with TensorFlow ---

@dataclass(frozen=True)
class Endpoint:
    """A signature tensor: its key (the name users pass) and the graph tensor it is."""

    key: str
    tensor: str  # "node:0"
    dtype: str  # numpy name
    shape: list[int | None] | None


def freeze(saved_model_dir: Path, signature: str):
    """The signature's function with its variables turned into constants: a GraphDef
    plus its input and output endpoints, in the signature's key order."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    loaded = tf.saved_model.load(str(saved_model_dir))  # keep it alive: the variables live in it
    if signature not in loaded.signatures:
        raise BadInput(f"the SavedModel has no signature {signature!r}", "pass --signature with one it has")
    function = loaded.signatures[signature]
    # Control flow stays as While/If ops over functions: TF.js runs a Keras 3 LSTM that way,
    # while lowered to Enter/Exit/Merge/Switch frames (tensorflowjs_converter's way) it fails
    # with "Cannot compute the outputs [Identity] from the provided inputs".
    frozen = convert_variables_to_constants_v2(function, lower_control_flow=False)
    _, input_specs = function.structured_input_signature
    placeholders = [t for t in frozen.inputs if t.dtype != tf.resource]
    keys = sorted(input_specs)  # flattened structured inputs are in sorted key order
    by_name = {t.name.split(":")[0]: t for t in placeholders}
    inputs = []
    for key, tensor in zip(keys, placeholders):
        tensor = by_name.get(key, tensor)  # placeholders are named after the keys when they can be
        inputs.append(_endpoint(key, tensor))
    outputs = [_endpoint(key, tensor) for key, tensor in zip(sorted(function.structured_outputs), frozen.outputs)]
    return frozen.graph.as_graph_def(), inputs, outputs


def _endpoint(key: str, tensor) -> Endpoint:
    shape = None if tensor.shape.rank is None else tensor.shape.as_list()
    return Endpoint(key, tensor.name, tensor.dtype.as_numpy_dtype.__name__, shape)


def optimize(graph_def, outputs: list[Endpoint]):
    """Grappler's pruning, constant folding, arithmetic and dependency passes (twice)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph_def, graph=graph)
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.extend(o.tensor for o in outputs)
    meta_graph.collection_def["train_op"].CopyFrom(fetch)  # grappler keeps what this lists
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers[:] = ["pruning", "constfold", "arithmetic", "dependency"] * 2
    rewrite.meta_optimizer_iterations = 1
    return tf_optimizer.OptimizeGraph(config, meta_graph)


class _Graph:
    """A GraphDef's nodes by name, with who consumes each node's first output."""

    def __init__(self, graph_def, keep: set[str]):
        self.graph_def, self.keep = graph_def, keep
        self.nodes = {node.name: node for node in graph_def.node}
        self.consumers: dict[str, list] = {}
        for node in graph_def.node:
            for name in node.input:
                self.consumers.setdefault(name.lstrip("^").split(":")[0], []).append(node)

    def const(self, name: str) -> np.ndarray | None:
        from tensorflow.python.framework import tensor_util

        node = self.nodes.get(name.split(":")[0])
        if node is None or node.op != "Const" or name.endswith((":1", ":2")):
            return None
        return tensor_util.MakeNdarray(node.attr["value"].tensor)

    def sole_consumer(self, node):
        """The one node that reads `node`, when it has exactly one and `node` is no output."""
        consumers = self.consumers.get(node.name, [])
        if node.name in self.keep or len(consumers) != 1 or any(i.startswith("^") for i in consumers[0].input):
            return None
        return consumers[0]

    def other_const(self, node, previous) -> np.ndarray | None:
        """For a binary node fed by `previous`, the value of its constant other operand."""
        if len(node.input) != 2:
            return None
        names = [name.split(":")[0] for name in node.input]
        if names.count(previous.name) != 1:
            return None
        return self.const(node.input[1 - names.index(previous.name)])


def _per_channel(value: np.ndarray | None, channels: int) -> np.ndarray | None:
    """`value` as a [channels] vector when it broadcasts along the last axis only."""
    if value is None or value.dtype != np.float32 or any(d != 1 for d in value.shape[:-1]):
        return None
    if value.size == 1:
        return np.full(channels, value.reshape(-1)[0], np.float32)
    return value.reshape(-1) if value.size == channels else None


def fuse(graph_def, keep: set[str]):
    """Fold `conv -> Mul(c) -> Add(b) -> activation` chains into one fused TF.js op.

    The Mul folds into the filter, the add becomes the fused bias, and the activation the
    fused activation, as TF.js's _FusedConv2D, FusedDepthwiseConv2dNative and _FusedMatMul
    take them. The fused node keeps the name of the chain's last node, so nothing
    downstream changes. Returns the new GraphDef and how many chains were fused.
    """
    from tensorflow.core.framework import graph_pb2, node_def_pb2

    graph = _Graph(graph_def, keep)
    removed: set[str] = set()
    replaced: dict[str, list] = {}  # name of the chain's last node -> [fused node, filter const, bias const]
    fused = 0
    for node in graph_def.node:
        if node.op not in FUSABLE or node.name in removed or len(node.input) != 2:
            continue
        if node.attr["data_format"].s not in (b"", b"NHWC") or node.attr["transpose_a"].b:
            continue
        weights = graph.const(node.input[1])
        if weights is None or weights.dtype != np.float32:
            continue
        if node.op == "Conv2D":
            channels = weights.shape[-1]
        elif node.op == "DepthwiseConv2dNative":
            channels = weights.shape[2] * weights.shape[3]
        else:
            channels = weights.shape[0] if node.attr["transpose_b"].b else weights.shape[1]
        chain, tail, bias, activation = [node], node, None, None
        step = graph.sole_consumer(tail)
        scale = _per_channel(graph.other_const(step, tail), channels) if step is not None and step.op == "Mul" else None
        if scale is not None:
            chain.append(step)
            tail = step
            step = graph.sole_consumer(tail)
        if step is not None and step.op in ("BiasAdd", "Add", "AddV2"):
            bias = _per_channel(graph.other_const(step, tail), channels)
            if step.op == "BiasAdd" and step.input[0].split(":")[0] != tail.name:
                bias = None
            if bias is not None:
                chain.append(step)
                tail = step
                step = graph.sole_consumer(tail)
        if step is not None and step.op in ACTIVATIONS:
            activation = step
            chain.append(step)
            tail = step
        if len(chain) == 1:
            continue
        if scale is not None:
            if node.op == "Conv2D":
                weights = weights * scale
            elif node.op == "DepthwiseConv2dNative":
                weights = weights * scale.reshape(weights.shape[2], weights.shape[3])
            else:
                weights = weights * (scale[:, None] if node.attr["transpose_b"].b else scale)
        if bias is None and activation is None:  # only a Mul: fold it, keep the plain op
            ops, op = [], node.op
        else:
            ops, op = [b"BiasAdd"] + ([activation.op.encode()] if activation is not None else []), FUSABLE[node.op]
            if bias is None:
                bias = np.zeros(channels, np.float32)  # TF.js's fused kernels take the activation second
        name = tail.name
        new = node_def_pb2.NodeDef(name=name, op=op, device=node.device)
        filter_name = f"{name}/edgekit_filter"
        new.input.extend([node.input[0], filter_name])
        for key, value in node.attr.items():
            new.attr[key].CopyFrom(value)
        consts = [_const_node(filter_name, weights.astype(np.float32))]
        if ops:
            bias_name = f"{name}/edgekit_bias"
            new.input.append(bias_name)
            consts.append(_const_node(bias_name, bias.astype(np.float32)))
            new.attr["fused_ops"].list.s.extend(ops)
            new.attr["num_args"].i = 1
            new.attr["epsilon"].f = 0.0
            alpha = activation.attr["alpha"].f if activation is not None and activation.op == "LeakyRelu" else 0.2
            new.attr["leakyrelu_alpha"].f = alpha
        removed.update(n.name for n in chain)
        replaced[name] = [new, *consts]
        fused += 1
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in replaced:
            out.node.extend(replaced[node.name])
        elif node.name not in removed:
            out.node.append(node)
    return _drop_unused_consts(out, keep), fused


def _const_node(name: str, value: np.ndarray):
    from tensorflow.core.framework import node_def_pb2
    from tensorflow.python.framework import dtypes, tensor_util

    node = node_def_pb2.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = dtypes.as_dtype(value.dtype).as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(value))
    return node


def _drop_unused_consts(graph_def, keep: set[str]):
    from tensorflow.core.framework import graph_pb2

    used = {name.lstrip("^").split(":")[0] for node in graph_def.node for name in node.input}
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(n for n in graph_def.node if n.op != "Const" or n.name in used or n.name in keep)
    return out


def graph_ops(graph_def) -> set[str]:
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


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


def quantize(value: np.ndarray, variant: str) -> tuple[bytes, dict | None]:
    """The stored bytes of one weight, and its weights-manifest `quantization` entry.

    Only float32 weights are quantized. uint8 is affine per tensor, real = q * scale + min,
    over a range that always includes 0.0, with min nudged onto the grid so that 0.0 is
    exact (zero padding, pruned weights). This is what tensorflowjs_converter stores: on the
    digits CNN both give the same error to the last digit.
    """
    if variant == "float32" or value.dtype != np.float32:
        return np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes(), None
    if variant == "float16":
        return value.astype("<f2").tobytes(), {"dtype": "float16", "original_dtype": "float32"}
    low, high = float(value.min(initial=0.0)), float(value.max(initial=0.0))
    scale = (high - low) / 255 if high > low else 1.0
    low = round(low / scale) * scale
    stored = np.clip(np.rint((value - low) / scale), 0, 255).astype(np.uint8)
    return stored.tobytes(), {"dtype": "uint8", "min": low, "scale": scale, "original_dtype": "float32"}


def _tensor_info(endpoint: Endpoint) -> dict:
    """A signature entry as proto3 JSON (TensorInfo), as model.json's "signature" holds it."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.python.framework import dtypes

    dtype = types_pb2.DataType.Name(dtypes.as_dtype(endpoint.dtype).as_datatype_enum)
    info = {"name": endpoint.tensor, "dtype": dtype}
    if endpoint.shape is None:
        info["tensorShape"] = {"unknownRank": True}
    else:
        info["tensorShape"] = {"dim": [{"size": str(-1 if d is None else d)} for d in endpoint.shape]}
    return info


def write_variant(folder: Path, topology: dict, signature: dict, weights, variant: str, shard_bytes: int,
                  tensorflow_version: str, edgekit_version: str) -> None:
    """model.json and its shards (raw little-endian weights, cut every `shard_bytes`)."""
    specs, blob = [], bytearray()
    for name, value in weights:
        stored, quantization = quantize(value, variant)
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


def build(saved_model_dir: Path, signature: str, out: Path, variants: tuple[str, ...], shard_mb: float,
          node_modules: Path | None) -> dict:
    """Everything the subprocess does; returns what the parent needs for the manifest."""
    import tensorflow as tf
    from google.protobuf import json_format

    from edgekit._version import __version__

    graph_def, inputs, outputs = freeze(saved_model_dir, signature)
    keep = {e.tensor.split(":")[0] for e in inputs + outputs}
    graph_def = optimize(graph_def, outputs)
    graph_def, fused = fuse(graph_def, keep)
    known, ops_source = supported_ops(node_modules)
    unsupported = sorted(graph_ops(graph_def) - known)
    summary = {"inputs": [e.__dict__ for e in inputs], "outputs": [e.__dict__ for e in outputs],
               "fused": fused, "ops_source": ops_source, "unsupported": unsupported}
    if unsupported:
        return summary
    weights = extract_weights(graph_def)
    topology = json_format.MessageToDict(graph_def)
    signature_json = {"inputs": {e.key: _tensor_info(e) for e in inputs},
                      "outputs": {e.key: _tensor_info(e) for e in outputs}}
    shard_bytes = int(shard_mb * 1024 * 1024)
    for variant in variants:
        write_variant(out / f"tfjs_{variant}", topology, signature_json, weights, variant, shard_bytes,
                      tf.__version__, __version__)
    return summary


class TfjsWriter:
    """The TF.js writer in its own process: `python -m edgekit.targets.tfjs`.

    convert starts it before the TFLite variants, so on a second core it overlaps them,
    and collects it with `result()` at the first TF.js step. Its output goes to temporary
    files, not pipes: a child that logs more than a pipe holds would block while nobody reads.
    """

    def __init__(self, saved_model_dir: Path, signature: str, variants: tuple[str, ...], shard_mb: float,
                 out: Path, node_modules: Path | None, quiet: bool = True):
        self.quiet = quiet  # False (--debug): the writer's log is copied to stderr when it ends
        command = [sys.executable, "-m", "edgekit.targets.tfjs", str(saved_model_dir), "--signature", signature,
                   "--out", str(out), "--variants", ",".join(variants), "--shard-mb", str(shard_mb)]
        if node_modules is not None:
            command += ["--node-modules", str(node_modules)]
        self._stdout, self._stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self._process = subprocess.Popen(command, stdout=self._stdout, stderr=self._stderr,
                                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        self._result: dict | ConversionFailed | None = None

    def result(self) -> dict:
        """Wait for the writer; its summary, or ConversionFailed naming the ops TF.js lacks
        (nothing written) or saying how the process died."""
        if self._result is None:
            code = self._process.wait()
            stdout, stderr = (self._read(f) for f in (self._stdout, self._stderr))
            if not self.quiet:
                sys.stderr.write(stderr)
            try:
                self._result = _summary(code, stdout, stderr)
            except ConversionFailed as exc:
                self._result = exc
        if isinstance(self._result, ConversionFailed):
            raise self._result
        return self._result

    def stop(self) -> None:
        """Kill a writer still running (convert failed or was interrupted): it writes into
        the staging folder that is about to be removed."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        for handle in (self._stdout, self._stderr):
            handle.close()

    @staticmethod
    def _read(handle) -> str:
        handle.seek(0)
        return handle.read().decode(errors="replace")


def _summary(code: int, stdout: str, stderr: str) -> dict:
    last = (stdout.strip().splitlines() or [""])[-1]
    if code in (0, UNSUPPORTED_EXIT) and last.startswith("{"):
        summary = json.loads(last)
        if summary["unsupported"]:
            raise ConversionFailed(
                f"tfjs: TF.js has no kernel for these ops: {', '.join(summary['unsupported'])} "
                f"(checked against {summary['ops_source']})",
                "the TFLite artifacts do not depend on it; for the web, replace those ops in the model")
        return summary
    log = [line for line in stderr.strip().splitlines() if line.strip()]
    ours = [line.removeprefix("error: ") for line in log if line.startswith("error: ")]
    if code == 2 and ours:  # a model the writer refused, with its reason
        raise ConversionFailed(ours[-1], "the TFLite artifacts do not depend on it")
    errors = [line for line in log if line.startswith(("F0", "E0")) or "Error" in line]
    detail = (errors or log or ["no output"])[-1].strip()
    how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
    raise ConversionFailed(f"tfjs: the TF.js writer {how}: {detail}",
                           "the TFLite artifacts do not depend on it; rerun with --debug for the full log")


def convert_tfjs(saved_model_dir: Path, signature: str, variants: tuple[str, ...], shard_mb: float,
                 out: Path, node_modules: Path | None) -> dict:
    """Write OUT/tfjs_<variant>/ for each variant and return the writer's summary."""
    writer = TfjsWriter(saved_model_dir, signature, variants, shard_mb, out, node_modules)
    try:
        return writer.result()
    finally:
        writer.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="edgekit's TF.js writer (run by edgekit convert)")
    parser.add_argument("saved_model", type=Path)
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB)
    parser.add_argument("--node-modules", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.node_modules is None:
        from edgekit.runtime.tfjs import node_modules

        args.node_modules = node_modules()
    try:
        summary = build(args.saved_model, args.signature, args.out, parse_variants(args.variants), args.shard_mb,
                        args.node_modules)
    except (BadInput, ConversionFailed) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary))
    sys.exit(UNSUPPORTED_EXIT if summary["unsupported"] else 0)


if __name__ == "__main__":
    main()


class TfjsTarget(Target):
    """All asked-for TF.js variants, written by one TfjsWriter process that starts with the
    job (so it overlaps the TFLite conversions); each step waits for it, then loads its
    variant in stock TF.js under Node.js for the check, or says why it cannot."""

    format, engine = "tfjs", "TF.js"

    def __init__(self, context: BuildContext, variants: tuple[str, ...], shard_mb: float):
        super().__init__(context)
        self.variants, self.shard_mb = variants, shard_mb
        self.writer: TfjsWriter | None = None

    def steps(self) -> list[str]:
        return [f"tfjs_{variant}" for variant in self.variants]

    def start(self) -> None:
        from edgekit.runtime import tfjs as tfjs_runtime

        context = self.context
        self.writer = TfjsWriter(context.source_dir, context.signature, self.variants, self.shard_mb,
                                 context.staging, tfjs_runtime.node_modules(), context.quiet)

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.stop()

    def versions(self) -> dict[str, str]:
        """The TF.js version that checked the TF.js artifacts, or why none did."""
        from edgekit.runtime import tfjs as tfjs_runtime

        reason = tfjs_runtime.unavailable_reason()
        return {"tfjs": f"not run: {reason}" if reason else tfjs_runtime.tfjs_version()}

    def build(self, step: str) -> Artifact | Pending:
        from edgekit.errors import EdgekitError
        from edgekit.files import sha256_file, sha256_tree
        from edgekit.manifest import Check
        from edgekit.runtime import tfjs as tfjs_runtime

        context, variant = self.context, step.removeprefix("tfjs_")
        fields = dict(name=step, format="tfjs", variant=variant, signature=context.signature,
                      quantization={"weights": variant, "activations": "float32"})
        try:
            summary = self.writer.result()
        except EdgekitError as exc:
            return Artifact(status="failed", error=str(exc), **fields)
        folder = context.staging / step
        files = [{"path": f"{step}/{p.name}", "bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(folder.iterdir())]
        fields.update(file=f"{step}/model.json", bytes=sum(f["bytes"] for f in files), sha256=sha256_tree(folder),
                      files=files)
        specs = {spec.name: spec for spec in [*context.signature_spec.inputs, *context.signature_spec.outputs]}

        def spec(endpoint: dict) -> TensorSpec:
            """As TF.js sees it: the signature key, TF.js's dtype, the graph node behind it."""
            known = specs.get(endpoint["key"])
            dtype, shape = (known.dtype, known.shape) if known else (endpoint["dtype"], endpoint["shape"])
            return TensorSpec(name=endpoint["key"], dtype=tfjs_runtime.tfjs_dtype(dtype), shape=shape,
                              node=endpoint["tensor"].split(":")[0])

        inputs, outputs = [spec(e) for e in summary["inputs"]], [spec(e) for e in summary["outputs"]]
        tolerance = TOLERANCES[variant]
        reason = tfjs_runtime.unavailable_reason()
        if reason is not None:
            check = Check(status="skipped", samples=0, tolerance_rel_l2=tolerance.rel_l2, tolerance_spread=tolerance.spread,
                          reason=f"{reason}, so TF.js could not run it; {tfjs_runtime.SETUP_HINT}")
            return Artifact(status="unverified", inputs=inputs, outputs=outputs, check=check, **fields)
        try:
            model = tfjs_runtime.TfjsModel(folder, backend="wasm")
        except EdgekitError as exc:
            return Artifact(status="failed", inputs=inputs, outputs=outputs,
                            error=f"TF.js cannot load it: {exc.message}", **fields)
        return Pending(step, fields, model, tolerance, inputs, outputs)

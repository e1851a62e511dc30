"""The signature's graph, as TF.js will run it: frozen, grappler-optimized, its ops checked
against the ops TF.js executes, its endpoints in model.json's signature form."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import BadInput

OPS_SNAPSHOT = Path(__file__).with_name("tfjs_ops.json")  # from @tensorflow/tfjs-converter, see supported_ops()


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
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

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


def graph_ops(graph_def) -> set[str]:
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


def signature_entry(endpoint: Endpoint) -> dict:
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

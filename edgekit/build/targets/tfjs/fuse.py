"""Conv/MatMul -> Mul -> bias add -> activation chains folded into TF.js's fused ops.

Keras 3 lowers BatchNormalization to Mul/AddV2, which neither grappler nor TF.js's converter
folds into a depthwise convolution; TF.js's _FusedConv2D, FusedDepthwiseConv2dNative and
_FusedMatMul take the folded filter, a bias and an activation in one kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FUSABLE = {"Conv2D": "_FusedConv2D", "DepthwiseConv2dNative": "FusedDepthwiseConv2dNative", "MatMul": "_FusedMatMul"}
ACTIVATIONS = {"Relu", "Relu6", "Elu", "Sigmoid", "LeakyRelu"}  # the ones TF.js's fused kernels take


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


@dataclass
class _Chain:
    """conv/matmul -> [Mul(scale)] -> [bias add] -> [activation], as found from its first node."""

    nodes: list
    channels: int
    weights: np.ndarray
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    activation: object | None = None


def _channels(node, weights: np.ndarray) -> int:
    if node.op == "Conv2D":
        return weights.shape[-1]
    if node.op == "DepthwiseConv2dNative":
        return weights.shape[2] * weights.shape[3]
    return weights.shape[0] if node.attr["transpose_b"].b else weights.shape[1]


def _find_chain(graph: _Graph, node) -> _Chain | None:
    """The chain that starts at `node`, when it has more than the node itself."""
    if node.op not in FUSABLE or len(node.input) != 2:
        return None
    if node.attr["data_format"].s not in (b"", b"NHWC") or node.attr["transpose_a"].b:
        return None
    weights = graph.const(node.input[1])
    if weights is None or weights.dtype != np.float32:
        return None
    chain = _Chain([node], _channels(node, weights), weights)
    step = graph.sole_consumer(node)
    if step is not None and step.op == "Mul":
        chain.scale = _per_channel(graph.other_const(step, chain.nodes[-1]), chain.channels)
        if chain.scale is not None:
            chain.nodes.append(step)
            step = graph.sole_consumer(step)
    if step is not None and step.op in ("BiasAdd", "Add", "AddV2"):
        tail = chain.nodes[-1]
        bias = _per_channel(graph.other_const(step, tail), chain.channels)
        if step.op == "BiasAdd" and step.input[0].split(":")[0] != tail.name:
            bias = None
        if bias is not None:
            chain.bias = bias
            chain.nodes.append(step)
            step = graph.sole_consumer(step)
    if step is not None and step.op in ACTIVATIONS:
        chain.activation = step
        chain.nodes.append(step)
    return chain if len(chain.nodes) > 1 else None


def _folded_weights(chain: _Chain) -> np.ndarray:
    """The filter with the Mul's per-channel scale folded in."""
    node, weights, scale = chain.nodes[0], chain.weights, chain.scale
    if scale is None:
        return weights
    if node.op == "Conv2D":
        return weights * scale
    if node.op == "DepthwiseConv2dNative":
        return weights * scale.reshape(weights.shape[2], weights.shape[3])
    return weights * (scale[:, None] if node.attr["transpose_b"].b else scale)


def _fused_nodes(chain: _Chain) -> list:
    """The node that replaces the chain (named as its last node), then its filter and bias consts."""
    from tensorflow.core.framework import node_def_pb2

    node, activation, bias = chain.nodes[0], chain.activation, chain.bias
    if bias is None and activation is None:  # only a Mul: fold it, keep the plain op
        ops, op = [], node.op
    else:
        ops, op = [b"BiasAdd"] + ([activation.op.encode()] if activation is not None else []), FUSABLE[node.op]
        if bias is None:
            bias = np.zeros(chain.channels, np.float32)  # TF.js's fused kernels take the activation second
    name = chain.nodes[-1].name
    new = node_def_pb2.NodeDef(name=name, op=op, device=node.device)
    filter_name = f"{name}/edgekit_filter"
    new.input.extend([node.input[0], filter_name])
    for key, value in node.attr.items():
        new.attr[key].CopyFrom(value)
    weights = _folded_weights(chain)
    if op == "_FusedMatMul" and node.attr["transpose_b"].b:
        # TF.js's fused matmul under transposeB gave wrong outputs in its check (relative L2 0.62 on
        # a 16x8 layer with a bias; helper-14): store the filter as [in, out] instead
        weights = weights.T
        new.attr["transpose_b"].b = False
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
    return [new, *consts]


def fuse(graph_def, keep: set[str]):
    """Fold `conv -> Mul(c) -> Add(b) -> activation` chains into one fused TF.js op.

    The Mul folds into the filter, the add becomes the fused bias, and the activation the
    fused activation, as TF.js's _FusedConv2D, FusedDepthwiseConv2dNative and _FusedMatMul
    take them. The fused node keeps the name of the chain's last node, so nothing
    downstream changes. Returns the new GraphDef and how many chains were fused.
    """
    from tensorflow.core.framework import graph_pb2

    graph = _Graph(graph_def, keep)
    removed: set[str] = set()
    replaced: dict[str, list] = {}  # name of the chain's last node -> [fused node, filter const, bias const]
    for node in graph_def.node:
        chain = None if node.name in removed else _find_chain(graph, node)
        if chain is not None:
            removed.update(n.name for n in chain.nodes)
            replaced[chain.nodes[-1].name] = _fused_nodes(chain)
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in replaced:
            out.node.extend(replaced[node.name])
        elif node.name not in removed:
            out.node.append(node)
    return _drop_unused_consts(out, keep), len(replaced)


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

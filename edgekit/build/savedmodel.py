"""Reading a SavedModel: its signatures, its identity (hashes), and reference outputs.

Build world: imports TensorFlow, lazily, inside the functions that need it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.build.data import run_in_batches
from edgekit.errors import BadInput, NotFound
from edgekit.files import sha256_file, sha256_tree
from edgekit.manifest import SignatureSpec, TensorSpec


def check_path(path: str | Path) -> Path:
    """Fail early, before TensorFlow is imported, when the path is not a SavedModel."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path} does not exist", "pass the folder that holds saved_model.pb")
    if path.is_file():
        hint = "pass the folder that holds saved_model.pb"
        if path.suffix in (".h5", ".keras"):
            hint = "export it first: keras.models.load_model(path).export('saved_model_dir')"
        raise BadInput(f"{path} is a file, not a SavedModel folder", hint)
    if not (path / "saved_model.pb").is_file():
        below = sorted(p.parent for p in path.glob("*/saved_model.pb"))
        raise BadInput(
            f"{path} is not a SavedModel: it has no saved_model.pb",
            f"did you mean {below[0]}?" if below else
            "save one with tf.saved_model.save(obj, path) or keras_model.export(path)",
        )
    return path


def source_identity(path: Path) -> dict[str, str]:
    """Where the model came from and hashes that change whenever it does."""
    return {
        "path": str(path.resolve()),
        "saved_model_pb_sha256": sha256_file(path / "saved_model.pb"),
        "variables_sha256": sha256_tree(path / "variables"),  # of nothing when there are no variables
    }


def load(path: Path) -> Any:
    import tensorflow as tf

    exact_float32(tf)
    try:
        return tf.saved_model.load(str(path))
    except Exception as exc:  # TF raises many unrelated types for a corrupt SavedModel
        raise BadInput(
            f"TensorFlow could not load the SavedModel at {path}: {type(exc).__name__}: {exc}",
            "check that the folder is complete (saved_model.pb and variables/)",
        ) from exc


def exact_float32(tf: Any) -> None:
    """Run the SavedModel as the float32 model it is: convert's check and bench's reference are what
    every artifact is judged against. On Ampere-and-newer GPUs TensorFlow rounds matmul and conv inputs
    to TF32 (10 mantissa bits) unless told not to; on an H200 that put the digits float32 artifact at
    rel L2 1.6e-4 from its reference instead of 1.0e-7, and flipped 1 of 64 of O-Net's face decisions.
    Memory growth keeps TensorFlow from taking the whole GPU, which a training job may be sharing."""
    tf.config.experimental.enable_tensor_float_32_execution(False)
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # this process already started the GPU: its memory setting is fixed by then
            pass


def _spec(name: str, tensor_spec: Any) -> TensorSpec:
    shape = tensor_spec.shape
    dims = None if shape.rank is None else [d if d is None else int(d) for d in shape.as_list()]
    return TensorSpec(name=name, dtype=tensor_spec.dtype.name, shape=dims)


def signatures(loaded: Any) -> dict[str, SignatureSpec]:
    """Every signature's named inputs and outputs, sorted by name for a stable manifest."""
    result = {}
    for key in sorted(loaded.signatures.keys()):
        function = loaded.signatures[key]
        _, kwargs = function.structured_input_signature
        outputs = function.structured_outputs
        if not isinstance(outputs, dict):  # tf.function signatures always return dicts
            outputs = {"output_0": outputs}
        result[key] = SignatureSpec(
            inputs=[_spec(name, spec) for name, spec in sorted(kwargs.items())],
            outputs=[_spec(name, spec) for name, spec in sorted(outputs.items())],
        )
    return result


def pick_signature(available: dict[str, SignatureSpec], name: str) -> SignatureSpec:
    if not available:
        raise BadInput(
            "the SavedModel has no signatures, so there is nothing to convert",
            "export it with a serving signature: keras_model.export(path), or "
            "tf.saved_model.save(obj, path, signatures=obj.__call__.get_concrete_function(...))",
        )
    if name not in available:
        raise NotFound(
            f"the SavedModel has no signature {name!r}",
            "pass --signature with one of: " + ", ".join(available),
        )
    return available[name]


def control_flow(loaded: Any, signature: str) -> tuple[str, ...]:
    """The control-flow op types (While, If) in the signature's graph and the functions it calls."""
    from edgekit.build.targets.tflite_isolated import CONTROL_FLOW_OPS

    graph = loaded.signatures[signature].graph.as_graph_def()
    ops = {node.op for node in graph.node}
    ops.update(node.op for function in graph.library.function for node in function.node_def)
    return tuple(sorted(ops & CONTROL_FLOW_OPS))


def _op_error_line(exc) -> str:
    """The line of a TensorFlow op error that says what was wrong, not where it was raised."""
    noise = ("Graph execution error", "Detected at node", "<stack traces", "File ", "[[", "Traceback", "Stack trace")
    lines = [line.strip() for line in (exc.message or "").splitlines()]
    useful = [line for line in lines if line and not line.startswith(noise)]
    return (useful[0] if useful else type(exc).__name__)[:300]


def run_reference(
    loaded: Any, signature: str, inputs: dict[str, np.ndarray], batch: int
) -> dict[str, np.ndarray]:
    """The SavedModel's outputs on `inputs`, `batch` rows at a time, as numpy arrays."""
    import tensorflow as tf

    function = loaded.signatures[signature]

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in function(**{n: tf.constant(a) for n, a in feed.items()}).items()}

    try:
        return run_in_batches(run, inputs, batch)
    except tf.errors.OpError as exc:  # the data holds values the model refuses (an id past its vocabulary)
        raise BadInput(f"the SavedModel cannot run on these rows: {_op_error_line(exc)}",
                       "check the data's values against what the model takes (token ids within its vocabulary, "
                       "indices within their ranges)") from None

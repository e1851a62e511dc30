"""ONNX from a SavedModel signature, with tf2onnx, checked by onnx.checker.

tf2onnx runs in a subprocess: it logs pages to stderr, and a crash in it must not take
the conversion's other targets down. It exits 0 even when it could not convert some ops
(it leaves them as TensorFlow ops in the graph), so we read its "Unsupported ops" line
and fail with their names. Needs the `onnx` extra: tf2onnx, onnx, onnxruntime.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edgekit.agreement import Tolerance
from edgekit.build.targets.base import BuildContext, Pending, Target
from edgekit.errors import BadInput, ConversionFailed, MissingDependency
from edgekit.manifest import Artifact, TensorSpec

# What the post-conversion check accepts: ONNX keeps float32 weights and activations, like
# the float32 TFLite variant.
TOLERANCE = Tolerance(1e-3, 0.01)
FILE = "onnx/model.onnx"


def newest_opset() -> int:
    """The newest ONNX opset the installed tf2onnx converts to."""
    from tf2onnx import constants

    return max(constants.OPSET_TO_IR_VERSION)


@dataclass(frozen=True)
class OnnxOptions:
    opset: int | None = None  # None: the newest tf2onnx supports

    def __post_init__(self) -> None:
        if self.opset is not None and not 7 <= self.opset <= 30:
            raise BadInput(f"--onnx-opset {self.opset} is not an ONNX opset", "e.g. --onnx-opset 17")


def versions() -> dict[str, str]:
    """What the manifest records of the ONNX tool chain."""
    from importlib.metadata import version

    return {name: version(name) for name in ("tf2onnx", "onnx", "onnxruntime")}


def require_onnx() -> None:
    """Fail before any work when the `onnx` extra is missing."""
    missing = [name for name in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependency(f"the ONNX target needs {', '.join(missing)}", "pip install 'edgekit[onnx]'")


def unsupported_ops(log: str) -> list[str]:
    """Op names from tf2onnx's "Unsupported ops: Counter({'Lgamma': 1})" line."""
    found: set[str] = set()
    for match in re.finditer(r"Unsupported ops: Counter\((\{.*?\})\)", log):
        try:
            found.update(ast.literal_eval(match.group(1)))
        except (ValueError, SyntaxError):
            pass
    return sorted(found)


def convert_onnx(saved_model_dir: Path, signature: str, options: OnnxOptions, output: Path,
                 quiet: bool = True) -> int:
    """Write the ONNX model to `output` and return its opset; `quiet=False` (--debug)
    copies tf2onnx's log to stderr."""
    import onnx

    opset = options.opset or newest_opset()
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model_dir),
               "--signature_def", signature, "--opset", str(opset), "--output", str(output)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    log = done.stdout + done.stderr
    if not quiet:
        sys.stderr.write(log)
    ops = unsupported_ops(log)
    if ops:
        output.unlink(missing_ok=True)
        raise ConversionFailed(f"onnx: tf2onnx cannot convert these TensorFlow ops: {', '.join(ops)}",
                               "the TFLite artifacts do not depend on it; for ONNX, replace those ops in the model")
    if done.returncode != 0 or not output.is_file():
        errors = [line for line in log.splitlines() if "ERROR" in line or "Error" in line]
        last = (errors or log.strip().splitlines() or ["no output"])[-1]
        raise ConversionFailed(f"onnx: tf2onnx failed (exit {done.returncode}): {last.strip()}",
                               "rerun with --debug to see tf2onnx's log")
    try:
        onnx.checker.check_model(str(output))
    except onnx.checker.ValidationError as exc:
        output.unlink(missing_ok=True)
        raise ConversionFailed(f"onnx: the model tf2onnx wrote is not valid ONNX: {exc}") from None
    return opset


class OnnxTarget(Target):
    """onnx/model.onnx by tf2onnx (a subprocess), onnx.checker, then an onnxruntime session
    for the check. The tensor specs are the signature's: tf2onnx keeps its names."""

    format, engine = "onnx", "onnxruntime"

    def __init__(self, context: BuildContext, options: OnnxOptions):
        super().__init__(context)
        self.options = options

    @classmethod
    def for_job(cls, context: BuildContext, options) -> OnnxTarget | None:
        return cls(context, OnnxOptions(options.onnx_opset)) if options.onnx else None

    def steps(self) -> list[str]:
        return ["onnx"]

    def versions(self) -> dict[str, str]:
        return versions()

    def build(self, step: str) -> Artifact | Pending:
        import hashlib

        from edgekit.engines.onnx import OnnxModel
        from edgekit.errors import EdgekitError

        context = self.context
        fields = dict(name="onnx", format="onnx", variant="float32", signature=context.signature,
                      quantization={"weights": "float32", "activations": "float32"})
        output = context.staging / FILE
        try:
            opset = convert_onnx(context.source_dir, context.signature, self.options, output, context.quiet)
            model = OnnxModel(output, num_threads=os.cpu_count())
        except EdgekitError as exc:
            output.unlink(missing_ok=True)  # only what the manifest lists lands in OUT_DIR
            return Artifact(status="failed", error=str(exc), **fields)
        content = output.read_bytes()
        fields.update(file=FILE, bytes=len(content), sha256=hashlib.sha256(content).hexdigest(), opset=opset)
        specs = {spec.name: spec for spec in [*context.signature_spec.inputs, *context.signature_spec.outputs]}

        def spec(name: str) -> TensorSpec:
            known = specs.get(name)
            return TensorSpec(name=name, dtype=known.dtype if known else "float32", shape=known.shape if known else None)

        return Pending("onnx", fields, model, TOLERANCE, [spec(n) for n in model.input_names],
                       [spec(n) for n in model.output_names])

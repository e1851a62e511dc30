"""TensorFlow.js graph models from a SavedModel signature, written by edgekit itself.

Not with the `tensorflowjs` package: beside TensorFlow 2.21 and numpy 2 it pulls
tensorflow 2.19 over tensorflow-cpu, downgrades numpy and protobuf, and imports jax,
tf_keras and tensorflow_decision_forests at module level. The graph-model format is
small: a GraphDef as proto3 JSON plus a weights manifest over raw little-endian shards.

The steps, each in a module of this package: freeze the signature (control flow kept as While/If
ops over functions); grappler (pruning, constant folding, arithmetic, dependency); fuse
convolutions and matmuls with the per-channel Mul, bias add and activation after them
(Keras 3 lowers BatchNormalization to Mul/AddV2, which neither grappler nor TF.js's
converter folds into a depthwise convolution); check every op against the ops TF.js
runs; move each Const's value (the functions' too) into the weights; write one folder
per variant (graph.py, fuse.py, weights.py). Grappler can abort the whole process (a fatal "Type not set"), so
`TfjsWriter` (writer.py) runs all of it in a subprocess: `python -m edgekit.build.targets.tfjs`.
"""
from __future__ import annotations

from pathlib import Path

from edgekit.build.targets.base import BuildContext, Pending, Target
from edgekit.build.targets.tfjs.variants import (
    DEFAULT_SHARD_MB,
    DEFAULT_VARIANTS,
    TOLERANCES,
    VARIANTS,
    parse_variants,
)
from edgekit.build.targets.tfjs.writer import TfjsWriter
from edgekit.manifest import Artifact, TensorSpec

__all__ = ["DEFAULT_SHARD_MB", "DEFAULT_VARIANTS", "TOLERANCES", "VARIANTS", "TfjsTarget", "parse_variants"]


class TfjsTarget(Target):
    """All asked-for TF.js variants, written by one TfjsWriter process that starts with the
    job (so it overlaps the TFLite conversions); each step waits for it, then loads its
    variant in stock TF.js under Node.js for the check, or says why it cannot."""

    format, engine = "tfjs", "TF.js"

    def __init__(self, context: BuildContext, variants: tuple[str, ...], shard_mb: float, rounding: bool = False):
        super().__init__(context)
        self.variants, self.shard_mb = variants, shard_mb
        self.rounding = rounding  # uint8 weights rounded by error feedback on the calibration rows (rounding.py)
        self.writer: TfjsWriter | None = None
        self._rows_file: Path | None = None  # the calibration rows, handed to the writer process

    @classmethod
    def for_job(cls, context: BuildContext, options) -> TfjsTarget | None:
        return cls(context, options.tfjs, options.tfjs_shard_mb, options.weight_rounding == "auto") \
            if options.tfjs else None

    def steps(self) -> list[str]:
        return [f"tfjs_{variant}" for variant in self.variants]

    def start(self) -> None:
        from edgekit.engines import tfjs as tfjs_runtime

        context = self.context
        if self.rounding and "uint8" in self.variants and context.calibration_rows is not None:
            import tempfile

            import numpy as np

            from edgekit.build.data import spread_rows
            from edgekit.build.targets.weight_rounding import FIT_ROWS, SCORE_ROWS

            handle, name = tempfile.mkstemp(prefix="edgekit-calibration-", suffix=".npz")  # not in OUT_DIR
            with open(handle, "wb") as file:
                np.savez(file, **spread_rows(context.calibration_rows, FIT_ROWS + SCORE_ROWS))
            self._rows_file = Path(name)
        self.writer = TfjsWriter(context.source_dir, context.signature, self.variants, self.shard_mb,
                                 context.staging, tfjs_runtime.node_modules(), context.quiet, self._rows_file)

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.stop()
        if self._rows_file is not None:
            self._rows_file.unlink(missing_ok=True)

    def versions(self) -> dict[str, str]:
        """The TF.js version that checked the TF.js artifacts, or why none did."""
        from edgekit.engines import tfjs as tfjs_runtime

        reason = tfjs_runtime.unavailable_reason()
        return {"tfjs": f"not run: {reason}" if reason else tfjs_runtime.tfjs_version()}

    def build(self, step: str) -> Artifact | Pending:
        from edgekit.engines import tfjs as tfjs_runtime
        from edgekit.errors import EdgekitError
        from edgekit.files import sha256_file, sha256_tree
        from edgekit.manifest import Check

        context, variant = self.context, step.removeprefix("tfjs_")
        fields = dict(name=step, format="tfjs", variant=variant, signature=context.signature,
                      quantization={"weights": variant, "activations": "float32"})
        try:
            summary = self.writer.result()
        except EdgekitError as exc:
            return Artifact(status="failed", error=str(exc), **fields)
        if variant == "uint8" and "weight_rounding" in summary:
            fields["quantization"].update(weight_rounding=summary["weight_rounding"],
                                          calibration_samples=len(next(iter(context.calibration_rows.values()))))
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
        def on_cpu(why: str) -> tuple[object, str]:
            """wasm's kernels mishandle some ops (TensorList inside a While loop): the browser app
            must pick the cpu backend, and the check says so."""
            return (tfjs_runtime.TfjsModel(folder, backend="cpu"),
                    f"checked on TF.js's cpu backend: the wasm backend cannot run it ({why})")

        return Pending(step, fields, model, tolerance, inputs, outputs, fallback=on_cpu)

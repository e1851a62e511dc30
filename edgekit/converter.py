"""`edgekit convert`: SavedModel -> checked TFLite, TF.js (and ONNX) artifacts + manifest.json, atomically.

Order matters for the user: everything that can be validated without TensorFlow
(paths, options, OUT_DIR) fails first and fast; then the SavedModel and the samples are
checked against the chosen signature; only then does conversion start, in a temporary
folder beside OUT_DIR that is renamed into place at the end (or removed on failure).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgekit import __version__, data, savedmodel
from edgekit.errors import BadInput, EdgekitError, FlexOpsRequired
from edgekit.files import replace_dir, sha256_file, sha256_tree, staging_dir
from edgekit.manifest import SCHEMA_VERSION, Artifact, Check, Manifest, TensorSpec
from edgekit.metrics import compare_output
from edgekit.native_logs import captured_native_output
from edgekit.runtime import tfjs as tfjs_runtime
from edgekit.runtime.onnx import OnnxModel
from edgekit.runtime.tflite import TensorInfo, TFLiteModel
from edgekit.targets import onnx as onnx_target
from edgekit.targets import tfjs as tfjs_target
from edgekit.targets.onnx import OnnxOptions, require_onnx
from edgekit.targets.tflite import VARIANTS, TFLiteOptions, Variant, convert_variant

DEFAULT_CALIBRATION_SAMPLES = 200
DEFAULT_CHECK_SAMPLES = 32


@dataclass(frozen=True)
class Step:
    """A progress event: `stage` is "start" before a target, "done" after it."""

    variant: str  # a TFLite variant, "tfjs_<variant>" or "onnx"
    stage: str
    index: int
    total: int
    artifact: Artifact | None = None
    seconds: float | None = None


Progress = Callable[[Step], None]


def convert(
    saved_model: str | Path,
    out_dir: str | Path,
    *,
    signature: str = "serving_default",
    variants: tuple[Variant | str, ...] | None = None,
    calibration: str | Path | None = None,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    check_samples: int = DEFAULT_CHECK_SAMPLES,
    int8_io: str = "int8",
    allow_flex: bool = False,
    image_range: str = "0:255",
    tfjs: tuple[str, ...] | str = tfjs_target.DEFAULT_VARIANTS,
    tfjs_shard_mb: float = tfjs_target.DEFAULT_SHARD_MB,
    onnx: bool = False,
    onnx_opset: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    quiet: bool = True,
) -> Manifest:
    """Convert `saved_model` into OUT_DIR and return its manifest.

    `variants=None` means all five; full-integer ones are then skipped (with the reason in
    the manifest) when no calibration data is given. Naming them explicitly without data
    is an error instead. `tfjs` names the TF.js graph-model variants (float32, float16,
    uint8; "none" or () for none), written to tfjs_<variant>/ in shards of `tfjs_shard_mb`
    and checked in Node.js when it is installed. `onnx=True` also writes onnx/model.onnx
    (tf2onnx, `onnx_opset` or the newest it supports). Raises BadInput (nothing written)
    for unusable input.
    """
    explicit_variants = variants is not None
    tfjs_variants = tfjs_target.parse_variants(tfjs if isinstance(tfjs, str) else ",".join(tfjs) or "none")
    if not tfjs_shard_mb > 0:
        raise BadInput(f"--tfjs-shard-mb must be more than 0, not {tfjs_shard_mb}", "e.g. --tfjs-shard-mb 4")
    onnx_options = OnnxOptions(onnx_opset) if onnx else None
    if onnx:
        require_onnx()
    options = TFLiteOptions(
        variants=tuple(variants) if variants else tuple(Variant), int8_io=int8_io, allow_flex=allow_flex
    )
    source_dir = savedmodel.check_path(saved_model)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)
    if calibration_samples < 1 or check_samples < 1:
        raise BadInput("--calibration-samples and --check-samples must be at least 1", "e.g. 200 and 32")
    if calibration is not None and not Path(calibration).exists():
        raise BadInput(f"calibration data {calibration} does not exist", "pass a .npz, a .npy or an image folder")
    needing_data = [v.value for v in options.variants if VARIANTS[v].needs_calibration]
    if explicit_variants and needing_data and calibration is None:
        raise BadInput(
            f"{', '.join(needing_data)} {'needs' if len(needing_data) == 1 else 'need'} "
            "calibration data, and edgekit never calibrates on random noise",
            "pass --calibration with real samples (.npz keyed by input name, .npy, or a folder of images)",
        )

    with captured_native_output(quiet):  # importing TensorFlow prints absl/oneDNN notes
        loaded = savedmodel.load(source_dir)
    all_signatures = savedmodel.signatures(loaded)
    spec = savedmodel.pick_signature(all_signatures, signature)
    calibration_rows = None
    calibration_record = None
    if calibration is not None:
        calibration_rows = data.load_samples(calibration, spec, image_range)
        available = len(next(iter(calibration_rows.values())))
        calibration_rows = data.spread_rows(calibration_rows, calibration_samples)
        calibration_record = {
            "source": str(Path(calibration).resolve()),
            "format": "images" if Path(calibration).is_dir() else Path(calibration).suffix[1:],
            "samples_available": available,
            "samples": len(next(iter(calibration_rows.values()))),
            "sha256": sha256_file(Path(calibration)) if Path(calibration).is_file() else sha256_tree(Path(calibration)),
        }
    if calibration_rows is not None:
        check_inputs = data.spread_rows(calibration_rows, check_samples)
        check_source = "calibration"
    else:
        check_inputs = data.synthetic_samples(spec, check_samples)
        check_source = "synthetic"
    batch = data.batch_size(spec)
    with captured_native_output(quiet):
        reference = savedmodel.run_reference(loaded, signature, check_inputs, batch)

    import tensorflow as tf

    staging = staging_dir(out_dir)
    try:
        job = _Job(source_dir, staging, signature, spec, options, calibration_rows, check_inputs, reference,
                   batch, quiet, onnx_options, tfjs_variants, tfjs_shard_mb)
        artifacts, runtime = job.run(progress)
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            versions={"edgekit": __version__, "tensorflow": tf.__version__, "runtime": runtime,
                      "numpy": np.__version__, **(onnx_target.versions() if onnx else {}),
                      **({"tfjs": _tfjs_checker()} if tfjs_variants else {})},
            source=savedmodel.source_identity(source_dir),
            signature=signature,
            signatures=all_signatures,
            calibration=calibration_record,
            check_inputs={"source": check_source, "samples": len(next(iter(check_inputs.values())))},
            artifacts=artifacts,
        )
        manifest.write(staging)
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _tfjs_checker() -> str:
    """The TF.js version that checked the TF.js artifacts, or why none did."""
    reason = tfjs_runtime.unavailable_reason()
    return f"not run: {reason}" if reason else tfjs_runtime.tfjs_version()


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"{out_dir} exists and is a file", "pass a folder path for -o")
    if out_dir.exists() and not force:
        raise BadInput(f"{out_dir} already exists", "pass --force to replace it, or choose another -o")


def _skipped(variant: Variant, signature: str) -> Artifact:
    return Artifact(
        name=f"tflite_{variant.value}", format="tflite", variant=variant.value, status="skipped",
        signature=signature, quantization=_quantization(variant, None),
        error="no calibration data: pass --calibration with real samples "
        "(.npz keyed by input name, .npy, or a folder of images)",
    )


def _quantization(variant: Variant, calibration_rows: dict[str, np.ndarray] | None) -> dict:
    spec = VARIANTS[variant]
    record = {"weights": spec.weights, "activations": spec.activations}
    if spec.needs_calibration and calibration_rows is not None:
        record["calibration_samples"] = len(next(iter(calibration_rows.values())))
    return record


def _representative(rows: dict[str, np.ndarray]):
    count = len(next(iter(rows.values())))

    def samples():
        for i in range(count):
            yield {name: array[i : i + 1] for name, array in rows.items()}

    return samples


def _onnx_spec(name: str, signature_specs: dict[str, TensorSpec]) -> TensorSpec:
    """tf2onnx keeps the signature's tensor names, dtypes and shapes."""
    spec = signature_specs.get(name)
    return TensorSpec(name=name, dtype=spec.dtype if spec else "float32", shape=spec.shape if spec else None)


def _tensor_spec(info: TensorInfo) -> TensorSpec:
    return TensorSpec(
        name=info.name,
        dtype=info.dtype.name,
        shape=[None if d < 0 else d for d in info.shape],
        quantization=info.quantization_dict(),
    )


# Checks cost most where LiteRT has only reference kernels (int16x8: ~0.2 s per
# MobileNetV2 image here). Converting those variants first lets their checks overlap the
# remaining conversions; the manifest keeps the order the user asked for.
_CONVERSION_ORDER = [Variant.INT16X8, Variant.INT8, Variant.DYNAMIC, Variant.FLOAT32, Variant.FLOAT16]


@dataclass
class _Pending:
    """A written artifact whose check (in LiteRT, onnxruntime or TF.js) is still to run."""

    label: str  # "int8", "onnx", "tfjs_uint8": for messages
    fields: dict
    model: TFLiteModel | OnnxModel | tfjs_runtime.TfjsModel
    tolerance: float
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class _Job:
    """Converts on the calling thread and checks on one worker thread.

    LiteRT's invoke() releases the GIL, so checking variant k runs on the second core
    while variant k+1 converts. Progress is reported from the calling thread only: it may
    be holding stdout/stderr aside for the converter (native_logs) when a check ends.
    """

    def __init__(self, source_dir, staging, signature, signature_spec, options, calibration_rows, check_inputs,
                 reference, batch, quiet, onnx_options=None, tfjs_variants=(), tfjs_shard_mb=4.0):
        self.source_dir, self.staging, self.signature = source_dir, staging, signature
        self.signature_spec, self.onnx_options = signature_spec, onnx_options
        self.tfjs_variants, self.tfjs_shard_mb = tfjs_variants, tfjs_shard_mb
        self._tfjs_writer: tfjs_target.TfjsWriter | None = None
        self.options, self.calibration_rows = options, calibration_rows
        self.check_inputs, self.reference, self.batch, self.quiet = check_inputs, reference, batch, quiet
        self.flex_needed = False
        self.runtime = "unknown"

    def run(self, progress: Progress | None) -> tuple[list[Artifact], str]:
        """Artifacts in the order asked for (TFLite variants, TF.js, then ONNX), and the LiteRT version."""
        order: list[str] = [v.value for v in sorted(self.options.variants, key=_CONVERSION_ORDER.index)]
        order += [f"tfjs_{v}" for v in self.tfjs_variants]
        if self.onnx_options:
            order.append("onnx")
        done: dict[str, Artifact] = {}
        index = {step: i for i, step in enumerate(order, 1)}
        total = len(order)

        def report(step: str, artifact: Artifact, seconds: float) -> None:
            done[step] = artifact
            if progress:
                progress(Step(step, "done", index[step], total, artifact, seconds))

        if self.tfjs_variants:  # its own process: it overlaps the TFLite conversions
            self._tfjs_writer = tfjs_target.TfjsWriter(self.source_dir, self.signature, self.tfjs_variants,
                                                       self.tfjs_shard_mb, self.staging, tfjs_runtime.node_modules(),
                                                       self.quiet)
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-check") as checker:
                checks: dict[str, tuple[Future, float]] = {}

                def report_finished(wait: bool) -> None:
                    for step, (future, convert_seconds) in list(checks.items()):
                        if wait or future.done():
                            artifact, check_seconds = future.result()
                            del checks[step]
                            report(step, artifact, convert_seconds + check_seconds)

                for step in order:
                    if progress:
                        progress(Step(step, "start", index[step], total))
                    started = time.perf_counter()
                    if step == "onnx":
                        built = self._convert_onnx()
                    elif step.startswith("tfjs_"):
                        built = self._convert_tfjs(step.removeprefix("tfjs_"))
                    elif VARIANTS[Variant(step)].needs_calibration and self.calibration_rows is None:
                        built = _skipped(Variant(step), self.signature)
                    else:
                        built = self._convert(Variant(step))
                    seconds = time.perf_counter() - started
                    if isinstance(built, Artifact):
                        report(step, built, seconds)
                    else:
                        checks[step] = (checker.submit(self._check, built), seconds)
                    report_finished(wait=False)
                report_finished(wait=True)
        finally:
            if self._tfjs_writer is not None:
                self._tfjs_writer.stop()
        wanted = ([v.value for v in self.options.variants] + [f"tfjs_{v}" for v in self.tfjs_variants]
                  + (["onnx"] if self.onnx_options else []))
        return [done[step] for step in wanted], self.runtime

    def _convert_onnx(self) -> Artifact | _Pending:
        """tf2onnx (a subprocess), onnx.checker, then an onnxruntime session for the check."""
        fields = dict(name="onnx", format="onnx", variant="float32", signature=self.signature,
                      quantization={"weights": "float32", "activations": "float32"})
        output = self.staging / onnx_target.FILE
        try:
            opset = onnx_target.convert_onnx(self.source_dir, self.signature, self.onnx_options, output, self.quiet)
            model = OnnxModel(output, num_threads=os.cpu_count())
        except EdgekitError as exc:
            output.unlink(missing_ok=True)  # only what the manifest lists lands in OUT_DIR
            return Artifact(status="failed", error=str(exc), **fields)
        content = output.read_bytes()
        fields.update(file=onnx_target.FILE, bytes=len(content), sha256=hashlib.sha256(content).hexdigest(),
                      opset=opset)
        specs = {spec.name: spec for spec in [*self.signature_spec.inputs, *self.signature_spec.outputs]}
        inputs = [_onnx_spec(n, specs) for n in model.input_names]
        outputs = [_onnx_spec(n, specs) for n in model.output_names]
        return _Pending("onnx", fields, model, onnx_target.TOLERANCE_REL_L2, inputs, outputs)

    def _convert_tfjs(self, variant: str) -> Artifact | _Pending:
        """All TF.js variants are written by one subprocess, started with the job; each
        step waits for it, then loads its variant in Node.js for the check (or says why it
        cannot)."""
        name, folder = f"tfjs_{variant}", f"tfjs_{variant}"
        fields = dict(name=name, format="tfjs", variant=variant, signature=self.signature,
                      quantization={"weights": variant, "activations": "float32"})
        try:
            summary = self._tfjs_writer.result()
        except EdgekitError as exc:
            return Artifact(status="failed", error=str(exc), **fields)
        files = [{"path": f"{folder}/{p.name}", "bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted((self.staging / folder).iterdir())]
        fields.update(file=f"{folder}/model.json", bytes=sum(f["bytes"] for f in files),
                      sha256=sha256_tree(self.staging / folder), files=files)
        specs = {spec.name: spec for spec in [*self.signature_spec.inputs, *self.signature_spec.outputs]}

        def spec(endpoint: dict) -> TensorSpec:
            """As TF.js sees it: the signature key, TF.js's dtype, the graph node behind it."""
            known = specs.get(endpoint["key"])
            dtype, shape = (known.dtype, known.shape) if known else (endpoint["dtype"], endpoint["shape"])
            return TensorSpec(name=endpoint["key"], dtype=tfjs_runtime.tfjs_dtype(dtype), shape=shape,
                              node=endpoint["tensor"].split(":")[0])

        inputs, outputs = [spec(e) for e in summary["inputs"]], [spec(e) for e in summary["outputs"]]
        tolerance = tfjs_target.TOLERANCE_REL_L2[variant]
        reason = tfjs_runtime.unavailable_reason()
        if reason is not None:
            check = Check(status="skipped", samples=0, tolerance_rel_l2=tolerance,
                          reason=f"{reason}, so TF.js could not run it; {tfjs_runtime.SETUP_HINT}")
            return Artifact(status="unverified", inputs=inputs, outputs=outputs, check=check, **fields)
        try:
            model = tfjs_runtime.TfjsModel(self.staging / folder, backend="wasm")
        except EdgekitError as exc:
            return Artifact(status="failed", inputs=inputs, outputs=outputs,
                            error=f"TF.js cannot load it: {exc.message}", **fields)
        return _Pending(name, fields, model, tolerance, inputs, outputs)

    def _convert(self, variant: Variant) -> Artifact | _Pending:
        """Convert, write and load one variant; an Artifact when there is nothing to check."""
        name = f"tflite_{variant.value}"
        quantization = _quantization(variant, self.calibration_rows)
        tolerance = VARIANTS[variant].tolerance_rel_l2
        calibration = _representative(self.calibration_rows) if self.calibration_rows is not None else None
        try:
            result = convert_variant(str(self.source_dir), self.signature, variant, self.options, calibration,
                                     self.quiet, self.flex_needed)
        except EdgekitError as exc:
            return Artifact(name=name, format="tflite", variant=variant.value, status="failed",
                            signature=self.signature, quantization=quantization, error=str(exc))
        self.flex_needed = self.flex_needed or result.requires_flex
        file_name = f"model_{variant.value}.tflite"
        (self.staging / file_name).write_bytes(result.model)
        fields = dict(
            name=name, format="tflite", variant=variant.value, signature=self.signature, file=file_name,
            bytes=len(result.model), sha256=hashlib.sha256(result.model).hexdigest(),
            quantization=quantization, requires_flex=result.requires_flex,
        )
        try:
            with captured_native_output(self.quiet):  # LiteRT announces its XNNPACK delegate
                model = TFLiteModel(result.model, num_threads=os.cpu_count())
        except FlexOpsRequired as exc:
            check = Check(status="skipped", samples=0, tolerance_rel_l2=tolerance,
                          reason=f"needs flex ops ({', '.join(result.flex_ops)}); {exc.hint}")
            return Artifact(status="unverified", check=check, **fields)
        except EdgekitError as exc:
            return Artifact(status="failed", error=f"LiteRT cannot load it: {exc.message}", **fields)
        self.runtime = model.runtime
        return _Pending(variant.value, fields, model, tolerance, [_tensor_spec(i) for i in model.inputs(self.signature)],
                        [_tensor_spec(o) for o in model.outputs(self.signature)])

    def _check(self, pending: _Pending) -> tuple[Artifact, float]:
        """Run the artifact on the check inputs and compare with the SavedModel (worker thread).

        A TF.js artifact is checked on the wasm backend. When wasm cannot run it (its
        kernels mishandle TensorList ops inside a While loop, for one), the check runs on
        the cpu backend instead, and its reason says so: the browser app must pick cpu.
        """
        started = time.perf_counter()
        model, fields, tolerance = pending.model, pending.fields, pending.tolerance
        samples = len(next(iter(self.check_inputs.values())))
        inputs, outputs = pending.inputs, pending.outputs
        engine = {"tflite": "LiteRT", "onnx": "onnxruntime", "tfjs": "TF.js"}[fields["format"]]
        note = None

        def run(model) -> dict:
            actual = data.run_in_batches(lambda feed: model.run(feed, self.signature), self.check_inputs, self.batch)
            return {out: compare_output(actual[out], self.reference[out]) for out in sorted(self.reference)}

        try:
            try:
                per_output = run(model)
            except EdgekitError as exc:
                if not isinstance(model, tfjs_runtime.TfjsModel) or model.backend != "wasm":
                    raise
                model.close()
                model = tfjs_runtime.TfjsModel(model.folder, backend="cpu")
                per_output = run(model)
                note = f"checked on TF.js's cpu backend: the wasm backend cannot run it ({exc.message})"
        except (RuntimeError, ValueError, KeyError, EdgekitError) as exc:
            check = Check(status="failed", samples=samples, tolerance_rel_l2=tolerance,
                          reason=f"{engine} could not run it: {exc}")
            artifact = Artifact(status="failed", inputs=inputs, outputs=outputs, check=check,
                                error=check.reason, **fields)
            return artifact, time.perf_counter() - started
        finally:
            if isinstance(model, tfjs_runtime.TfjsModel):
                model.close()  # one Node process per check, not one per artifact kept open
        broken = sorted(name for name, o in per_output.items() if o.rel_l2_error is None)
        worst = max((o.rel_l2_error for o in per_output.values() if o.rel_l2_error is not None), default=0.0)
        passed = not broken and worst <= tolerance
        if broken:
            reason = f"output {', '.join(broken)} holds NaN or infinite values where the SavedModel's does not"
        elif not passed:
            reason = f"relative L2 error {worst:.4g} exceeds the {pending.label} tolerance {tolerance:g}"
        else:
            reason = None
        check = Check(status="passed" if passed else "failed", samples=samples, tolerance_rel_l2=tolerance,
                      outputs=per_output, reason="; ".join(r for r in (reason, note) if r) or None)
        artifact = Artifact(status="ok" if passed else "failed", inputs=inputs, outputs=outputs, check=check,
                            error=reason, **fields)
        return artifact, time.perf_counter() - started

"""`edgekit convert`: SavedModel -> checked TFLite, TF.js (and ONNX) artifacts + manifest.json, atomically.

Order matters for the user: everything that can be validated without TensorFlow
(paths, options, OUT_DIR) fails first and fast; then the SavedModel and the samples are
checked against the chosen signature; only then does conversion start, in a temporary
folder beside OUT_DIR that is renamed into place at the end (or removed on failure).
"""
from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgekit._version import __version__
from edgekit.agreement import CONFIDENT_MARGIN, close_call, compare_output, judge
from edgekit.build import data, savedmodel
from edgekit.build.targets import TARGETS
from edgekit.build.targets import tfjs as tfjs_target
from edgekit.build.targets.base import BuildContext, Pending, Target
from edgekit.build.targets.onnx import OnnxOptions, require_onnx
from edgekit.build.targets.tflite import VARIANTS, TFLiteOptions, Variant
from edgekit.errors import BadInput, EdgekitError
from edgekit.files import replace_dir, sha256_file, sha256_tree, staging_dir
from edgekit.manifest import SCHEMA_VERSION, Artifact, Check, Manifest
from edgekit.native_logs import captured_native_output
from edgekit.runtime.tflite import runtime_error_text


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


@dataclass(frozen=True)
class ConvertOptions:
    """Every knob of a conversion, validated once, here, before TensorFlow is imported (the
    CLI only fills it in). `variants=None` means all five TFLite variants; full-integer
    ones are then skipped (with the reason in the manifest) when no calibration data is
    given, while naming them explicitly without data is an error. `tfjs` names the TF.js
    graph-model variants (float32, float16, uint8; "none" or () for none), written to
    tfjs_<variant>/ in shards of `tfjs_shard_mb` and checked in Node.js when it is there.
    `onnx=True` also writes onnx/model.onnx (tf2onnx, `onnx_opset` or the newest)."""

    signature: str = "serving_default"
    variants: tuple[Variant | str, ...] | None = None
    calibration: str | Path | None = None
    calibration_samples: int = data.DEFAULT_CALIBRATION_SAMPLES
    check_samples: int = data.DEFAULT_CHECK_SAMPLES
    int8_io: str = "int8"
    range_method: str = "auto"  # int8 activation ranges: auto, minmax, percentile or mse
    diagnose: bool = False  # per-layer int8 and int16x8 errors in the manifest even when the check passes
    float_layers: tuple[str, ...] | str = ()  # int8 ops kept float (tensor names or op types), last resort
    weight_rounding: str = "auto"  # weights of int8, int16x8, dynamic, TF.js uint8: auto (error feedback) or nearest
    allow_flex: bool = False
    image_range: str = "0:255"
    tfjs: tuple[str, ...] | str = tfjs_target.DEFAULT_VARIANTS
    tfjs_shard_mb: float = tfjs_target.DEFAULT_SHARD_MB
    onnx: bool = False
    onnx_opset: int | None = None
    force: bool = False

    def __post_init__(self) -> None:
        tfjs = self.tfjs if isinstance(self.tfjs, str) else ",".join(self.tfjs) or "none"
        object.__setattr__(self, "tfjs", tfjs_target.parse_variants(tfjs))
        if not self.tfjs_shard_mb > 0:
            raise BadInput(f"--tfjs-shard-mb must be more than 0, not {self.tfjs_shard_mb}", "e.g. --tfjs-shard-mb 4")
        if self.calibration_samples < 1 or self.check_samples < 1:
            raise BadInput("--calibration-samples and --check-samples must be at least 1", "e.g. 200 and 32")
        if self.calibration is not None and not Path(self.calibration).exists():
            raise BadInput(f"calibration data {self.calibration} does not exist",
                           "pass a .npz, a .npy or an image folder")
        needing_data = [v.value for v in self.tflite.variants if VARIANTS[v].needs_calibration]
        if self.variants is not None and needing_data and self.calibration is None:
            raise BadInput(
                f"{', '.join(needing_data)} {'needs' if len(needing_data) == 1 else 'need'} "
                "calibration data, and edgekit never calibrates on random noise",
                "pass --calibration with real samples (.npz keyed by input name, .npy, or a folder of images)",
            )
        object.__setattr__(self, "float_layers", _layer_names(self.float_layers))
        int8_only = [flag for flag, given in (("--float-layers", self.float_layers),
                                             (f"--range-method {self.range_method}", self.range_method != "auto"))
                     if given]
        one = len(int8_only) == 1
        int8_only_text = f"{', '.join(int8_only)} only {'applies' if one else 'apply'} to the int8 variant"
        if int8_only and self.variants is not None and Variant.INT8 not in self.tflite.variants:
            raise BadInput(f"{int8_only_text}, which this run does not build",
                           f"add int8 to --variants, or drop {'it' if one else 'them'}")
        if int8_only and self.calibration is None:
            raise BadInput(f"{int8_only_text}, which needs calibration data (without it int8 is skipped)",
                           f"pass --calibration with real samples, or drop {'it' if one else 'them'}")
        integer = {Variant.INT8, Variant.INT16X8}
        if self.diagnose and self.variants is not None and not integer & set(self.tflite.variants):
            raise BadInput("--diagnose only applies to the full-integer variants (int8, int16x8), which this run "
                           "does not build", "add int8 or int16x8 to --variants, or drop it")
        if self.diagnose and self.calibration is None:
            raise BadInput("--diagnose only applies to the full-integer variants, which need calibration data "
                           "(without it they are skipped)", "pass --calibration with real samples, or drop it")
        if self.onnx:
            OnnxOptions(self.onnx_opset)
            require_onnx()

    @property
    def tflite(self) -> TFLiteOptions:
        return TFLiteOptions(variants=tuple(self.variants) if self.variants else tuple(Variant),
                             int8_io=self.int8_io, allow_flex=self.allow_flex, range_method=self.range_method,
                             diagnose=self.diagnose, float_layers=self.float_layers,
                             weight_rounding=self.weight_rounding)


def _layer_names(value) -> tuple[str, ...]:
    """--float-layers as names: a comma-separated string, or a list of them."""
    parts = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else \
        [] if value is None else [value]
    if not all(isinstance(part, str) for part in parts):
        raise BadInput(f"--float-layers takes names (strings), not {value!r}", "e.g. FULLY_CONNECTED,conv1/BiasAdd")
    names = tuple(dict.fromkeys(name.strip() for part in parts for name in part.split(",") if name.strip()))
    if not names and any(parts):  # " , ," was given, and names nothing
        raise BadInput(f"--float-layers names no layer: {value!r}", "e.g. FULLY_CONNECTED,conv1/BiasAdd")
    return names


def convert(saved_model: str | Path, out_dir: str | Path, options: ConvertOptions | None = None, *,
            progress: Progress | None = None, quiet: bool = True, **settings) -> Manifest:
    """Convert `saved_model` into OUT_DIR and return its manifest. The settings are
    ConvertOptions' fields, as an object or as keyword arguments. Raises BadInput (nothing
    written) for unusable input."""
    options = options or ConvertOptions(**settings)
    source_dir = savedmodel.check_path(saved_model)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, options.force)
    signature = options.signature
    with captured_native_output(quiet):  # importing TensorFlow prints absl/oneDNN notes
        loaded = savedmodel.load(source_dir)
    all_signatures = savedmodel.signatures(loaded)
    spec = savedmodel.pick_signature(all_signatures, signature)
    calibration_rows, calibration_record, check_inputs, close_inputs = _rows(options, spec)
    batch = data.batch_size(spec)
    with captured_native_output(quiet):
        reference = savedmodel.run_reference(loaded, signature, check_inputs, batch)
    recheck = None
    if close_inputs is not None:
        recheck = functools.cache(lambda: (close_inputs, savedmodel.run_reference(loaded, signature, close_inputs,
                                                                                   batch)))

    import tensorflow as tf

    staging = staging_dir(out_dir)
    try:
        context = BuildContext(source_dir, staging, signature, spec, calibration_rows, quiet, batch,
                               savedmodel.control_flow(loaded, signature))
        targets: list[Target] = [t for t in (target.for_job(context, options) for target in TARGETS) if t]
        artifacts = _Job(targets, check_inputs, reference, batch, signature, recheck).run(progress)
        versions = {"edgekit": __version__, "tensorflow": tf.__version__, "numpy": np.__version__}
        for target in targets:
            versions.update(target.versions())
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            versions=versions,
            source=savedmodel.source_identity(source_dir),
            signature=signature,
            signatures=all_signatures,
            calibration=calibration_record,
            check_inputs={"source": "synthetic" if calibration_rows is None else "calibration",
                          "samples": len(next(iter(check_inputs.values()))),
                          **({"close_call_samples": len(next(iter(close_inputs.values())))} if close_inputs else {})},
            artifacts=artifacts,
        )
        manifest.write(staging)
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


# A close call (see agreement.close_call) is checked again on this many times the check rows, where
# the data has them: O-Net's int16x8 box was 5.8% of its spread on 32 rows, over its 5%, and 4.4% on 300.
CLOSE_CALL_ROWS = 4


def _rows(options: ConvertOptions, spec) -> tuple[dict | None, dict | None, dict, dict | None]:
    """The calibration rows (a spread subset of the data given) and their manifest record; the
    check rows: spread over every row given, or deterministic synthetic rows without data; and
    the rows a close call is checked again on (CLOSE_CALL_ROWS times as many, where given)."""
    calibration = options.calibration
    if calibration is None:
        return None, None, data.synthetic_samples(spec, options.check_samples), None
    all_rows = data.load_samples(calibration, spec, options.image_range)
    calibration_rows = data.spread_rows(all_rows, options.calibration_samples)
    record = {
        "source": str(Path(calibration).resolve()),
        "format": "images" if Path(calibration).is_dir() else Path(calibration).suffix[1:],
        "samples_available": len(next(iter(all_rows.values()))),
        "samples": len(next(iter(calibration_rows.values()))),
        "distinct_samples": data.distinct_rows(calibration_rows),
        "sha256": sha256_file(Path(calibration)) if Path(calibration).is_file() else sha256_tree(Path(calibration)),
        "ranges": data.value_ranges(calibration_rows),
    }
    # Spread over every row given, not just the calibration subset: with --calibration-samples 1
    # the check must not shrink to the one row the ranges were fitted to.
    available = record["samples_available"]
    close = data.spread_rows(all_rows, options.check_samples * CLOSE_CALL_ROWS) \
        if available > options.check_samples else None
    return calibration_rows, record, data.spread_rows(all_rows, options.check_samples), close


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"{out_dir} exists and is a file", "pass a folder path for -o")
    if out_dir.exists() and not force:
        raise BadInput(f"{out_dir} already exists", "pass --force to replace it, or choose another -o")


class _Job:
    """Builds on the calling thread and checks on one worker thread.

    LiteRT's invoke() releases the GIL, so checking artifact k runs on the second core
    while artifact k+1 builds. Progress is reported from the calling thread only: it may
    be holding stdout/stderr aside for the converter (native_logs) when a check ends.
    """

    def __init__(self, targets: list[Target], check_inputs, reference, batch, signature, recheck=None):
        self.targets, self.check_inputs, self.reference = targets, check_inputs, reference
        self.batch, self.signature = batch, signature
        self.recheck = recheck  # () -> (more rows, the SavedModel's outputs on them), for close calls

    def run(self, progress: Progress | None) -> list[Artifact]:
        """Artifacts in the order asked for: each target's steps, target after target."""
        order = [(target, step) for target in self.targets for step in target.build_order()]
        index = {step: i for i, (_, step) in enumerate(order, 1)}
        total, done = len(order), {}

        def report(step: str, artifact: Artifact, seconds: float) -> None:
            done[step] = artifact
            if progress:
                progress(Step(step, "done", index[step], total, artifact, seconds))

        try:
            for target in self.targets:
                target.start()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-check") as checker:
                checks: dict[str, tuple[Future, float]] = {}

                def report_finished(wait: bool) -> None:
                    for step, (future, build_seconds) in list(checks.items()):
                        if wait or future.done():
                            artifact, check_seconds = future.result()
                            del checks[step]
                            report(step, artifact, build_seconds + check_seconds)

                for target, step in order:
                    if progress:
                        progress(Step(step, "start", index[step], total))
                    started = time.perf_counter()
                    built = target.build(step)
                    seconds = time.perf_counter() - started
                    if isinstance(built, Artifact):
                        report(step, built, seconds)
                    else:
                        checks[step] = (checker.submit(self._check, built, target.engine), seconds)
                    report_finished(wait=False)
                report_finished(wait=True)
        finally:
            for target in self.targets:
                target.stop()
        return [done[step] for target in self.targets for step in target.steps()]

    def _check(self, pending: Pending, engine: str) -> tuple[Artifact, float]:
        """Run the artifact on the check inputs and compare with the SavedModel (worker thread).

        When the model cannot run and its target gave a fallback (TF.js: the cpu backend
        when wasm's kernels cannot run it), the check runs on that instead, and its reason
        says so. A model with a `close()` (a Node process) is closed after its check.
        """
        started = time.perf_counter()
        model, fields, tolerance = pending.model, pending.fields, pending.tolerance
        samples = len(next(iter(self.check_inputs.values())))
        inputs, outputs = pending.inputs, pending.outputs
        note = None

        def run(model, rows=self.check_inputs, reference=self.reference) -> dict:
            actual = data.run_in_batches(lambda feed: model.run(feed, self.signature), rows, self.batch)
            return {out: compare_output(actual[out], reference[out]) for out in sorted(reference)}

        try:
            try:
                per_output = run(model)
            except EdgekitError as exc:
                if pending.fallback is None:
                    raise
                _close(model)
                model, note = pending.fallback(exc.message)
                per_output = run(model)
            if self.recheck is not None and close_call(per_output, tolerance):
                rows, reference = self.recheck()
                per_output, samples = run(model, rows, reference), len(next(iter(rows.values())))
        except (RuntimeError, ValueError, KeyError, EdgekitError) as exc:
            words = runtime_error_text(exc) if isinstance(exc, RuntimeError) else str(exc)
            check = Check(status="failed", samples=samples, tolerance_rel_l2=tolerance.rel_l2,
                          tolerance_spread=tolerance.spread, reason=f"{engine} could not run it: {words}")
            artifact = Artifact(status="failed", inputs=inputs, outputs=outputs, check=check,
                                error=check.reason, **fields)
            return artifact, time.perf_counter() - started
        finally:
            _close(model)  # one Node process per check, not one per artifact kept open
        reason = "; ".join(r for r in (judge(per_output, tolerance, pending.label), pending.known_failure) if r) or None
        passed = reason is None
        if not passed and pending.diagnose_failure is not None:
            pending.diagnose_failure()
        check = Check(status="passed" if passed else "failed", samples=samples, tolerance_rel_l2=tolerance.rel_l2,
                      tolerance_spread=tolerance.spread, confident_margin=CONFIDENT_MARGIN, outputs=per_output,
                      reason="; ".join(r for r in (reason, note) if r) or None)
        artifact = Artifact(status="ok" if passed else "failed", inputs=inputs, outputs=outputs, check=check,
                            error=reason, **fields)
        return artifact, time.perf_counter() - started


def _close(model) -> None:
    close = getattr(model, "close", None)
    if close is not None:
        close()

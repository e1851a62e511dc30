"""The `edgekit` command: each subcommand parses options into an API call and renders
what comes back. Errors become a two-line message and an exit status (errors.py);
`--debug` shows the traceback instead."""
from __future__ import annotations

import functools
import statistics
import sys
from pathlib import Path

import click

from edgekit._version import __version__
from edgekit.benchmark.results import TASKS
from edgekit.build import data
from edgekit.build.targets import activation_ranges
from edgekit.build.targets import tflite as tflite_target
from edgekit.build.targets.tfjs import variants as tfjs_variants
from edgekit.build.targets.weight_rounding import MIN_CALIBRATION_ROWS
from edgekit.errors import BadInput, EdgekitError, MissingDependency
from edgekit.packaging import PICKS, PLATFORMS

# Which extra brings each optional package, so a missing one is named with its install line.
EXTRA_OF_MODULE = {"tensorflow": "convert", "keras": "convert", "PIL": "convert", "ai_edge_litert": "runtime",
                   "httptools": "runtime", "uvloop": "runtime", "orjson": "runtime", "grpc": "runtime",
                   "google": "runtime", "tf2onnx": "onnx", "onnx": "onnx", "onnxruntime": "onnx"}


def missing_extra(exc: ImportError, command: str) -> MissingDependency | None:
    """A ModuleNotFoundError of an optional package -> the error naming its extra."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return MissingDependency(
        f"`edgekit {command}` needs edgekit[{extra}], which is not installed here (no module {module!r})",
        f"pip install 'edgekit[{extra}]' (in a checkout of edgekit: pip install -e '.[{extra}]')")


def _handle_errors(command):
    """EdgekitError -> 'error: ...' + hint on stderr, and its exit status; no traceback.
    A missing optional package becomes such an error too, naming the extra to install."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            try:
                return command(*args, **kwargs)
            except ModuleNotFoundError as exc:
                error = missing_extra(exc, command.__name__.removesuffix("_command"))
                if error is None or kwargs.get("debug"):
                    raise
                raise error from exc
        except EdgekitError as exc:
            if kwargs.get("debug"):
                raise
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"  hint: {exc.hint}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def cli() -> None:
    """Take a trained TensorFlow model to phones, browsers and small boards.

    \b
    convert  SavedModel -> TFLite variants, TF.js graph models (and ONNX), checked, with a manifest
    bench    every artifact against the SavedModel: accuracy, agreement, latency, size, memory
    serve    TensorFlow Serving's REST and gRPC APIs on LiteRT (a Raspberry Pi: no TensorFlow)
    package  the right artifact into an Android, iOS or web app build
    """


def _human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


class _ProgressPrinter:
    """Per-variant progress on stderr: one live line on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.seconds: dict[str, float] = {}
        self.converting = ""  # the live line, redrawn after a check's result is printed

    def __call__(self, step) -> None:
        prefix = f"[{step.index}/{step.total}] {step.variant:<12}"
        if step.stage == "start":
            self.converting = f"{prefix} converting..."
            click.echo(self.converting, err=True, nl=not self.live)
            return
        self.seconds[step.variant] = step.seconds
        artifact = step.artifact
        text = f"{prefix} {artifact.status:<10} {_human_bytes(artifact.bytes):>9}  {step.seconds:5.1f} s"
        if artifact.status == "skipped":
            text += "  no calibration data"
        elif artifact.status != "ok" and artifact.error:
            lines = artifact.error.splitlines()
            text += f"  {lines[0]}"
            hint = next((line.strip() for line in lines[1:] if line.strip().startswith("hint:")), None)
            if hint:  # the way out stays with the failure it answers
                text += "\n" + " " * (len(prefix) + 1) + hint
        if not self.live:
            click.echo(text, err=True)
            return
        click.echo("\r\033[K" + text, err=True)
        if self.converting and not self.converting.startswith(prefix):
            click.echo(self.converting, err=True, nl=False)
        else:
            self.converting = ""


def _summary_table(manifest, seconds: dict[str, float]) -> str:
    float32 = next((a for a in manifest.artifacts if a.format == "tflite" and a.variant == "float32" and a.bytes), None)
    header = ["variant", "status", "size", "vs float32", "rel L2", "max abs", "top-1 agree", "time"]
    rows = []
    for artifact in manifest.artifacts:
        check = artifact.check
        ratio = f"{artifact.bytes / float32.bytes:.2f}x" if float32 and artifact.bytes else "-"
        agree = check.top1_agreement if check else None
        label = artifact.variant if artifact.format == "tflite" else artifact.name
        step = artifact.variant if artifact.format == "tflite" else artifact.name
        rows.append([
            label + (" (flex)" if artifact.requires_flex else ""),
            artifact.status,
            _human_bytes(artifact.bytes),
            ratio,
            _fmt(check.worst_rel_l2 if check else None, ".2e"),
            _fmt(check.worst_max_abs if check else None, ".2e"),
            "-" if agree is None else f"{agree * 100:.1f}%",
            f"{seconds[step]:.1f} s" if step in seconds else "-",
        ])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    checks = manifest.check_inputs
    lines.append(
        f"checked on {checks['samples']} {checks['source']} samples against the SavedModel"
        + (f" (close calls again on {checks['close_call_samples']})" if checks.get("close_call_samples") else "")
        + (f"; calibrated on {manifest.calibration['samples']} samples" if manifest.calibration else "")
    )
    return "\n".join(lines)


@cli.command()
@click.argument("saved_model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder to write (built aside and renamed into place).")
@click.option("--signature", default="serving_default", show_default=True,
              help="Signature to convert; the manifest lists them all.")
@click.option("--variants", default=None,
              help=f"Comma-separated: {','.join(v.value for v in tflite_target.Variant)} [default: all].")
@click.option("--calibration", type=click.Path(path_type=Path),
              help="Real samples: .npz keyed by input name, .npy (one input) or an image folder.")
@click.option("--calibration-samples", default=data.DEFAULT_CALIBRATION_SAMPLES, show_default=True,
              help="How many calibration samples (spread over the data) to use.")
@click.option("--check-samples", default=data.DEFAULT_CHECK_SAMPLES, show_default=True,
              help="How many samples to compare each artifact with the SavedModel on.")
@click.option("--int8-io", type=click.Choice(tflite_target.INT8_IO_CHOICES), default=tflite_target.TFLiteOptions.int8_io,
              show_default=True,
              help="Input/output tensor type of the int8 variant.")
@click.option("--range-method", type=click.Choice(activation_ranges.CHOICES), default=activation_ranges.CHOICES[0],
              show_default=True,
              help="How int8 sets each activation's range; auto tries all, and bias correction, keeps the best.")
@click.option("--weight-rounding", type=click.Choice(tflite_target.WEIGHT_ROUNDING_CHOICES),
              default=tflite_target.TFLiteOptions.weight_rounding, show_default=True,
              help="int8, int16x8, dynamic and TF.js uint8 weights with --calibration: auto rounds them by error "
                   "feedback (GPTQ) where that scores better; nearest is the converters' own.")
@click.option("--diagnose", is_flag=True,
              help="Record int8's and int16x8's per-layer errors even when they pass (always done when they do not).")
@click.option("--float-layers", default="",
              help="Comma-separated int8 ops to keep in float, a last resort: tensor names as --diagnose lists "
                   "them, or op types (FULLY_CONNECTED); the manifest gives the byte cost.")
@click.option("--image-range", type=click.Choice(list(data.IMAGE_RANGES)), default=next(iter(data.IMAGE_RANGES)),
              show_default=True, help="Pixel scale for an image-folder calibration set.")
@click.option("--allow-flex", is_flag=True,
              help="Keep ops TFLite lacks as SELECT_TF_OPS (needs the flex delegate at run time).")
@click.option("--tfjs", "tfjs", default=",".join(tfjs_variants.DEFAULT_VARIANTS), show_default=True,
              help=f"TF.js graph models to write: {','.join(tfjs_variants.VARIANTS)} weights, or none.")
@click.option("--tfjs-shard-mb", default=tfjs_variants.DEFAULT_SHARD_MB, show_default=True, help="Size of each TF.js weight shard (MiB).")
@click.option("--onnx", is_flag=True, help="Also write onnx/model.onnx (tf2onnx; needs edgekit[onnx]).")
@click.option("--onnx-opset", type=int, help="ONNX opset [default: the newest tf2onnx supports].")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest to stdout instead of the table.")
@click.option("--debug", is_flag=True, help="Show tracebacks and TensorFlow's own logs.")
@_handle_errors
def convert(saved_model, out_dir, signature, variants, calibration, calibration_samples,
            check_samples, int8_io, range_method, weight_rounding, diagnose, float_layers, image_range, allow_flex,
            tfjs,
            tfjs_shard_mb, onnx, onnx_opset, force, as_json, debug):
    """Convert SAVED_MODEL to TFLite variants and TF.js graph models, check each against
    it (LiteRT; TF.js in Node.js), write a manifest.

    Exit status: 0 every variant converted and passed its check, 1 some failed,
    2 bad input (nothing written).
    """
    import os

    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgekit.build.converter import ConvertOptions
    from edgekit.build.converter import convert as run_convert
    from edgekit.build.targets.tflite import parse_variants

    options = ConvertOptions(
        signature=signature, variants=parse_variants(variants) if variants else None, calibration=calibration,
        calibration_samples=calibration_samples, check_samples=check_samples, int8_io=int8_io,
        range_method=range_method, weight_rounding=weight_rounding, diagnose=diagnose, float_layers=float_layers,
        allow_flex=allow_flex,
        image_range=image_range, tfjs=tfjs, tfjs_shard_mb=tfjs_shard_mb, onnx=onnx or onnx_opset is not None,
        onnx_opset=onnx_opset, force=force)
    printer = _ProgressPrinter()
    manifest = run_convert(saved_model, out_dir, options, progress=printer, quiet=not debug)
    if as_json:
        click.echo(manifest.to_json(), nl=False)
    else:
        click.echo(_summary_table(manifest, printer.seconds))
        click.echo(f"wrote {out_dir}/manifest.json")
    for kind, line in calibration_notes(manifest) + synthetic_row_notes(manifest):
        click.echo(f"{kind}: {line}", err=True)
    for artifact in manifest.artifacts:
        ranges = artifact.quantization.get("ranges") or {}
        if ranges.get("note"):
            click.echo(f"note: {artifact.variant}: ranges by {ranges['method']}, {ranges['note']}", err=True)
        rounding = artifact.quantization.get("weight_rounding") or {}
        if rounding.get("note"):
            label = artifact.variant if artifact.format == "tflite" else artifact.name  # tfjs_uint8, not uint8
            click.echo(f"note: {label}: weights rounded to nearest, {rounding['note']}", err=True)
        if "layers" in ranges:
            summary = layer_summary(ranges["layers"], ranges.get("layers_unmatched", []), artifact.variant,
                                    weights_fitted=rounding.get("method") == "gptq")
            click.echo(f"{artifact.variant}: {summary}", err=True)
        if "float_layers" in ranges:
            click.echo(f"{artifact.variant}: {float_layers_summary(ranges['float_layers'])}", err=True)
        if artifact.quantization.get("note"):
            click.echo(f"note: {artifact.variant}: {artifact.quantization['note']}", err=True)
    notes = set()  # the TF.js variants share one writer, so they share a failure
    for artifact in manifest.artifacts:
        if artifact.status == "failed" and artifact.format in ("onnx", "tfjs") and artifact.error not in notes:
            notes.add(artifact.error)
            click.echo(f"note: {artifact.error}", err=True)
        if artifact.status == "skipped":
            click.echo(f"note: {artifact.variant} skipped: {artifact.error}", err=True)
        if artifact.status == "ok" and artifact.check and artifact.check.reason:
            click.echo(f"note: {artifact.name}: {artifact.check.reason}", err=True)
        if artifact.status == "unverified":
            click.echo(f"warning: {artifact.name} was not checked: {artifact.check.reason}", err=True)
    finer = _int16x8_where_int8_failed(manifest)
    if finer:
        click.echo(f"note: {finer}", err=True)
    sys.exit(0 if manifest.all_ok else 1)


def _int16x8_where_int8_failed(manifest) -> str | None:
    """When int8 failed its check and int16x8 passed in the same run, say so: it is the integer
    artifact that holds such a model (int16 activations), at a size and speed to weigh."""
    tflite = {a.variant: a for a in manifest.artifacts if a.format == "tflite"}
    int8, int16x8 = tflite.get("int8"), tflite.get("int16x8")
    if not (int8 and int16x8 and int8.status == "failed" and int16x8.status == "ok" and int8.bytes):
        return None
    return (f"int8 failed its check where int16x8 passed (int16 activations, {int16x8.bytes / int8.bytes:.2f}x "
            "int8's bytes); LiteRT runs int16x8 on reference kernels, so weigh its speed with edgekit bench")


def _read_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read the API key file {path}: {exc}", "pass a readable text file") from None


# Fewer calibration rows than this, and int8 ranges rest on too little of what the model will see.
FEW_CALIBRATION_SAMPLES = 100
FEW_CHECK_SAMPLES = 8  # fewer check rows than this, and an output's spread means little
WEIGHT_BOUND_STEPS = 4  # int16x8 layers off by more of their steps than this: the int8 weights' error
BROKEN_LAYER_SPREAD = 0.5  # an int16x8 layer off by this much of its spread: an op 16 bits do not serve
OUTLIER_SPREAD = 20  # a calibration input whose extremes span this many times its middle 98% has outliers


def calibration_notes(manifest) -> list[tuple[str, str]]:
    """What to doubt in a conversion's full-integer figures, as (warning|note, text)."""
    calibrated = [a for a in manifest.artifacts if a.quantization.get("calibration_samples")]
    if not calibrated or manifest.calibration is None:
        return []
    lines = []
    samples = manifest.calibration["samples"]
    if samples < FEW_CALIBRATION_SAMPLES:
        lines.append(("warning", f"calibrated on {samples} sample{'s' if samples != 1 else ''} only: full-integer "
                     f"accuracy depends on how many; pass {FEW_CALIBRATION_SAMPLES}-500 real samples with --calibration"))
    for name, span in manifest.calibration.get("ranges", {}).items():
        bulk = span["p99"] - span["p1"]
        if bulk > 0 and span["max"] - span["min"] > OUTLIER_SPREAD * bulk:
            lines.append(("warning", f"input {name!r} of the calibration data spans {span['min']:g} to {span['max']:g} "
                          f"while 98% of its values lie within {span['p1']:g} to {span['p99']:g}: int8's input range "
                          "follows the extremes, so most values get a coarse step; clean out the outliers"))
    spec = manifest.signatures[manifest.signature]
    free_batch = any(t.shape and t.shape[0] is None for t in spec.inputs)
    for output in spec.outputs:
        if output.shape is not None and (not output.shape or (free_batch and output.shape[0] is not None)):
            lines.append(("warning", f"output {output.name!r} has no batch axis ({output.shape}): if it is computed "
                          "across a batch's rows (a sum, a mean), the full-integer artifacts' range for it was fitted "
                          "one row at a time, as calibration runs, and clips it for bigger batches; ship a float "
                          "variant, or compute it outside the model"))
    calibration = manifest.calibration or {}
    if calibration.get("distinct_samples", calibration.get("samples", 0)) * 2 < calibration.get("samples", 0):
        lines.append(("warning", f"calibration: only {calibration['distinct_samples']} of its "
                      f"{calibration['samples']} rows differ: ranges, weight rounding and the checks all see the same "
                      "few inputs, so their figures mean little; give varied real samples"))
    if manifest.check_inputs["samples"] < FEW_CHECK_SAMPLES:
        lines.append(("warning", f"the checks ran on {manifest.check_inputs['samples']} rows only: too few to "
                      "measure errors against an output's spread; give more calibration rows, or --check-samples"))
    if manifest.check_inputs["source"] == "calibration":
        lines.append(("note", "the checks ran on rows of the calibration data, which the quantized variants were "
                      "fitted to (ranges, weight rounding): bench with held-out rows (edgekit bench OUT_DIR --data "
                      "EVAL.npz) for an honest figure"))
    return lines


def synthetic_row_notes(manifest) -> list[tuple[str, str]]:
    """What the checks could not see when they ran on synthetic rows (no --calibration): inputs
    whose unknown axes beyond the batch were made 1 long, and inputs edgekit cannot vary."""
    if manifest.check_inputs["source"] != "synthetic":
        return []
    rows, lines = manifest.check_inputs["samples"], []
    for spec in manifest.signatures[manifest.signature].inputs:
        axes = spec.shape or [None]
        if any(d is None for d in axes[1:]):
            shape = [rows] + [1 if d is None else d for d in axes[1:]]
            lines.append(("warning", f"the synthetic check rows: input {spec.name!r} gets 1 on its unknown axes "
                          f"({shape}); a model that shrinks its input (a strided conv) cannot run them and fails "
                          "its check; pass --calibration with real rows, whose sizes the checks then use"))
        if not spec.dtype.startswith("float"):
            lines.append(("warning", f"the synthetic check rows: input {spec.name!r} ({spec.dtype}) holds the same "
                          f"value in all {rows} rows, since its valid values are unknown (token ids, say), so the "
                          "checks compare one input; pass --calibration with real rows"))
    return lines


def layer_summary(layers: list[dict], unmatched: list[str], variant: str = "int8", worst: int = 3,
                  weights_fitted: bool = False) -> str:
    """Where an integer model drifts (the manifest's per-layer errors) and what to try
    (`weights_fitted`: its weights were already rounded by error feedback)."""
    from edgekit.build.targets.int8_layers import NOT_KEPT_FLOAT

    measured = [layer for layer in layers if layer["rms_over_tensor_std"] is not None]
    left_out = f" ({len(unmatched)} quantized tensors had no float twin to compare: {', '.join(unmatched[:3])})" \
        if unmatched else ""
    if not measured:
        return "no layer could be compared with the float model" + left_out
    peak = max(measured, key=lambda layer: layer["rms_over_tensor_std"])
    # int8 inputs and their conversions come with int8 (--float-layers cannot keep them float)
    largest = sorted((layer for layer in measured if (layer["added"] or 0) > 0 and layer["op"] not in NOT_KEPT_FLOAT),
                     key=lambda layer: -layer["added"])[:worst]
    return (f"error against a layer's spread reaches {peak['rms_over_tensor_std']:.1%} at {peak['tensor']} "
            f"({peak['op']}); "
            "the layers that add most: "
            + ", ".join(f"{layer['tensor']} ({layer['op']}, +{layer['added']:.1%})" for layer in largest)
            + left_out + ". " + _what_to_try(variant, measured, peak["rms_over_tensor_std"], weights_fitted)
            + "; every layer's figures are in the manifest (quantization.ranges.layers)")


def _what_to_try(variant: str, measured: list[dict], peak: float, weights_fitted: bool = False) -> str:
    """int8's layers sit about a rounding step off (O-Net's first conv: 0.2-1 of its step), where
    better ranges or wider activations help. int16x8's steps are 256x finer: when its layers sit many
    steps off but close to the float model, its int8 weights (the ones dynamic-range shares) set the
    error, and only weights rounded by error feedback or float weights do better; a layer far off
    (an unrolled GRU's int16x8: 11x its spread)
    is an op that 16 bits do not serve, which no calibration mends."""
    if variant == "int8":
        return ("Try: more or more typical --calibration rows, --variants dynamic (float activations), int16x8 "
                "where its ops allow, or, at a byte cost, --float-layers for the worst")
    if peak > BROKEN_LAYER_SPREAD:
        return (f"A layer off by {peak:.0%} of its spread is more than rounding or int8 weights do: an op of "
                "this model does not take 16-bit activations well. Ship dynamic or float16 for it")
    steps = statistics.median([layer["rms_over_scale"] for layer in measured if layer["rms_over_scale"] is not None]
                              or [0.0])
    if steps > WEIGHT_BOUND_STEPS:
        fit = "" if weights_fitted else (f"--weight-rounding auto (the default) with {MIN_CALIBRATION_ROWS} or more "
                                         "--calibration rows, which rounds them by error feedback, or ")
        return (f"Its layers are off by a median {steps:.0f} of their 16-bit steps (rounding alone is 0.3): the "
                "int8 weights set this error, not the activations, and dynamic-range shares them. Try "
                f"{fit}float16 (float weights) where its bytes allow")
    return "Try: more or more typical --calibration rows, or --variants float16 (float weights)"


def float_layers_summary(kept: dict) -> str:
    """What --float-layers cost and bought (the manifest's quantization.ranges.float_layers)."""
    named = kept["ops_kept_float"] + [name.split(";")[0] for name in kept["tensors_kept_float"]]
    line = (f"keeping {', '.join(named)} in float costs {kept['byte_cost']:.2f}x the bytes "
            f"({kept['bytes']:,} against about {kept['bytes_all_int8_estimate']:,} all int8; "
            f"{kept['ops_int8']} ops still int8, {kept['ops_float']} float)")
    if kept.get("worst_error") is not None and kept.get("worst_error_all_int8") is not None:
        line += (f"; the worst output's error on the calibration rows goes from {kept['worst_error_all_int8']:.1%} "
                 f"to {kept['worst_error']:.1%}")
    return line + (f". Note: {kept['note']}" if kept.get("note") else "")


def _thread_counts(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise BadInput(f"--threads takes whole numbers like 1,2,4, not {text!r}", "e.g. --threads 1,4") from None
    return counts


@cli.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--data", "eval_data", type=click.Path(path_type=Path),
              help="Evaluation rows: .npz keyed by input name (labels under --labels-key) or .npy.")
@click.option("--labels-key", help="Key of the labels in the --data .npz [default: y, when the file has it].")
@click.option("--task", type=click.Choice(TASKS),
              help="Task metric for the labels [default: from the output's shape and the labels' dtype].")
@click.option("--output", "output_name", help="Output the labels score (when the signature has several).")
@click.option("--runs", default=100, show_default=True, help="Timed runs per latency figure.")
@click.option("--warmup", default=10, show_default=True, help="Untimed runs after the cold one.")
@click.option("--threads", "threads_text", help="Thread counts for each artifact (LiteRT threads, onnxruntime intra-op), e.g. 1,2,4 [default: 1 and all cores].")
@click.option("--tfjs-backends", default="wasm,cpu", show_default=True,
              help="TF.js backends to run TF.js artifacts on, in Node.js.")
@click.option("--batch", default=32, show_default=True, help="Batch size of the throughput figure.")
@click.option("--artifact", "artifacts", multiple=True,
              help="Measure only this artifact (name or variant; repeat it, or comma-separate); budgets apply to these.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report as JSON.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write a self-contained HTML report with plots.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory subprocesses.")
@click.option("--max-accuracy-drop", type=float, help="Budget: accuracy points lost (or % MAE gained).")
@click.option("--min-agreement", type=float, help="Budget: top-1 agreement with the SavedModel, percent.")
@click.option("--max-latency-ms", type=float, help="Budget: p50 at batch 1 (best thread count), ms.")
@click.option("--max-size-mb", type=float, help="Budget: file size, MiB.")
@click.option("--device", "devices", multiple=True,
              help="Also measure on a device running `edgekit serve --allow-bench` (http://HOST:PORT); repeatable.")
@click.option("--api-key-file", type=click.Path(path_type=Path), help="The devices' API key.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_handle_errors
def bench(out_dir, eval_data, labels_key, task, output_name, runs, warmup, threads_text, tfjs_backends, batch,
          artifacts, json_path, html_path, no_memory, max_accuracy_drop, min_agreement, max_latency_ms, max_size_mb,
          devices, api_key_file, debug):
    """Measure OUT_DIR's artifacts against the original SavedModel.

    Exit status: 0 measured and within every budget given, 1 a budget broken (one line
    each, saying by how much), 2 bad input.
    """
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgekit.benchmark.budgets import Budgets, broken_budgets, check_budgets_apply, passed_over
    from edgekit.benchmark.measure import BenchOptions
    from edgekit.benchmark.measure import bench as run_bench
    from edgekit.benchmark.report import render_html, render_table
    from edgekit.manifest import Manifest

    budgets = Budgets(max_accuracy_drop, min_agreement, max_latency_ms, max_size_mb)
    manifest = Manifest.read(out_dir)
    check_budgets_apply(budgets, manifest.signatures[manifest.signature])
    artifact = tuple(name.strip() for text in artifacts for name in text.split(",") if name.strip()) or None
    options = BenchOptions(
        eval_data=eval_data, labels_key=labels_key, task=task, output=output_name, runs=runs, warmup=warmup,
        threads=_thread_counts(threads_text),
        tfjs_backends=tuple(b.strip() for b in tfjs_backends.split(",") if b.strip()), batch=batch, artifact=artifact, memory=not no_memory, devices=tuple(devices), api_key=_read_key(api_key_file))
    report = run_bench(out_dir, options, progress=lambda message: click.echo(message, err=True), quiet=not debug)
    click.echo(render_table(report))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        report.write(json_path)
        click.echo(f"wrote {json_path}")
    if html_path:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_html(report))
        click.echo(f"wrote {html_path}")
    broken = broken_budgets(report, budgets)
    if budgets.any:
        for row in filter(passed_over, report.artifacts):
            click.echo(f"note: budgets pass over {row.name}: convert marked it {row.convert_status}", err=True)
    for line in broken:
        click.echo(f"budget broken: {line}", err=True)
    sys.exit(1 if broken else 0)


@cli.command()
@click.argument("model_base_path", required=False)
@click.option("--model-name", help="Name clients use [default: the base path's folder name].")
@click.option("--model-config", type=click.Path(path_type=Path),
              help="JSON config of several models (see docs/serve.md, Several models).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 exposes it to the network.")
@click.option("--port", default=8501, show_default=True, help="REST port (TF Serving's default).")
@click.option("--grpc-port", default=8500, show_default=True, help="gRPC port (TF Serving's default); 0 turns it off.")
@click.option("--threads", default=1, show_default=True, help="CPU threads per interpreter.")
@click.option("--interpreters", type=int,
              help="Interpreters per loaded version (per worker) [default: cores / threads / workers].")
@click.option("--workers", default=1, show_default=True,
              help="Server processes on the same ports, for boards where one Python process is the bottleneck.")
@click.option("--poll-seconds", default=2.0, show_default=True, help="How often the model folders are rescanned.")
@click.option("--max-body-mb", default=16.0, show_default=True, help="Largest request body or gRPC message (413 beyond).")
@click.option("--max-memory-mb", default=192.0, show_default=True,
              help="Memory for requests in progress, both doors together; a request waits for its share (503 "
                   "after --queue-timeout), one that could never fit gets 413.")
@click.option("--max-inflight", type=int,
              help="Predicts decoding or running at once, both doors together [default: 2 x interpreters].")
@click.option("--max-batch-rows", type=int,
              help="Rows per interpreter call; larger batches run in chunks [default: what fits 4 MB of the "
                   "interpreter's tensors, about 16 MB of its memory].")
@click.option("--max-header-kb", default=16.0, show_default=True, help="Request line and headers (431 beyond).")
@click.option("--read-timeout", default=10.0, show_default=True,
              help="Seconds a client may go quiet in the middle of a request (408).")
@click.option("--keepalive-timeout", default=15.0, show_default=True, help="Seconds an idle connection stays open.")
@click.option("--queue-timeout", default=30.0, show_default=True,
              help="Seconds a request may wait for memory or an inference slot (503).")
@click.option("--max-connections", default=256, show_default=True,
              help="Open REST connections, and gRPC calls in progress (503 / RESOURCE_EXHAUSTED beyond).")
@click.option("--api-key-file", type=click.Path(path_type=Path),
              help="Require this key: 'Authorization: Bearer KEY' or 'X-API-Key: KEY' (REST), "
                   "'authorization' metadata (gRPC).")
@click.option("--variant", help="Which artifact of an edgekit convert OUT_DIR to serve [default: int8 where present].")
@click.option("--version-policy", type=click.Choice(["latest", "all"]), default="latest", show_default=True,
              help="Serve the newest version, or every version on disk.")
@click.option("--allow-bench", is_flag=True,
              help="Turn on POST /v1/bench, for `edgekit bench --device` (needs --api-key-file).")
@click.option("--bench-max-mb", default=64.0, show_default=True, help="Largest artifact upload the bench endpoint takes.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.option("--debug", is_flag=True, help="Show tracebacks of start-up errors.")
@_handle_errors
def serve(model_base_path, model_name, model_config, host, port, grpc_port, threads, interpreters, workers, poll_seconds,
          max_body_mb, max_memory_mb, max_inflight, max_batch_rows, max_header_kb, read_timeout, keepalive_timeout,
          queue_timeout, max_connections, api_key_file, variant, version_policy, allow_bench, bench_max_mb, log_level,
          debug):
    """Serve TFLite models over TensorFlow Serving's REST and gRPC APIs (LiteRT and numpy only).

    MODEL_BASE_PATH holds one folder per version (1/, 2/, ...), each with a
    model.tflite or an edgekit convert OUT_DIR.
    """
    from edgekit.serve.limits import MB, Limits
    from edgekit.serve.repository import VersionPolicy
    from edgekit.serve.server import (
        default_interpreters,
        model_configs,
        read_api_key,
        run,
    )

    if threads < 1 or (interpreters is not None and interpreters < 1) or poll_seconds <= 0 or workers < 1:
        raise BadInput("--threads, --interpreters, --workers and --poll-seconds must be positive", "e.g. --threads 1")
    interpreters = interpreters or default_interpreters(threads, workers)
    limits = Limits(max_body_bytes=int(max_body_mb * MB), max_memory_bytes=int(max_memory_mb * MB),
                    max_inflight=2 * interpreters if max_inflight is None else max_inflight,
                    max_batch_rows=max_batch_rows, max_header_bytes=int(max_header_kb * 1024),
                    read_timeout=read_timeout, keepalive_timeout=keepalive_timeout, queue_timeout=queue_timeout,
                    max_connections=max_connections)
    configs = model_configs(model_base_path, model_name, model_config, variant, VersionPolicy(version_policy))
    run(configs, limits, host=host, port=port, grpc_port=grpc_port, threads=threads, interpreters=interpreters,
        poll_seconds=poll_seconds, api_key=read_api_key(api_key_file), log_level=log_level,
        bench_max_bytes=int(bench_max_mb * MB) if allow_bench else None, workers=workers)


@cli.command("package")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--platform", type=click.Choice(PLATFORMS), required=True, help="The app build to lay out for.")
@click.option("--dest", type=click.Path(path_type=Path), required=True,
              help="Where the model folder goes (Android: app/src/main/assets).")
@click.option("--variant", help="The artifact to ship (name or variant).")
@click.option("--pick", type=click.Choice(PICKS),
              help="Choose among the artifacts that meet the budgets (fastest/most-accurate need --bench-json).")
@click.option("--bench-json", type=click.Path(path_type=Path), help="`edgekit bench --json` report for picks and budgets.")
@click.option("--labels", type=click.Path(path_type=Path), help="Labels file, one per line in class order.")
@click.option("--name", help="Model folder name [default: OUT_DIR's name].")
@click.option("--max-size-mb", type=float, help="Budget: file size, MiB.")
@click.option("--max-accuracy-drop", type=float, help="Budget: accuracy points lost (from --bench-json).")
@click.option("--max-latency-ms", type=float, help="Budget: p50 at batch 1 (from --bench-json).")
@click.option("--allow-flex", is_flag=True, help="The app links the flex delegate (select TF ops).")
@click.option("--json", "as_json", is_flag=True, help="Print what was laid out as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_handle_errors
def package_command(out_dir, platform, dest, variant, pick, bench_json, labels, name, max_size_mb, max_accuracy_drop,
                    max_latency_ms, allow_flex, as_json, debug):
    """Put the right model into an Android, iOS or web app build.

    Exit status: 0 laid out (or already up to date), 1 refused (a budget broken, a failed or
    flex artifact, no TF.js artifact for web), 2 bad input.
    """
    import json

    from edgekit.packaging import Budgets, package, result_dict

    result = package(out_dir, platform, dest, variant=variant, pick=pick, bench_json=bench_json, labels=labels,
                     name=name, budgets=Budgets(max_size_mb=max_size_mb, max_accuracy_drop=max_accuracy_drop,
                                                  max_latency_ms=max_latency_ms), allow_flex=allow_flex)
    if as_json:
        click.echo(json.dumps(result_dict(result), indent=2))
        return
    state = "laid out" if result.changed else "up to date, nothing rewritten"
    click.echo(f"{platform}: {result.artifact} -> {result.folder} ({state})")
    if not result.verified:
        click.echo(f"warning: {result.artifact} never ran in its runtime: convert could not check it "
                   "(see its check.reason in the manifest)", err=True)
    for file_name, digest in result.files.items():
        click.echo(f"  {file_name:<16} {(result.folder / file_name).stat().st_size:>10} bytes  sha256 {digest[:16]}")


@cli.command("setup-tfjs")
@click.option("--prefix", type=click.Path(path_type=Path),
              help="Where to install [default: ~/.local/share/edgekit/tfjs, where edgekit looks].")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_handle_errors
def setup_tfjs(prefix, debug):
    """Install the pinned TF.js npm packages that check and bench TF.js artifacts
    (for a pip-installed edgekit; in a checkout, `npm ci` does the same). Needs Node.js."""
    from edgekit.engines.tfjs import TFJS_VERSION, default_install_dir, setup

    modules = setup(prefix)
    click.echo(f"installed TF.js {TFJS_VERSION} in {modules}")
    if prefix is not None and Path(prefix).resolve() != default_install_dir().resolve():
        click.echo(f"edgekit finds it with: export EDGEKIT_NODE_MODULES={modules}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()

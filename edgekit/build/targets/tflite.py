"""TFLite (LiteRT) variants of a SavedModel signature.

Quantization is data, not branches: `VARIANTS` is the one table of what each variant
does, whether it needs calibration data and the check tolerance it must meet; the
CLI, the README table and the converter all read it. `TFLiteOptions` carries the
knobs and validates them before TensorFlow is imported.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from functools import partial

import numpy as np

from edgekit.agreement import Tolerance
from edgekit.build.targets import activation_ranges, int8_layers, tflite_isolated, weight_rounding
from edgekit.build.targets.base import BuildContext, Pending, Target
from edgekit.errors import BadInput, ConversionFailed
from edgekit.manifest import Artifact, TensorSpec
from edgekit.native_logs import captured_native_output
from edgekit.runtime.tflite import flex_ops_in


class Variant(str, Enum):
    FLOAT32 = "float32"
    DYNAMIC = "dynamic"
    FLOAT16 = "float16"
    INT8 = "int8"
    INT16X8 = "int16x8"


@dataclass(frozen=True)
class VariantSpec:
    weights: str
    activations: str
    needs_calibration: bool
    # What the post-conversion check accepts: relative L2 error (norm(tflite - savedmodel) /
    # norm(savedmodel)) on every output, error relative to the spread on outputs that are not
    # probabilities (see agreement.judge).
    tolerance: Tolerance
    summary: str


VARIANTS: dict[Variant, VariantSpec] = {
    Variant.FLOAT32: VariantSpec("float32", "float32", False, Tolerance(1e-3, 0.01), "no quantization"),
    Variant.DYNAMIC: VariantSpec(
        "int8", "float32", False, Tolerance(0.05, 0.05), "int8 weights, activations quantized at run time"
    ),
    Variant.FLOAT16: VariantSpec("float16", "float32", False, Tolerance(0.01, 0.02), "float16 weights"),
    Variant.INT8: VariantSpec(
        "int8", "int8", True, Tolerance(0.15, 0.05), "full integer, calibrated; int8 I/O unless --int8-io float"
    ),
    Variant.INT16X8: VariantSpec(
        "int8", "int16", True, Tolerance(0.05, 0.05), "int16 activations, int8 weights, calibrated; float I/O"
    ),
}

INT8_IO_CHOICES = ("int8", "float")
WEIGHT_ROUNDING_CHOICES = ("auto", "nearest")  # auto: error feedback where it scores better (weight_rounding.py)
# The variants whose weights weight_rounding.choose rounds after conversion (int8's picker does its own)
WEIGHT_ROUNDED = (Variant.DYNAMIC, Variant.INT16X8)


def parse_variants(text: str) -> tuple[Variant, ...]:
    """'float32,int8' -> (Variant.FLOAT32, Variant.INT8), in the order given, no repeats."""
    chosen: list[Variant] = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        try:
            variant = Variant(word)
        except ValueError:
            raise BadInput(
                f"unknown TFLite variant {word!r}",
                "choose from: " + ", ".join(v.value for v in Variant),
            ) from None
        if variant not in chosen:
            chosen.append(variant)
    if not chosen:
        raise BadInput("no TFLite variant asked for", "e.g. --variants float32,int8")
    return tuple(chosen)


@dataclass(frozen=True)
class TFLiteOptions:
    variants: tuple[Variant, ...] = tuple(Variant)
    int8_io: str = "int8"  # "int8": int8 input/output tensors; "float": float I/O
    allow_flex: bool = False
    range_method: str = "auto"  # int8's activation ranges: activation_ranges.CHOICES
    diagnose: bool = False  # per-layer int8 and int16x8 errors in the manifest even when the check passes
    float_layers: tuple[str, ...] = ()  # int8 ops kept float: tensor names or op types
    weight_rounding: str = "auto"  # int8 weights: WEIGHT_ROUNDING_CHOICES

    def __post_init__(self) -> None:
        if self.int8_io not in INT8_IO_CHOICES:
            raise BadInput(
                f"--int8-io must be one of {', '.join(INT8_IO_CHOICES)}, not {self.int8_io!r}",
                "int8 gives int8 input/output tensors; float keeps float I/O",
            )
        if self.range_method not in activation_ranges.CHOICES:
            raise BadInput(f"--range-method must be one of {', '.join(activation_ranges.CHOICES)}, "
                           f"not {self.range_method!r}", "auto tries every method and keeps the best one")
        if self.weight_rounding not in WEIGHT_ROUNDING_CHOICES:
            raise BadInput(f"--weight-rounding must be one of {', '.join(WEIGHT_ROUNDING_CHOICES)}, "
                           f"not {self.weight_rounding!r}", "auto tries error-feedback rounding and keeps it "
                           "when it scores better; nearest is TFLite's own")
        object.__setattr__(self, "variants", tuple(Variant(v) for v in self.variants))


@dataclass(frozen=True)
class TFLiteResult:
    model: bytes
    requires_flex: bool
    flex_ops: tuple[str, ...]


Samples = Callable[[], Iterator[dict[str, np.ndarray]]]


def _configure(converter, variant: Variant, options: TFLiteOptions, calibration: Samples | None, flex: bool):
    import tensorflow as tf

    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    if variant is Variant.DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant is Variant.FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant is Variant.INT8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        if options.int8_io == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    elif variant is Variant.INT16X8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        builtins = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
    ops = [builtins]
    if variant is Variant.INT16X8:  # an op with no 16x8 kernel (PRELU, say) runs in float; the manifest names it
        ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
    if flex:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        converter._experimental_lower_tensor_list_ops = False
    converter.target_spec.supported_ops = ops


def unsupported_ops(message: str) -> list[str]:
    """TensorFlow op names the converter could not lower, from its error text."""
    return sorted(set(re.findall(r"'tf\.(\w+)'", message)) | set(re.findall(r"\btf\.(\w+)\b op", message)))


def _first_error_line(message: str) -> str:
    for line in message.splitlines():
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return message.strip().splitlines()[0] if message.strip() else "unknown converter error"


def operator_codes(model: bytes) -> tuple[set[str], set[str]]:
    """The builtin op names and the custom op codes a .tflite flatbuffer uses."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = int8_layers.builtin_names()
    root = schema.Model.GetRootAsModel(model, 0)
    builtins, customs = set(), set()
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i)
        custom = code.CustomCode()
        if custom:
            customs.add(custom.decode())
        else:
            builtins.add(names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN"))
    return builtins, customs


def _refuse_unfrozen_variables(variant: Variant, builtins: set[str]) -> None:
    """A model that reads variables with no initializer subgraph computes with whatever
    memory the variables hold: XNNPACK returns garbage, the plain kernels refuse to run."""
    if "READ_VARIABLE" in builtins and "CALL_ONCE" not in builtins:
        raise _unfrozen_variables(variant)


def _unfrozen_variables(variant: Variant) -> ConversionFailed:
    return ConversionFailed(
        f"{variant.value}: the converted model reads TensorFlow variables that TFLite did not freeze "
        "into constants and has no initializer for them (VAR_HANDLE/READ_VARIABLE), so it would run "
        "on uninitialized weights",
        "export the model with keras_model.export(path) or keras.export.ExportArchive; this happens, "
        "for example, when a Keras 3 model is wrapped in a tf.Module and saved with tf.saved_model.save",
    )


def convert_variant(
    saved_model_dir: str,
    signature: str,
    variant: Variant,
    options: TFLiteOptions,
    calibration: Samples | None,
    quiet: bool = True,
    start_with_flex: bool = False,
    picker: activation_ranges.RangePicker | None = None,
) -> TFLiteResult:
    """One variant's .tflite bytes. Tries builtin ops first; falls back to SELECT_TF_OPS
    only when allowed, and says which TensorFlow ops forced it. `picker` chooses int8's
    activation ranges (see quantizing_with)."""
    import tensorflow as tf

    if VARIANTS[variant].needs_calibration and calibration is None:
        raise BadInput(
            f"the {variant.value} variant needs calibration data",
            "pass --calibration with real samples (.npz keyed by input name, .npy or images)",
        )
    attempts = [True] if start_with_flex else [False, True] if options.allow_flex else [False]
    failure = ""
    for flex in attempts:
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[signature])
        _configure(converter, variant, options, calibration, flex)
        with captured_native_output(quiet) as captured, quantizing_with(picker):
            try:
                model = converter.convert()
            except Exception as exc:  # ConverterError, or RuntimeError/ValueError from calibration
                failure = f"{exc}\n{captured.text}" if quiet else str(exc)
                continue
        builtins, customs = operator_codes(model)
        _refuse_unfrozen_variables(variant, builtins)
        flex_ops = tuple(sorted(op for op in customs if op.startswith("Flex")))
        return TFLiteResult(model=model, requires_flex=bool(flex_ops), flex_ops=flex_ops)

    ops = unsupported_ops(failure)
    if ops and not options.allow_flex:
        raise ConversionFailed(
            f"{variant.value}: TFLite builtins cannot express these TensorFlow ops: {', '.join(ops)}",
            "pass --allow-flex to keep them as SELECT_TF_OPS (the artifact then needs the flex "
            "delegate, which the Python LiteRT and tflite-runtime wheels lack), or change the "
            "model to use TFLite-friendly ops",
        )
    unranged = re.search(r"(?:should be recorded during calibration: Failed for tensor|Empty min/max for tensor) "
                         r"([^\s:]+(?::\d+)?)", failure)
    if "(READ_VARIABLE) failed to invoke" in failure:  # the full-integer variants' calibration ran into them
        raise _unfrozen_variables(variant)
    flex_ops = flex_ops_in(failure)
    if VARIANTS[variant].needs_calibration and flex_ops and "not supported by this interpreter" in failure:
        raise ConversionFailed(
            f"{variant.value}: calibration runs the model in TFLite's own interpreter, which cannot run the "
            f"TensorFlow (flex) ops --allow-flex keeps ({', '.join(flex_ops)})",
            "ship dynamic, float16 or float32, which need no calibration and keep those ops as flex ops too")
    if variant is Variant.INT16X8 and unranged:
        raise ConversionFailed(
            f"int16x8: TFLite's 16x8 quantizer has no range for tensor {unranged[1]}: it cannot quantize an "
            "integer tensor (token ids, a loop's counter) or one its calibration never reached",
            "ship int8 or dynamic for this model")
    raise ConversionFailed(f"{variant.value}: TFLite could not convert the model: {_first_error_line(failure)}")


def calibrated_only(saved_model_dir: str, signature: str, variant: Variant, options: TFLiteOptions,
                    calibration: Samples, quiet: bool = True) -> bytes:
    """The float model with the ranges TFLite's calibration recorded, before it is quantized: what
    a per-layer diagnosis compares an integer model with. int16x8 needs this second conversion,
    since TFLite calibrates and quantizes 16x8 in one call (int8's picker is handed the model)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[signature])
    _configure(converter, variant, options, calibration, flex=False)
    converter._experimental_calibrate_only = True
    with captured_native_output(quiet):
        return converter.convert()


@contextmanager
def quantizing_with(picker: activation_ranges.RangePicker | None) -> Iterator[None]:
    """TFLiteConverter calibrates, then hands the calibrated float model to
    `lite._mlir_quantize`. Standing in for that one call lets `picker` quantize it under
    several range methods and return the best, while the converter's own finishing steps
    (I/O types, buffer dedup, metadata) still apply. If a TensorFlow release renames the
    call, the picker is never called and the manifest says TFLite's min/max was used."""
    if picker is None:
        yield
        return
    from tensorflow.lite.python import lite

    original = lite._mlir_quantize

    def quantize(calibrated, *args, **kwargs):
        return picker(calibrated, lambda model, **denylists: original(model, *args, **kwargs, **denylists))

    lite._mlir_quantize = quantize
    try:
        yield
    finally:
        lite._mlir_quantize = original


# --- the target --------------------------------------------------------------------------

# Checks cost most where LiteRT has only reference kernels (int16x8: ~0.2 s per
# MobileNetV2 image here). Building those variants first lets their checks overlap the
# remaining conversions; the manifest keeps the order the user asked for.
BUILD_ORDER = [Variant.INT16X8, Variant.INT8, Variant.DYNAMIC, Variant.FLOAT32, Variant.FLOAT16]


class TFLiteTarget(Target):
    """Each asked-for variant converted by TFLiteConverter, written as model_<variant>.tflite
    and opened in LiteRT for its check (or marked unverified when it needs flex ops)."""

    format, engine = "tflite", "LiteRT"

    def __init__(self, context: BuildContext, options: TFLiteOptions):
        super().__init__(context)
        self.options = options
        self.flex_needed = False  # once one variant needed flex, later ones start with it
        self.runtime = "unknown"
        # weight rounding's reference, converted once: the float32 conversion (the float32 artifact reuses it)
        self._float_twin: TFLiteResult | ConversionFailed | None = None
        self._moments: dict = {}  # its layers' input moments, for both variants rounded against it

    @classmethod
    def for_job(cls, context: BuildContext, options) -> TFLiteTarget | None:
        tflite = options.tflite
        return cls(context, tflite) if tflite.variants else None

    def steps(self) -> list[str]:
        return [v.value for v in self.options.variants]

    def build_order(self) -> list[str]:
        order = sorted(self.options.variants, key=BUILD_ORDER.index)
        if self.options.float_layers and Variant.INT8 in order:  # a misspelt name stops the run before the rest
            order.remove(Variant.INT8)
            order.insert(0, Variant.INT8)
        return [v.value for v in order]

    def _cost_of_float_layers(self, kept: dict, model: bytes) -> str | None:
        """Complete the manifest's float_layers record (bytes, an estimate of the all-int8 size:
        the difference was measured before the converter's finishing steps, within about 1.5%)
        and say why the artifact fails when nothing is left in int8."""
        estimate = len(model) - kept["bytes_added"]
        kept.update(bytes=len(model), bytes_all_int8_estimate=estimate, byte_cost=round(len(model) / estimate, 3),
                    outputs_kept_float=int8_layers.requantized_outputs(model))
        if kept["outputs_kept_float"]:
            kept["note"] = "; ".join(filter(None, [kept.get("note"), (
                f"{', '.join(kept['outputs_kept_float'])}: computed in float, then quantized again for the int8 "
                "output (--int8-io int8); pass --int8-io float to return it in float")]))
        if kept["ops_int8"] == 0:
            return ("--float-layers kept every op in float, so nothing runs in int8: this would be float32 under "
                    "another name; ship the float32 variant, or keep fewer ops float")
        return None

    def versions(self) -> dict[str, str]:
        return {"runtime": self.runtime}

    def build(self, step: str) -> Artifact | Pending:
        import hashlib

        from edgekit.errors import EdgekitError

        context, variant = self.context, Variant(step)
        common = dict(name=f"tflite_{step}", format="tflite", variant=step, signature=context.signature,
                      quantization=quantization_record(variant, context.calibration_rows))
        if VARIANTS[variant].needs_calibration and context.calibration_rows is None:
            return Artifact(status="skipped", **common,
                            error="no calibration data: pass --calibration with real samples "
                                  "(.npz keyed by input name, .npy, or a folder of images)")
        picker = self._picker(variant)
        try:
            result = self._convert(variant, picker)
        except EdgekitError as exc:
            return Artifact(status="failed", **common, error=str(exc))
        failure = self._record_ranges(picker, common["quantization"], result.model)
        rounds = variant in WEIGHT_ROUNDED and self.options.weight_rounding == "auto"
        if rounds and context.calibration_rows is not None:
            result = replace(result, model=self._rounded_weights(result, common["quantization"]))
        if VARIANTS[variant].needs_calibration:
            failure = failure or _record_float_ops(variant, common["quantization"], result.model)
        if failure:
            return Artifact(status="failed", **common, error=failure)
        self.flex_needed = self.flex_needed or result.requires_flex
        file_name = f"model_{step}.tflite"
        (context.staging / file_name).write_bytes(result.model)
        fields = dict(**common, file=file_name, bytes=len(result.model),
                      sha256=hashlib.sha256(result.model).hexdigest(), requires_flex=result.requires_flex)
        diagnose = picker.diagnose_missed_check if picker is not None else None
        if variant is Variant.INT16X8:
            diagnose = partial(self._diagnose_int16x8, result.model, common["quantization"])
            if self.options.diagnose:
                diagnose()
        return self._opened(step, fields, result, picker, diagnose)

    def _rounded_weights(self, result: TFLiteResult, quantization: dict) -> bytes:
        """dynamic-range's or int16x8's model with its weights rounded by error feedback when
        that scores better against the float model (weight_rounding.choose), recorded in the
        manifest's quantization.weight_rounding."""
        context = self.context
        if result.requires_flex:
            quantization["weight_rounding"] = {"method": "nearest", "note": "error-feedback rounding skipped: the "
                                               "model needs flex ops, which LiteRT here cannot run"}
            return result.model
        if self._float_twin is None:
            try:
                self._float_twin = convert_variant(str(context.source_dir), context.signature, Variant.FLOAT32,
                                                   self.options, None, context.quiet)
            except Exception as exc:  # noqa: BLE001 - TF raises many types; rounding must not cost the artifact
                self._float_twin = ConversionFailed(_first_error_line(str(exc)))
        if isinstance(self._float_twin, ConversionFailed):
            quantization["weight_rounding"] = {"method": "nearest", "note": "error-feedback rounding skipped: the "
                                               f"float model did not convert ({self._float_twin.message})"}
            return result.model
        fixed = context.signature_spec.fixed_batch is not None
        with captured_native_output(context.quiet):  # LiteRT announces its XNNPACK delegate
            model, record = weight_rounding.choose(result.model, self._float_twin.model, context.calibration_rows,
                                                   context.signature, context.batch, context.batch if fixed else 1,
                                                   self._moments)
        quantization["weight_rounding"] = record
        quantization.setdefault("calibration_samples", len(next(iter(context.calibration_rows.values()))))
        return model

    def _diagnose_int16x8(self, model: bytes, quantization: dict) -> None:
        """int16x8's per-layer errors into the manifest (quantization.ranges: TFLite's min/max), once:
        on request, or when its check fails."""
        record = quantization.setdefault("ranges", {"method": "minmax"})
        if {"layers", "layers_error"} & set(record):
            return
        context = self.context
        if context.control_flow:  # TFLite's calibrator can crash on it: conversions of it run in a child process
            record["layers_error"] = f"not diagnosed: the graph has control flow ({', '.join(context.control_flow)})"
            return
        try:
            calibrated = calibrated_only(str(context.source_dir), context.signature, Variant.INT16X8, self.options,
                                         representative(context.calibration_rows), context.quiet)
        except Exception as exc:  # noqa: BLE001 - TF raises many types; a diagnosis must not cost the artifact
            record["layers_error"] = f"TFLite could not calibrate it again: {_first_error_line(str(exc))}"
            return
        fixed = context.signature_spec.fixed_batch is not None
        activation_ranges.add_layer_errors(record, calibrated, model, context.calibration_rows, context.signature,
                                           context.batch if fixed else 1)

    def _picker(self, variant: Variant) -> activation_ranges.RangePicker | None:
        """int8's stand-in for the converter's quantize step (see quantizing_with)."""
        if variant is not Variant.INT8:
            return None
        context = self.context
        fixed = context.signature_spec.fixed_batch is not None
        methods = activation_ranges.METHODS if self.options.range_method == "auto" else (self.options.range_method,)
        # Histograms one row per call, unless the signature fixes its batch: a batch of 224x224
        # images with every intermediate tensor kept would need gigabytes.
        return activation_ranges.RangePicker(methods, context.calibration_rows, context.signature, context.batch,
                                             VARIANTS[variant].tolerance, self.options.diagnose,
                                             histogram_batch=context.batch if fixed else 1,
                                             float_layers=self.options.float_layers,
                                             rounding=self.options.weight_rounding == "auto")

    def _convert(self, variant: Variant, picker: activation_ranges.RangePicker | None) -> TFLiteResult:
        context = self.context
        if VARIANTS[variant].needs_calibration and context.control_flow:
            return tflite_isolated.convert(str(context.source_dir), context.signature, variant, self.options,
                                           context.calibration_rows, context.quiet, self.flex_needed, picker,
                                           context.control_flow)
        if variant is Variant.FLOAT32 and isinstance(self._float_twin, TFLiteResult) and not self.flex_needed:
            return self._float_twin  # weight rounding converted it already, the same way
        samples = representative(context.calibration_rows) if context.calibration_rows is not None else None
        return convert_variant(str(context.source_dir), context.signature, variant, self.options, samples,
                               context.quiet, self.flex_needed, picker)

    def _record_ranges(self, picker: activation_ranges.RangePicker | None, quantization: dict,
                       model: bytes) -> str | None:
        """The picker's record into the manifest's quantization; why the artifact fails, if it does."""
        if picker is None:
            return None
        if picker.refusal is not None:
            raise picker.refusal  # a --float-layers typo stops the run: nothing is written
        if picker.record is None and self.options.float_layers:
            return ("this TensorFlow never handed edgekit the calibrated model, so --float-layers could not be "
                    "applied; drop it, or use the TensorFlow edgekit pins")
        quantization["ranges"] = picker.record or {
            "method": "minmax", "note": "TFLite's own: this TensorFlow never handed edgekit the calibrated model"}
        kept_float = quantization["ranges"].get("float_layers")
        return self._cost_of_float_layers(kept_float, model) if kept_float else None

    def _opened(self, step: str, fields: dict, result: TFLiteResult, picker: activation_ranges.RangePicker | None,
                diagnose_failure: Callable[[], None] | None) -> Artifact | Pending:
        """The artifact loaded in LiteRT, waiting for its check (or why it cannot be checked)."""
        import os

        from edgekit.errors import EdgekitError, FlexOpsRequired
        from edgekit.manifest import Check
        from edgekit.runtime.tflite import TFLiteModel

        context, tolerance = self.context, VARIANTS[Variant(step)].tolerance
        try:
            with captured_native_output(context.quiet):  # LiteRT announces its XNNPACK delegate
                model = TFLiteModel(result.model, num_threads=os.cpu_count())
        except FlexOpsRequired as exc:
            check = Check(status="skipped", samples=0, tolerance_rel_l2=tolerance.rel_l2, tolerance_spread=tolerance.spread,
                          reason=f"needs flex ops ({', '.join(result.flex_ops)}); {exc.hint}")
            return Artifact(status="unverified", check=check, **fields)
        except EdgekitError as exc:
            return Artifact(status="failed", error=f"LiteRT cannot load it: {exc.message}", **fields)
        self.runtime = model.runtime
        known_failure = None
        if picker is not None and picker.reason:
            rows = len(next(iter(context.calibration_rows.values())))
            known_failure = f"on the {rows} calibration rows, against the float model: {picker.reason}"
        return Pending(step, fields, model, tolerance, [_tensor_spec(i) for i in model.inputs(context.signature)],
                       [_tensor_spec(o) for o in model.outputs(context.signature)], known_failure,
                       diagnose_failure=diagnose_failure)


def _record_float_ops(variant: Variant, quantization: dict, model: bytes) -> str | None:
    """The ops of a full-integer variant that compute in float32 (between a DEQUANTIZE and a
    QUANTIZE), counted by type into the manifest, also when there are none: int16x8 keeps the
    ops LiteRT has no 16x8 kernel for in float, int8 what --float-layers or the quantizer left.
    Why the artifact fails when no op is left in integers."""
    found = int8_layers.ops_by_precision(model)
    floating = dict(sorted(Counter(found["float"]).items()))
    quantization.update(ops_integer=len(found["integer"]), ops_float=len(found["float"]), float_ops=floating)
    if not floating:
        return None
    listed = ", ".join(f"{name} x{count}" for name, count in floating.items())
    if not found["integer"]:
        return (f"no op of this model computes in {VARIANTS[variant].activations} ({listed} stay float32): this "
                "would be float32 under another name")
    why = ("LiteRT has no 16x8 kernel for them" if variant is Variant.INT16X8
           else "an int8-only accelerator (an Edge TPU, an NPU) cannot run them")
    quantization["note"] = f"{listed} compute in float32, between a DEQUANTIZE and a QUANTIZE: {why}"
    return None


def quantization_record(variant: Variant, calibration_rows: dict[str, np.ndarray] | None) -> dict:
    spec = VARIANTS[variant]
    record = {"weights": spec.weights, "activations": spec.activations}
    if spec.needs_calibration and calibration_rows is not None:
        record["calibration_samples"] = len(next(iter(calibration_rows.values())))
    return record


def representative(rows: dict[str, np.ndarray]) -> Samples:
    count = len(next(iter(rows.values())))

    def samples():
        for i in range(count):
            yield {name: array[i : i + 1] for name, array in rows.items()}

    return samples


def _tensor_spec(info) -> TensorSpec:
    return TensorSpec(name=info.name, dtype=info.dtype.name, shape=[None if d < 0 else d for d in info.shape],
                      quantization=info.quantization_dict())

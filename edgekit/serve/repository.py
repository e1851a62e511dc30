"""The versioned model repository: which versions are on disk, which are served.

Laid out as TF Serving's: BASE_PATH/<version number>/ holding a `model.tflite`, an
edgekit convert OUT_DIR (manifest.json + artifacts; the variant from config, default
int8 where present), or a single .tflite. A poller thread rescans every few seconds.
A new version is loaded and warmed up before it takes traffic, then swapped in by
replacing one dict reference, so a request sees either the old set or the new one,
never a half-loaded model. A version that fails to load is reported in its status and
passed over: under the latest policy the next older version that loads serves instead
(past TF Serving, which then serves nothing), so a Pi rebooting after a bad deploy stays
up. A version dropped from the served set is freed when the last request holding it
finishes (it is only referenced, never torn down). Any failure while loading a version,
whatever its cause (a manifest that is not an object, a truncated .tflite, a bug of ours),
fails that version alone: its status says why and the poller goes on with the others.

Device world: numpy and the LiteRT runtime only.
"""
from __future__ import annotations

import json
import math
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import (
    BadInput,
    EdgekitError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from edgekit.manifest import MANIFEST_NAME, Manifest
from edgekit.native_logs import captured_native_output
from edgekit.runtime import TFLiteModel
from edgekit.runtime.tflite import DEFAULT_SIGNATURE, runtime_error_text, zeros
from edgekit.serve.codec import ServingTensor
from edgekit.serve.limits import WouldWait
from edgekit.serve.malloc import allocated

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
# Rows per interpreter call when --max-batch-rows is not given: as many as keep the
# interpreter's listed tensors within this, so a large legal batch runs in chunks. An
# interpreter keeps its largest allocation for good, and its real memory is about 4x the
# tensors it lists (XNNPACK's own buffers; measured on the digits CNN: 59 MB for 15.6 MB
# listed), so this holds each interpreter near 16 MB whatever clients send.
BATCH_TENSOR_BYTES = 4 << 20
ARENA_FACTOR = 4  # real interpreter memory per listed tensor byte (measured, above)
# A version whose one-row call takes at most this answers small requests on the event loop
# itself (no thread hop, which costs more than such a model's inference).
QUICK_CALL_SECONDS = 0.0005
TF_DTYPES = {"float32": "DT_FLOAT", "float16": "DT_HALF", "float64": "DT_DOUBLE", "int8": "DT_INT8",
             "uint8": "DT_UINT8", "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64",
             "bool": "DT_BOOL", "object": "DT_STRING", "bytes": "DT_STRING"}


def check_name(name: str, what: str = "model name") -> str:
    if not NAME_PATTERN.match(name or ""):
        raise BadInput(f"invalid {what} {name!r}", "use letters, digits, '.', '_' and '-' (no slashes)")
    return name


@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's model_version_policy: latest N, all, or specific versions."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def aspired(self, on_disk: list[int]) -> list[int]:
        ordered = sorted(on_disk, reverse=True)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[: self.num_versions]

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> VersionPolicy:
        if not data:
            return cls()
        if not isinstance(data, dict) or len(data) != 1:
            raise BadInput("model_version_policy must have one of latest, all, specific",
                           '{"latest": {"num_versions": 1}}')
        (kind, body), = data.items()
        body = body or {}
        if kind == "latest":
            return cls("latest", int(body.get("num_versions", 1)))
        if kind == "all":
            return cls("all")
        if kind == "specific":
            versions = tuple(int(v) for v in body.get("versions", []))
            if not versions:
                raise BadInput("a specific version policy needs versions", '{"specific": {"versions": [1, 2]}}')
            return cls("specific", versions=versions)
        raise BadInput(f"unknown version policy {kind!r}", "use latest, all or specific")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict)
    variant: str | None = None


def read_model_config(path: str | Path, variant: str | None = None) -> list[ModelConfig]:
    """The model config file (JSON, TF Serving's model_config_list field names):

        {"model_config_list": [
           {"name": "digits", "base_path": "/srv/models/digits",
            "model_version_policy": {"latest": {"num_versions": 1}},
            "version_labels": {"stable": 1, "canary": 2},
            "variant": "int8"}]}

    Relative base paths are relative to the config file.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        entries = document["model_config_list"]
    except FileNotFoundError:
        raise BadInput(f"model config {path} does not exist", "pass --model-config FILE") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadInput(f"model config {path} is not valid: {exc}",
                       'write {"model_config_list": [{"name": ..., "base_path": ...}]}') from None
    configs = []
    for entry in entries:
        try:
            base = Path(entry["base_path"])
            labels = {check_name(k, "version label"): int(v) for k, v in entry.get("version_labels", {}).items()}
            configs.append(ModelConfig(
                name=check_name(entry["name"]), base_path=base if base.is_absolute() else path.parent / base,
                policy=VersionPolicy.from_json(entry.get("model_version_policy")), labels=labels,
                variant=entry.get("variant", variant),
            ))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"model config entry {entry!r} is not valid: {exc}", "each needs name and base_path") from None
    if len({c.name for c in configs}) != len(configs):
        raise BadInput("model config names a model twice", "give each model one entry")
    return configs


def model_file(version_dir: Path, variant: str | None) -> Path:
    """The .tflite a version folder serves: model.tflite, an edgekit OUT_DIR's variant,
    or its only .tflite."""
    if (version_dir / MANIFEST_NAME).is_file():
        manifest = Manifest.read(version_dir)
        if variant:
            artifact = manifest.artifact(variant)
            if artifact.file is None or artifact.status == "failed":
                raise BadInput(f"variant {variant!r} in {version_dir} is {artifact.status}: {artifact.error}",
                               "serve another variant (--variant)")
        else:
            artifact = manifest.preferred_artifact()
            if artifact is None:
                raise BadInput(f"{version_dir} has no artifact that passed its checks", "convert the model again")
        if artifact.format != "tflite":
            raise BadInput(f"{artifact.name} in {version_dir} is a {artifact.format} artifact; serve runs TFLite",
                           "name a TFLite variant with --variant (int8, float32, ...)")
        if artifact.requires_flex:
            raise BadInput(f"{artifact.name} in {version_dir} needs flex ops, which no Python LiteRT runtime has",
                           "convert without --allow-flex, or serve another variant")
        path = version_dir / artifact.file
        if not path.resolve().is_relative_to(version_dir.resolve()):
            raise BadInput(f"{artifact.name} in {version_dir} names a file outside its folder: {artifact.file}",
                           "convert the model again; do not edit the manifest")
        return path
    if (version_dir / "model.tflite").is_file():
        return version_dir / "model.tflite"
    found = sorted(version_dir.glob("*.tflite"))
    if len(found) == 1:
        return found[0]
    raise BadInput(f"{version_dir} has no model.tflite" + (f" and {len(found)} other .tflite files" if found else ""),
                   "put the model at <base>/<version>/model.tflite, or an edgekit convert OUT_DIR")


@dataclass(frozen=True)
class ServedSignature:
    """One signature as the server uses it, worked out once at load: its tensors as
    clients see them, the graph's tensor names, and the batching facts every request needs."""

    inputs: list[ServingTensor]
    outputs: list[ServingTensor]
    tensor_names: dict[str, str]  # signature key -> the graph tensor behind it (metadata)
    input_names: frozenset[str]
    output_names: tuple[str, ...]
    batched: frozenset[str]  # inputs whose first axis is the batch of examples (others go whole)
    free_batch: bool  # that axis is free (-1): any number of rows in one call
    fixed_rows: int  # otherwise, the rows the model takes per call
    splittable: bool  # every output has the batch first: a batch may run in parts, concatenated
    row_values: int  # values in one row of the batched inputs (unknown axes as 1)
    output_row_bytes: int  # bytes of one row of all outputs, as float32 or wider
    outputs_known: bool  # every output axis but the batch is known
    bytes_per_value: float  # interpreter memory per input value, measured at load (0: nothing scales)
    # Inputs the model ran at load (None: none of the warm-up inputs ran), and whether they have
    # unknown axes beyond the batch (then a warm-up call's time says nothing of a real one's)
    warm_feeds: dict[str, np.ndarray] | None = None
    open_axes: bool = False
    # With open axes, one row's memory grows as row_coeff * values ** growth: attention's L x L
    # scores grow with the square of its length, which a per-value figure would underestimate.
    growth: float = 1.0
    row_coeff: float = 0.0
    warm_error: str | None = None  # why the last warm-up input failed, when none ran

    def row_bytes(self, values: float) -> float:
        """Interpreter memory one row of `values` input values takes."""
        if self.growth > 1.0:
            return self.row_coeff * values**self.growth
        return self.bytes_per_value * values


def _served_signature(model: TFLiteModel, signature: str, fill: dict[str, float]) -> ServedSignature:
    ins = [_serving(i) for i in model.inputs(signature)]
    outs = [_serving(o) for o in model.outputs(signature)]
    runner = model._runner(signature)
    details = {**runner.get_input_details(), **runner.get_output_details()}
    free = [t for t in ins if t.shape and t.shape[0] == -1]
    ranked = [t for t in ins if t.shape]
    fixed_rows = 0 if free else ranked[0].shape[0] if ranked else 1
    batched = free or [t for t in ranked if t.shape[0] == fixed_rows]
    first = -1 if free else fixed_rows
    return ServedSignature(
        inputs=ins, outputs=outs, tensor_names={k: d["name"] for k, d in details.items()},
        input_names=frozenset(t.name for t in ins), output_names=tuple(t.name for t in outs),
        batched=frozenset(t.name for t in batched), free_batch=bool(free), fixed_rows=fixed_rows,
        splittable=bool(batched) and all(t.shape and t.shape[0] == first for t in outs),
        row_values=sum(_row_elements(t) for t in batched) or 1,
        output_row_bytes=sum(_row_elements(t) * max(t.dtype.itemsize, 4) for t in outs),
        outputs_known=all(d >= 0 for t in outs for d in t.shape[1:]),
        **_probe(model, signature, ins, fill))


# Lengths tried at load for unknown axes beyond the batch: an image model of any size may need
# pixels to run (five strided 3x3 convs: 63; InceptionV3: 75).
PROBE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Lengths at which a model of any size has its memory measured (one row): large enough that how it
# grows shows over the fixed costs.
GROWTH_SIZES = (64, 128, 256)
# Memory growing by more than this power of the input is taken as it grows (attention: 2); below it,
# as growing in step with the input.
SUPERLINEAR = 1.3


def _probe(model: TFLiteModel, signature: str, ins: list[ServingTensor], fill: dict[str, float]) -> dict:
    """Warm-up inputs the model runs, with zeros or, where zeros fail (an int8 DIV by an input cannot
    take its zero point), values in the middle of what calibration saw; and how its tensors grow
    with the input (activations grow, weights do not). Unknown batch: one row, then two. Unknown
    axes beyond it: warmed at the smallest size it runs, measured at GROWTH_SIZES (_held_growth),
    to see whether memory grows faster than the input (attention's L x L scores)."""
    open_axes = any(d < 0 for t in ins for d in t.shape[1:])
    unknown = any(d < 0 for t in ins for d in t.shape)
    found, first, error = [], None, None
    for size in PROBE_SIZES if open_axes else (1, 2) if unknown else (1,):
        feeds, error = _runnable(model, signature, ins, size, fill, open_axes, error)
        if feeds is None:
            continue
        first = first or (size, feeds)
        found.append((sum(v.size for v in feeds.values()), model.tensor_bytes()))
        if open_axes or len(found) == 2 or not unknown:
            break
    if open_axes and first:
        found = _held_growth(model, signature, ins, fill, first[0]) or found
    fit = {"bytes_per_value": 0.0}
    if unknown and len(found) < 2:  # runs at one size at most: all its tensors against that size's values
        fit["bytes_per_value"] = model.tensor_bytes() / max(1, found[0][0] if found else 1)
    elif unknown:
        fit = _growth(found)
    return {**fit, "warm_feeds": first and first[1], "open_axes": open_axes, "warm_error": None if first else error}


def _held_growth(model: TFLiteModel, signature: str, ins: list[ServingTensor], fill: dict[str, float],
                 smallest: int) -> list[tuple[int, int]]:
    """(input values, bytes the process's C heap holds) for one row at GROWTH_SIZES on every unknown
    axis beyond the batch. The heap, not the interpreter's tensors: XNNPACK keeps an attention's
    L x L scores in a workspace of its own, so the tensors grew in step with L while the process grew
    by 70 MB at L=4000 (helper-12). Where glibc cannot say, the tensors it is."""
    # From the smallest size it runs where GROWTH_SIZES fail (a text model whose positions stop at 50)
    for first in dict.fromkeys((max(smallest, GROWTH_SIZES[0]), smallest)):
        found = []
        start = allocated()
        for size in (first * 2**i for i in range(len(GROWTH_SIZES))):
            feeds, _ = _runnable(model, signature, ins, size, fill, True, None)
            if feeds is None:
                break
            held = model.tensor_bytes() if start is None else allocated() - start - sum(v.nbytes for v in feeds.values())
            found.append((sum(v.size for v in feeds.values()), held))
        if len(found) >= 2:
            return found
    return []


def _growth(found: list[tuple[int, int]]) -> dict:
    """Memory per value between the sizes probed, or, where it grows as a power of the input above
    SUPERLINEAR (from three sizes, each a fixed multiple of the last), that power and its factor."""
    slopes = [(b2 - b1) / (v2 - v1) for (v1, b1), (v2, b2) in zip(found, found[1:]) if v2 > v1]
    linear = {"bytes_per_value": max(0.0, *slopes) if slopes else 0.0}
    if len(found) < 3:
        return linear
    (v1, b1), (v2, b2), (v3, b3) = found
    if min(b2 - b1, b3 - b2) <= 0 or v2 <= v1 or not np.isclose(v3 / v2, v2 / v1):
        return linear
    power = float(np.log((b3 - b2) / (b2 - b1)) / np.log(v2 / v1))
    if power <= SUPERLINEAR:
        return linear
    power = min(power, 3.0)
    return {**linear, "growth": power, "row_coeff": (b3 - b2) / (v3**power - v2**power)}


def _runnable(model: TFLiteModel, signature: str, ins: list[ServingTensor], size: int, fill: dict[str, float],
              open_axes: bool, error: str | None) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Inputs at `size` (unknown axes beyond the batch that long, and then one row; else `size`
    rows) that the model runs, or None and why the last try failed."""
    for values in ({}, fill) if fill else ({},):
        feeds = {t.name: _filled(_sized(t, size, open_axes), values.get(t.name)) for t in ins}
        try:
            model.run(feeds, signature)
        except (RuntimeError, ValueError, EdgekitError) as exc:
            error = runtime_error_text(exc) if isinstance(exc, RuntimeError) else str(exc)
            continue
        return feeds, error
    return None, error


def _sized(tensor: ServingTensor, size: int, open_axes: bool) -> np.ndarray:
    if not open_axes:
        return zeros(tensor.shape, tensor.dtype, size)
    shape = [d if d >= 0 else 1 if i == 0 else size for i, d in enumerate(tensor.shape)]
    return np.zeros(shape, tensor.dtype)


def _filled(array: np.ndarray, value: float | None) -> np.ndarray:
    if value is None:
        return array
    if array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        value = min(max(round(value), info.min), info.max)
    return np.full_like(array, value)


@dataclass(frozen=True)
class SourceFacts:
    """What an OUT_DIR's manifest says of the model beyond the .tflite: per input, the middle of
    what calibration spanned (its 1st to 99th percentile: warm-up values inside the model's range),
    and the SavedModel's signatures (a client asking for one the artifact lacks is told how to get
    it). Empty for a bare .tflite."""

    middles: dict[str, float] = field(default_factory=dict)
    signatures: tuple[str, ...] = ()

    @classmethod
    def of(cls, version_dir: Path) -> SourceFacts:
        if not (version_dir / MANIFEST_NAME).is_file():
            return cls()
        try:
            manifest = Manifest.read(version_dir)
            ranges = (manifest.calibration or {}).get("ranges", {})
            return cls({name: (span["p1"] + span["p99"]) / 2 for name, span in ranges.items()},
                       tuple(manifest.signatures))
        except (EdgekitError, OSError, KeyError, TypeError, AttributeError):
            return cls()


def _row_elements(tensor: ServingTensor) -> int:
    return math.prod(max(d, 1) for d in tensor.shape[1:]) if tensor.shape else 1


class LoadedVersion:
    """One version in memory: a pool of interpreters (an interpreter is not thread-safe),
    and its signatures as clients see them.

    The model is read into memory once and every interpreter runs from that copy: a file
    overwritten in place (cp or scp over a served version) cannot pull pages from under a
    running interpreter (with a memory-mapped file that is a SIGBUS)."""

    def __init__(self, name: str, version: int, path: Path, threads: int, interpreters: int,
                 max_batch_rows: int | None = None, max_call_bytes: int = 1 << 62, source: SourceFacts | None = None):
        self.name, self.version, self.path = name, version, path
        content = path.read_bytes()
        self.models = [TFLiteModel(content, num_threads=threads) for _ in range(interpreters)]
        self._pool: queue.SimpleQueue[TFLiteModel] = queue.SimpleQueue()
        for model in self.models:
            self._pool.put(model)
        first = self.models[0]
        self.source = source or SourceFacts()
        self.signatures = {signature: _served_signature(first, signature, self.source.middles)
                           for signature in first.signature_names}
        self.max_batch_rows, self.max_call_bytes = max_batch_rows, max_call_bytes
        self.call_seconds = 0.0  # the slowest one-row call at warm-up

    def warm_up(self) -> None:
        """Run every interpreter once, so the first client does not pay for lazy setup; then
        time a one-row call: `quick` versions answer small requests on the event loop."""
        for model in self.models:
            for signature, served in self.signatures.items():
                if served.warm_feeds is None:
                    raise BadInput(f"signature {signature!r} ran on none of the warm-up inputs (zeros, the calibration "
                                   f"data's middle values, unknown axes 1 to {PROBE_SIZES[-1]} long): "
                                   f"{served.warm_error}",
                                   "check the model in `edgekit bench`, or serve another variant")
                model.run(served.warm_feeds, signature)
                started = time.perf_counter()
                model.run(served.warm_feeds, signature)
                # With unknown axes beyond the batch (an image of any size) a warm-up's few pixels say
                # nothing of a real call's time: such a model is never answered on the event loop.
                seconds = math.inf if served.open_axes else time.perf_counter() - started
                self.call_seconds = max(self.call_seconds, seconds)

    @property
    def quick(self) -> bool:
        return self.call_seconds <= QUICK_CALL_SECONDS

    @property
    def batch_rows(self) -> int | None:
        """Rows per interpreter call for the default signature's rows (the `loaded` log line)."""
        served = self.signatures.get(DEFAULT_SIGNATURE) or next(iter(self.signatures.values()))
        if not (served.free_batch and served.splittable):
            return None
        return self.max_batch_rows or self._rows_per_call(served, served.row_values)

    def _rows_per_call(self, served: ServedSignature, values_per_row: float) -> int:
        return max(1, int(BATCH_TENSOR_BYTES // max(1.0, served.row_bytes(values_per_row))))

    def specs(self, signature: str) -> ServedSignature:
        served = self.signatures.get(signature)
        if served is None:
            hint = "use one of: " + ", ".join(self.signatures)
            if signature in self.source.signatures:
                hint += (f"; the SavedModel has {signature!r}, but this artifact was converted from another: "
                         f"convert with --signature {signature} and serve that")
            raise NotFound(f"model {self.name} version {self.version} has no signature {signature[:100]!r}", hint)
        return served

    def rows(self, served: ServedSignature, inputs: dict[str, np.ndarray]) -> int:
        """The batch size of a request: the batched inputs have the same rows, at least one,
        and as many as the model takes when its batch axis is fixed (unless it can take them
        one call at a time)."""
        counts = {len(inputs[name]) for name in served.batched if inputs[name].ndim}
        if len(counts) > 1:
            raise BadInput(f"the inputs have different batch sizes {sorted(counts)}",
                           "give every input that has a batch axis the same rows: "
                           + ", ".join(sorted(served.batched)))
        rows = counts.pop() if counts else 1
        if rows < 1:
            raise BadInput("the batch is empty (0 rows)", "send at least one example")
        if not served.free_batch and rows != served.fixed_rows and not (served.fixed_rows == 1 and served.splittable):
            raise BadInput(f"this model takes batches of exactly {served.fixed_rows}",
                           f"send {served.fixed_rows} examples per request")
        return rows

    def plan(self, served: ServedSignature, inputs: dict[str, np.ndarray]) -> tuple[int, int]:
        """(rows, rows per interpreter call) for a request, or 413 when one call would need
        more interpreter memory than a version may take (--max-memory-mb / interpreters)."""
        rows = self.rows(served, inputs)
        batched_values = sum(inputs[name].size for name in served.batched)
        whole_values = sum(v.size for name, v in inputs.items() if name not in served.batched)
        if served.free_batch and served.splittable:
            step = self.max_batch_rows or self._rows_per_call(served, batched_values / rows)
        elif not served.free_batch and served.fixed_rows == 1 and served.splittable:
            step = 1
        else:
            step = rows
        step = min(step, rows)
        call_bytes = (step * served.row_bytes(batched_values / rows) + served.bytes_per_value * whole_values) \
            * ARENA_FACTOR
        if call_bytes > self.max_call_bytes:
            raise PayloadTooLarge(
                f"this request needs an estimated {call_bytes / 1048576:.0f} MB of interpreter memory for one "
                f"call of model {self.name}; each interpreter may take {self.max_call_bytes / 1048576:.0f} MB "
                "(--max-memory-mb / --interpreters)", "send fewer or smaller examples per request")
        return rows, step

    def run(self, signature: str, inputs: dict[str, np.ndarray], wait: bool = True) -> dict[str, np.ndarray]:
        """Run a batch in calls of at most the planned rows (one row at a time when the batch
        axis is fixed at 1), so the interpreter's tensors stay small whatever the request's
        size. Inputs without a batch axis go whole to every call. Without `wait`,
        WouldWait when no interpreter is free now."""
        served = self.specs(signature)
        rows, step = self.plan(served, inputs)
        try:
            model = self._pool.get(block=wait)
        except queue.Empty:
            raise WouldWait from None
        try:
            if rows <= step:
                return _invoke(model, inputs, signature, served.warm_feeds)
            parts = [_invoke(model, {k: v[i : i + step] if k in served.batched and v.ndim else v
                                     for k, v in inputs.items()}, signature, served.warm_feeds)
                     for i in range(0, rows, step)]
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        finally:
            self._pool.put(model)

    def metadata(self) -> dict[str, Any]:
        """TF Serving's signature_def map for this version."""
        signature_defs = {}
        for signature, served in self.signatures.items():
            names = served.tensor_names
            signature_defs[signature] = {
                "inputs": {t.name: _metadata_entry(t, names.get(t.name, t.name)) for t in served.inputs},
                "outputs": {t.name: _metadata_entry(t, names.get(t.name, t.name)) for t in served.outputs},
                "method_name": "tensorflow/serving/predict",
            }
        return {"signature_def": {"signature_def": signature_defs}}


def _invoke(model: TFLiteModel, inputs: dict[str, np.ndarray], signature: str,
            ran: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """One interpreter call; what the runtime refuses at run time is the input's fault
    (a token id beyond the vocabulary, a shape the graph cannot take): 400, with its words."""
    try:
        return model.run(inputs, signature)
    except (RuntimeError, ValueError) as exc:
        text = runtime_error_text(exc)
        if "failed to prepare" in text or "failed to reshape" in text:  # LiteRT could not size the layers
            shapes = ", ".join(f"{name} {list(np.shape(value))}" for name, value in inputs.items())
            known = ", ".join(f"{name} {list(value.shape)}" for name, value in (ran or {}).items())
            raise BadInput(f"the model cannot take inputs of this size ({shapes}): {text[:200]}",
                           "a strided or unpadded layer needs a few pixels, and a very large input can run out of "
                           "memory" + (f"; at load it ran on {known}" if known else "")) from None
        raise BadInput(f"the model cannot run on this input: {text[:300]}",
                       "check the values against what the model expects (ids within its vocabulary, sizes it "
                       "can take)") from None


def _serving(info) -> ServingTensor:
    dtype = np.dtype(np.float32) if info.quantized else info.dtype
    return ServingTensor(info.name, dtype, tuple(info.shape))


def _metadata_entry(tensor: ServingTensor, name: str) -> dict[str, Any]:
    return {"dtype": TF_DTYPES.get(tensor.dtype.name, "DT_INVALID"), "name": name,
            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in tensor.shape], "unknown_rank": False}}


@dataclass
class VersionStatus:
    state: str  # START | LOADING | AVAILABLE | UNLOADING | END (TF Serving's names)
    error_code: str = "OK"
    error_message: str = ""

    def to_json(self, version: int) -> dict[str, Any]:
        return {"version": str(version), "state": self.state,
                "status": {"error_code": self.error_code, "error_message": self.error_message}}


Event = Callable[..., None]


class ModelRepository:
    """Loads, serves and swaps model versions; polled on a background thread."""

    def __init__(self, configs: list[ModelConfig], *, threads: int = 1, interpreters: int = 1,
                 poll_seconds: float = 2.0, on_event: Event | None = None, max_batch_rows: int | None = None,
                 max_call_bytes: int = 1 << 62):
        self.configs = {c.name: c for c in configs}
        self.threads, self.interpreters, self.poll_seconds = threads, interpreters, poll_seconds
        self.max_batch_rows, self.max_call_bytes = max_batch_rows, max_call_bytes
        self._folders: dict[tuple[str, int], Path] = {}  # (model, version) -> its folder (007/ is version 7)
        self._served: dict[str, dict[int, LoadedVersion]] = {name: {} for name in self.configs}
        self._status: dict[str, dict[int, VersionStatus]] = {name: {} for name in self.configs}
        self._failed: dict[tuple[str, int], tuple] = {}  # (model, version) -> folder fingerprint
        self._on_event = on_event or (lambda kind, **fields: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edgekit-repository", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        announced = False
        while not self._stop.is_set():
            self.poll_once()
            if self.ready and not announced:
                announced = True
                self._on_event("ready", models=self.served_versions())
            self._stop.wait(self.poll_seconds)

    @property
    def ready(self) -> bool:
        return all(self._served[name] for name in self.configs)

    # --- polling -----------------------------------------------------------------------
    def poll_once(self) -> None:
        with self._poll_lock:
            for config in self.configs.values():
                try:
                    self._poll_model(config)
                except Exception as exc:  # one model's trouble must not stop the others
                    self._on_event("poll_error", model=config.name, error=f"{type(exc).__name__}: {exc}")

    def _poll_model(self, config: ModelConfig) -> None:
        folders = _versions_on_disk(config.base_path, self._on_event, config.name)
        self._folders.update({(config.name, version): folder for version, folder in folders.items()})
        on_disk = list(folders)
        served = self._served[config.name]
        if config.policy.kind == "latest":
            # Newest first until N versions are in: a version that fails to load is passed
            # over for the next older one, so a bad deploy (or a reboot after one) leaves
            # the last good version serving.
            keep: dict[int, LoadedVersion] = {}
            for version in sorted(on_disk, reverse=True):
                if len(keep) >= config.policy.num_versions:
                    break
                loaded = served.get(version) or self._load(config, version)
                if loaded is not None:
                    keep[version] = loaded
        else:
            keep = {}
            for version in config.policy.aspired(on_disk):
                loaded = served.get(version) or self._load(config, version)
                if loaded is not None:
                    keep[version] = loaded
        self._served[config.name] = keep  # the atomic swap: one reference assignment
        for version in set(served) - set(keep):
            self._status[config.name][version] = VersionStatus("END")
            self._on_event("unloaded", model=config.name, version=version)

    def _load(self, config: ModelConfig, version: int) -> LoadedVersion | None:
        """Load and warm up one version; None when it fails (reported in its status, and
        not retried until its files change)."""
        folder = self._folders.get((config.name, version), config.base_path / str(version))
        fingerprint = _fingerprint(folder)
        if self._failed.get((config.name, version)) == fingerprint:
            return None
        status = self._status[config.name]
        status[version] = VersionStatus("LOADING")
        started = time.perf_counter()
        native = None
        try:
            with captured_native_output() as native:  # LiteRT prints "INFO: Created ... delegate" raw
                loaded = LoadedVersion(config.name, version, model_file(folder, config.variant), self.threads,
                                       self.interpreters, self.max_batch_rows, self.max_call_bytes,
                                       SourceFacts.of(folder))
                loaded.warm_up()
        except Exception as exc:  # anything in a version's files fails that version, never the poller
            message = exc.message if isinstance(exc, EdgekitError) else f"{type(exc).__name__}: {exc}"
            status[version] = VersionStatus("END", "UNKNOWN", f"failed to load: {message}")
            self._failed[(config.name, version)] = fingerprint
            self._on_event("load_failed", model=config.name, version=version, error=message)
            return None
        finally:
            if native is not None and native.text.strip():
                self._on_event("runtime_output", model=config.name, version=version, text=native.text.strip())
        self._failed.pop((config.name, version), None)
        status[version] = VersionStatus("AVAILABLE")
        self._on_event("loaded", model=config.name, version=version, path=str(loaded.path),
                       seconds=round(time.perf_counter() - started, 3), batch_rows=loaded.batch_rows)
        return loaded

    # --- lookups -----------------------------------------------------------------------
    def _config(self, name: str) -> ModelConfig:
        if name not in self.configs:
            raise NotFound(f"Servable not found for request: Latest({name})", "known models: " + ", ".join(self.configs))
        return self.configs[name]

    def _version_for_label(self, config: ModelConfig, label: str) -> int:
        if label not in config.labels:
            raise NotFound(f"Unrecognized servable version label: {label}",
                           "known labels: " + (", ".join(config.labels) or "none"))
        return config.labels[label]

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        config = self._config(name)
        served = self._served[name]  # one read: a consistent snapshot
        if label is not None:
            version = self._version_for_label(config, label)
        if version is None:
            if not served:
                statuses = self._status[name]
                failed = [v for v in sorted(statuses, reverse=True) if statuses[v].error_code != "OK"]
                if failed and not any(s.state in ("START", "LOADING") for s in statuses.values()):
                    raise Unavailable(f"Servable not found for request: Latest({name}); no version is loaded: "
                                      f"version {failed[0]} {statuses[failed[0]].error_message[:300]}",
                                      "fix or replace that version's files: the server retries when they change")
                raise Unavailable(f"Servable not found for request: Latest({name}); no version is loaded yet",
                                  "wait for the model to load, or check the server's log")
            return served[max(served)]
        if version in served:
            return served[version]
        if self._status[name].get(version, VersionStatus("END")).state == "LOADING":
            raise Unavailable(f"model {name} version {version} is still loading", "retry in a moment")
        raise NotFound(f"Servable not found for request: Specific({name}, {version})",
                       "served versions: " + (", ".join(map(str, sorted(served))) or "none"))

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[dict[str, Any]]:
        config = self._config(name)
        if label is not None:
            version = self._version_for_label(config, label)
        statuses = self._status[name]
        if version is not None:
            if version not in statuses:
                raise NotFound(f"Could not find version {version} of model {name}", "GET /v1/models/" + name)
            return [statuses[version].to_json(version)]
        return [statuses[v].to_json(v) for v in sorted(statuses, reverse=True)]

    def served_versions(self) -> dict[str, list[int]]:
        return {name: sorted(versions) for name, versions in self._served.items()}


def _versions_on_disk(base: Path, on_event: Event, model: str) -> dict[int, Path]:
    """Version folders by number: names of digits that fit TF Serving's int64 versions.
    Where two folders name one version (7/ and 007/), the one without leading zeros wins."""
    try:
        if not base.is_dir():
            return {}
        folders: dict[int, Path] = {}
        for path in sorted(base.iterdir(), key=lambda p: len(p.name), reverse=True):
            if path.name.isdigit() and len(path.name) <= 18 and path.is_dir():
                folders[int(path.name)] = path
        return folders
    except OSError as exc:
        on_event("poll_error", model=model, error=f"cannot list {base}: {exc.strerror}")
        return {}


def _fingerprint(folder: Path) -> tuple:
    """Changes when any file in the folder changes: a failed version is retried then."""
    try:
        return tuple(sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size)
                            for p in folder.rglob("*") if p.is_file()))
    except OSError:
        return ()

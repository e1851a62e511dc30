"""The manifest: the contract between convert and every later job (bench, package, serve).

`OUT_DIR/manifest.json` records what convert produced and how it checked each artifact,
so no later step has to reopen the SavedModel. Pure data + JSON: safe on a device
(no TensorFlow). The JSON is written with sorted keys and one timestamp (`created_at`),
so two runs on the same input differ only there; app builds cache on the hashes.

Schema (version 1), as written:

    {"schema_version": 1, "created_at": "2026-11-25T12:00:00Z",
     "versions": {"edgekit": "0.1.0", "tensorflow": "2.21.0", ...},
     "source": {"path": "/abs/saved_model", "saved_model_pb_sha256": "...",
                "variables_sha256": "..."},
     "signature": "serving_default",
     "signatures": {"serving_default": {"inputs": [TensorSpec], "outputs": [TensorSpec]}},
     "calibration": {"source": "calib.npz", "format": "npz", "samples": 200,
                     "sha256": "..."} | null,
     "check_inputs": {"source": "calibration" | "synthetic", "samples": 32},
     "artifacts": [Artifact, ...]}

TensorSpec: {"name", "dtype" (numpy name), "shape" (list, null = any size)}; an artifact's
tensors add "quantization": {"scale", "zero_point"} (lists when per-channel) or null, and
a TF.js artifact's add "node", the graph node behind the signature key in "name".
Artifact: see the dataclass below; "verified" is true only when the artifact ran in its
runtime (LiteRT, onnxruntime, TF.js in Node) and passed its check.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgekit.errors import BadInput

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# The artifact a device gets when nobody names one: the smallest that keeps accuracy
# on most models first. serve and package both choose by it.
PREFERRED_VARIANTS = ("int8", "dynamic", "float16", "float32", "int16x8")
# The same for a web build: TF.js computes in float32 whatever the weights, so the
# smallest download that passed its check comes first.
PREFERRED_TFJS_VARIANTS = ("uint8", "float16", "float32")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | None]
    # Only on an artifact's tensors: how to map real values to the stored integers,
    # real = scale * (q - zero_point). None for float tensors.
    quantization: dict[str, Any] | None = None
    # TF.js artifacts only: the graph node behind the signature key `name` (which is what
    # `model.execute({name: x}, [output name])` takes).
    node: str | None = None


@dataclass(frozen=True)
class SignatureSpec:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def input(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the inputs are built for, when their first axis fixes one."""
        fixed = {spec.shape[0] for spec in self.inputs if spec.shape and spec.shape[0] is not None}
        return fixed.pop() if len(fixed) == 1 else None


@dataclass(frozen=True)
class OutputCheck:
    """How one output of an artifact compares with the SavedModel on the check inputs."""

    max_abs_error: float | None  # None: the artifact's output holds NaN or Inf
    rel_l2_error: float | None  # norm(artifact - reference) / norm(reference); None as above
    top1_agreement: float | None  # only for classifier-shaped outputs [batch, classes]
    rms_over_std: float | None = None  # rms error / the reference's spread over rows (metrics.spread_errors)
    # Only for outputs whose rows are probabilities: rows where the reference's top class leads the
    # runner-up by at least Check.confident_margin, and the top-1 agreement over those rows.
    confident_rows: int | None = None
    confident_top1_agreement: float | None = None
    # rms error in float32 steps (ulps) at the reference's values: a few is float32's own rounding
    float32_ulps: float | None = None
    # Integer and bool outputs (a class index, a thresholded flag): the share of values equal to the
    # SavedModel's. Their differences are decisions flipped at a boundary, not noise to measure in L2.
    exact_match: float | None = None


def top1_over_outputs(outputs: dict[str, dict], named: str | None = None) -> float | None:
    """The one top-1 agreement to show for an artifact's outputs (OutputCheck fields as dicts):
    the named output's (the one labels score, or --output) if it has one; else the worst over
    the probability outputs when there are any (an embedding's argmax means nothing); else the
    worst over every classifier-shaped output."""
    chosen = outputs.get(named or "")
    if chosen and chosen.get("top1_agreement") is not None:
        return chosen["top1_agreement"]
    decisions = [o for o in outputs.values() if o.get("confident_rows") is not None] or list(outputs.values())
    values = [o["top1_agreement"] for o in decisions if o.get("top1_agreement") is not None]
    return min(values) if values else None


@dataclass(frozen=True)
class Check:
    status: str  # "passed" | "failed" | "skipped"
    samples: int
    tolerance_rel_l2: float
    outputs: dict[str, OutputCheck] = field(default_factory=dict)
    reason: str | None = None  # why failed or skipped; for TF.js, also a backend it fell back to
    tolerance_spread: float | None = None  # the rms_over_std accepted on outputs that are not probabilities
    confident_margin: float | None = None  # no decision this confident may flip

    @property
    def worst_rel_l2(self) -> float | None:
        """The largest relative L2 error over the real-valued outputs; inf when one is not finite."""
        values = [float("inf") if o.rel_l2_error is None else o.rel_l2_error for o in self.outputs.values()
                  if o.exact_match is None]
        return max(values, default=None)

    @property
    def worst_max_abs(self) -> float | None:
        values = [float("inf") if o.max_abs_error is None else o.max_abs_error for o in self.outputs.values()
                  if o.exact_match is None]
        return max(values, default=None)

    @property
    def top1_agreement(self) -> float | None:
        return top1_over_outputs({name: dataclasses.asdict(o) for name, o in self.outputs.items()})


@dataclass(frozen=True)
class Artifact:
    name: str  # unique in the manifest, e.g. "tflite_int8"
    format: str  # "tflite" | "onnx" | "tfjs"
    # tflite: "float32" | "dynamic" | "float16" | "int8" | "int16x8"; onnx: "float32";
    # tfjs: "float32" | "float16" | "uint8" (how its weights are stored)
    variant: str
    # "ok" | "failed" | "skipped" (needs calibration data, none given) |
    # "unverified" (built, but no runtime here can run it: flex ops, or no Node.js for TF.js)
    status: str
    signature: str
    file: str | None = None  # relative to OUT_DIR; for tfjs its model.json
    bytes: int | None = None  # for tfjs: all its files together
    sha256: str | None = None  # for tfjs: files.sha256_tree of its folder
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    quantization: dict[str, Any] = field(default_factory=dict)
    requires_flex: bool = False
    check: Check | None = None
    error: str | None = None
    opset: int | None = None  # ONNX artifacts only
    # tfjs only: every file of the folder, [{"path" (relative to OUT_DIR), "bytes", "sha256"}]
    files: list[dict[str, Any]] | None = None
    # Derived, for readers of the JSON: the artifact ran in a real runtime and passed its check.
    verified: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "verified", self.check is not None and self.check.status == "passed")

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    created_at: str
    versions: dict[str, str]
    source: dict[str, str]
    signature: str
    signatures: dict[str, SignatureSpec]
    calibration: dict[str, Any] | None
    check_inputs: dict[str, Any]
    artifacts: list[Artifact]

    def artifact(self, name: str) -> Artifact:
        """By name ("tflite_int8", "onnx"), or by TFLite variant ("int8")."""
        for artifact in self.artifacts:
            if name == artifact.name:
                return artifact
        for artifact in self.artifacts:
            if artifact.format == "tflite" and name == artifact.variant:
                return artifact
        known = ", ".join(a.name for a in self.artifacts)
        raise BadInput(f"no artifact named {name!r} in the manifest", f"pick one of: {known}")

    def preferred_artifact(self, format: str = "tflite") -> Artifact | None:
        """The first artifact of PREFERRED_VARIANTS (or PREFERRED_TFJS_VARIANTS for
        format "tfjs") that was written and passed its check."""
        usable = {a.variant: a for a in self.artifacts if a.format == format and a.file and a.status == "ok"}
        order = PREFERRED_TFJS_VARIANTS if format == "tfjs" else PREFERRED_VARIANTS
        return next((usable[v] for v in order if v in usable), None)

    @property
    def all_ok(self) -> bool:
        """No artifact failed: skipped (no calibration data) and unverified (flex) are not failures."""
        return all(artifact.status in ("ok", "unverified", "skipped") for artifact in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / MANIFEST_NAME
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if not isinstance(data, dict):
            raise BadInput(f"the manifest is a JSON {type(data).__name__}, not an object",
                           "the file was not written by `edgekit convert`, or was edited; convert again")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BadInput(
                f"manifest schema_version is {version!r}; this edgekit reads version {SCHEMA_VERSION}",
                "re-run `edgekit convert` with this edgekit version",
            )
        try:
            return cls(
                schema_version=version,
                created_at=data["created_at"],
                versions=data["versions"],
                source=data["source"],
                signature=data["signature"],
                signatures={k: _signature(v) for k, v in data["signatures"].items()},
                calibration=data.get("calibration"),
                check_inputs=data["check_inputs"],
                artifacts=[_artifact(a) for a in data["artifacts"]],
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise BadInput(
                f"manifest is missing or has a malformed field: {type(exc).__name__}: {str(exc)[:200]}",
                "the file was not written by `edgekit convert`, or was edited; convert again",
            ) from exc

    @classmethod
    def read(cls, out_dir: str | Path) -> Manifest:
        path = Path(out_dir)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            versions = sorted((p for p in path.parent.glob(f"*/{MANIFEST_NAME}") if p.parent.name.isdigit()),
                              key=lambda p: int(p.parent.name))
            hint = (f"{path.parent} is a model repository: pass a version, e.g. {versions[-1].parent}" if versions
                    else "pass the OUT_DIR that `edgekit convert` wrote")
            raise BadInput(f"no {MANIFEST_NAME} at {path}", hint)
        try:
            data = json.loads(path.read_text())
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise BadInput(f"{path} is not valid JSON: {str(exc)[:200]}", "convert again") from None
        return cls.from_dict(data)


def known_fields(cls, data: dict[str, Any]) -> dict[str, Any]:
    """The fields `cls` has. Within one schema version fields are only ever added, and a reader
    ignores those it does not know: a Pi running an older edgekit still serves what a newer
    convert wrote. A missing required field still fails (TypeError)."""
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def _tensor(data: dict[str, Any]) -> TensorSpec:
    return TensorSpec(**known_fields(TensorSpec, data))


def _signature(data: dict[str, Any]) -> SignatureSpec:
    return SignatureSpec(
        inputs=[_tensor(t) for t in data["inputs"]], outputs=[_tensor(t) for t in data["outputs"]]
    )


def _artifact(data: dict[str, Any]) -> Artifact:
    data = known_fields(Artifact, data)
    data["inputs"] = [_tensor(t) for t in data.get("inputs", [])]
    data["outputs"] = [_tensor(t) for t in data.get("outputs", [])]
    check = data.get("check")
    if check is not None:
        check = known_fields(Check, check)
        check["outputs"] = {k: OutputCheck(**known_fields(OutputCheck, v)) for k, v in check.get("outputs", {}).items()}
        data["check"] = Check(**check)
    return Artifact(**data)
